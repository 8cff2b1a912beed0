"""Analytic antialiasing at mesh outlines: gradients of a rasterized image w.r.t. vertex positions.

A rasterized image is piecewise constant in the vertex positions (moving an outline changes which
pixel centres are covered in jumps), so a hard mask has no gradient w.r.t. them. The method of
Laine et al. 2020 ("Modular Primitives for High-Performance Differentiable Rendering") blends
colours across outlines instead: for every pair of horizontally or vertically adjacent pixels whose
visible faces differ, the nearer face's outline edge is intersected with the segment between the
two pixel centres, and the pixel on the far side of the crossing point takes a share of the other
pixel's colour equal to how far the face reaches past the midpoint. The share is linear in the
crossing point, so both the colours and the vertex positions get gradients; pixels away from
outlines are unchanged. A straight axis-aligned outline gets exactly its covered area.

An edge is an outline where it bounds the mesh or joins a front-facing and a back-facing face (on
screen); edges inside a continuous surface are not blended.
"""

from __future__ import annotations

import torch

from renderloop.checks import check_shape

from .cameras import clip_to_pixel
from .ops import Fragments, _screen_area

__all__ = ["antialias", "edge_neighbours"]


def edge_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """``[B, F, 3]`` int64: for edge ``k`` of each face (the edge opposite corner ``k``), the index of
    the other face that has it, or ``-1`` on a mesh boundary and for padding rows. On an edge with
    more than two faces, one of the others."""
    B, F, _ = faces.shape
    a, b = faces.roll(-1, dims=-1), faces.roll(-2, dims=-1)  # edge k joins corners k + 1 and k + 2
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    num_verts = int(faces.max().clamp(min=0)) + 1
    item = torch.arange(B, device=faces.device).view(B, 1, 1)
    key = (item * num_verts + lo) * num_verts + hi
    slot = torch.arange(B * F * 3, device=faces.device)
    real = (faces >= 0).all(-1, keepdim=True).expand(B, F, 3).reshape(-1)
    key = torch.where(real, key.reshape(-1), -1 - slot)  # padding keys are unique: they never pair
    ordered, order = key.sort()
    pair = (ordered[1:] == ordered[:-1]).nonzero().squeeze(1)
    first, second = order[pair], order[pair + 1]
    out = torch.full((B * F * 3,), -1, dtype=torch.int64, device=faces.device)
    out[first] = (second // 3) % F
    out[second] = (first // 3) % F
    return out.view(B, F, 3)


def _pixel_centre(index: torch.Tensor, H: int, W: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([index % W, (index // W) % H], dim=-1).to(dtype) + 0.5


def _edge_values(xy: torch.Tensor, inward: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``[P, 3]``: each edge's function at ``point [P, 2]`` (edge ``k`` opposite corner ``k``), > 0 inside."""
    a, b = xy.roll(-1, dims=1), xy.roll(-2, dims=1)
    d = point.unsqueeze(1) - a
    return ((b[..., 0] - a[..., 0]) * d[..., 1] - (b[..., 1] - a[..., 1]) * d[..., 0]) * inward.unsqueeze(1)


def _blends(
    color: torch.Tensor,
    face_id: torch.Tensor,
    depth: torch.Tensor,
    clip_pos: torch.Tensor,
    faces: torch.Tensor,
    neighbours: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    resolution: tuple[int, int],
    max_hops: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For adjacent pixel pairs ``(p, q)`` (flat indices): the pixels that change and by how much."""
    H, W = resolution
    differ = face_id[p] != face_id[q]
    p, q = p[differ], q[differ]
    fp, fq = face_id[p], face_id[q]
    p_owns = (fq < 0) | ((fp >= 0) & (depth[p] <= depth[q]))  # the nearer face's outline is the one seen
    own, other = torch.where(p_owns, p, q), torch.where(p_owns, q, p)
    item, face = own // (H * W), face_id[own]
    own_centre, other_centre = _pixel_centre(own, H, W, clip_pos.dtype), _pixel_centre(other, H, W, clip_pos.dtype)
    t = torch.full_like(own_centre[:, 0], torch.inf)
    walking = torch.ones_like(face, dtype=torch.bool)
    for _ in range(max_hops):  # from face to face across inner edges, until an outline or the segment's end
        xy = clip_to_pixel(clip_pos[item.unsqueeze(1), faces[item, face]], resolution)  # [P, 3, 2]
        inward = torch.sign(_screen_area(xy))
        at_own, at_other = _edge_values(xy, inward, own_centre), _edge_values(xy, inward, other_centre)
        leaving = at_other < at_own  # convex: the segment leaves where the first of these reaches 0
        crossing = torch.where(leaving, at_own / torch.where(leaving, at_own - at_other, 1.0), torch.inf)
        exit_t, edge = crossing.min(dim=1)
        beyond = neighbours[item, face, edge]
        with torch.no_grad():
            beyond_xy = clip_to_pixel(clip_pos[item.unsqueeze(1), faces[item, beyond.clamp(min=0)]], resolution)
            outline = (beyond < 0) | (torch.sign(_screen_area(beyond_xy)) != inward)
        ends_here = walking & (exit_t < 1)
        t = torch.where(ends_here & outline, exit_t, t)
        walking = ends_here & ~outline
        if not bool(walking.any()):
            break
        face = torch.where(walking, beyond, face)
    keep = torch.isfinite(t)
    t, own, other = t[keep], own[keep], other[keep]
    own_color, other_color = color[own], color[other]
    past_middle = (t > 0.5).unsqueeze(1)
    # The face reaches t along the segment; the pixel beyond the crossing shows the far side's colour
    # over what is left of it: the other pixel takes (t - 1/2) of the owner's, or the owner (1/2 - t) of the other's.
    share = torch.where(past_middle, t.unsqueeze(1) - 0.5, 0.5 - t.unsqueeze(1))
    change = share * torch.where(past_middle, own_color - other_color, other_color - own_color)
    return torch.where(past_middle.squeeze(1), other, own), change


def antialias(
    color: torch.Tensor,
    fragments: Fragments,
    clip_pos: torch.Tensor,
    neighbours: torch.Tensor | None = None,
    max_hops: int = 16,
) -> torch.Tensor:
    """``color [B, H, W, C]`` (rendered through ``fragments``) blended across mesh outlines;
    differentiable w.r.t. ``color`` and ``clip_pos [B, V, 4]`` (the positions ``fragments`` were
    rasterized from). ``neighbours``: :func:`edge_neighbours` of ``fragments.faces``, to reuse for a
    fixed mesh. The segment between two pixel centres may cross inner edges before it meets the
    outline (small faces): it is followed across at most ``max_hops`` faces."""
    B, H, W = fragments.face_id.shape
    check_shape("antialias", "color", color, (B, H, W, "C"))
    check_shape("antialias", "clip_pos", clip_pos, (B, fragments.num_verts, 4))
    faces = fragments.faces
    neighbours = edge_neighbours(faces) if neighbours is None else neighbours
    check_shape("antialias", "neighbours", neighbours, tuple(faces.shape))
    flat = color.reshape(B * H * W, -1)
    face_id, depth = fragments.face_id.reshape(-1), fragments.depth.detach().reshape(-1)
    index = torch.arange(B * H * W, device=color.device).view(B, H, W)
    pixels, changes = [], []
    for first, second in ((index[:, :, :-1], index[:, :, 1:]), (index[:, :-1], index[:, 1:])):
        pixel, change = _blends(
            flat, face_id, depth, clip_pos, faces, neighbours, first.reshape(-1), second.reshape(-1), (H, W), max_hops
        )
        pixels.append(pixel)
        changes.append(change)
    return flat.index_add(0, torch.cat(pixels), torch.cat(changes).to(flat.dtype)).view(B, H, W, -1)
