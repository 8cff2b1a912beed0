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

An edge is an outline where it bounds the mesh or where the face beyond it folds back over the face
on screen (one faces the camera, the other away); edges inside a continuous surface are not
blended. As in the paper, each edge is blended by one pair direction only: horizontal pairs take
edges steeper than 45°, vertical pairs the rest, so a slanted outline is not counted twice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from renderloop.checks import check_shape

from . import _antialias_triton
from .cameras import clip_to_pixel
from .ops import Fragments, _screen_area, drawable_faces

__all__ = ["antialias", "edge_neighbours"]


def edge_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """``[B, F, 3]`` int64: for edge ``k`` of each face (the edge opposite corner ``k``), the index of
    the other face that has it, or ``-1`` on a mesh boundary, for padding rows and for faces with a
    repeated corner. A face listed twice takes the first copy's neighbours; on an edge with more
    than two distinct faces, one of the others."""
    B, F, _ = faces.shape
    flat = faces.reshape(B * F, 3)
    item = torch.arange(B * F, device=faces.device) // F
    corners = flat.sort(dim=1).values
    proper = (corners[:, 0] >= 0) & (corners[:, 0] != corners[:, 1]) & (corners[:, 1] != corners[:, 2])
    _, copy_of = torch.unique(torch.cat([item.unsqueeze(1), corners], dim=1), dim=0, return_inverse=True)
    first_copy = torch.full((B * F,), B * F, device=faces.device).scatter_reduce(
        0, copy_of, torch.arange(B * F, device=faces.device), reduce="amin"
    )[copy_of]
    pairs = proper & (first_copy == torch.arange(B * F, device=faces.device))  # only first copies pair
    a, b = flat.roll(-1, dims=-1), flat.roll(-2, dims=-1)  # edge k joins corners k + 1 and k + 2
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    num_verts = int(faces.max().clamp(min=0)) + 1
    edge_key = (item.unsqueeze(1) * num_verts + lo) * num_verts + hi  # [B * F, 3]
    slot = torch.arange(B * F * 3, device=faces.device)
    key = torch.where(pairs.repeat_interleave(3), edge_key.reshape(-1), -1 - slot)  # unique: never pair
    ordered, order = key.sort(stable=True)
    pair = (ordered[1:] == ordered[:-1]).nonzero().squeeze(1)
    first, second = order[pair], order[pair + 1]
    out = torch.full((B * F * 3,), -1, dtype=torch.int64, device=faces.device)
    out[first] = (second // 3) % F
    out[second] = (first // 3) % F
    # A later copy may list its corners in another order: its edge k is the first copy's edge with the same key.
    same_edge = edge_key.unsqueeze(2) == edge_key[first_copy].unsqueeze(1)  # [B * F, 3, 3]
    out = out.view(B * F, 3)[first_copy].gather(1, same_edge.int().argmax(dim=2))
    return torch.where(proper.unsqueeze(1), out, -1).view(B, F, 3)


def _pixel_centre(index: torch.Tensor, H: int, W: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([index % W, (index // W) % H], dim=-1).to(dtype) + 0.5


def _edge_values(xy: torch.Tensor, inward: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``[P, 3]``: each edge's function at ``point [P, 2]`` (edge ``k`` opposite corner ``k``), > 0 inside."""
    a, b = xy.roll(-1, dims=1), xy.roll(-2, dims=1)
    d = point.unsqueeze(1) - a
    return ((b[..., 0] - a[..., 0]) * d[..., 1] - (b[..., 1] - a[..., 1]) * d[..., 0]) * inward.unsqueeze(1)


@dataclass(frozen=True)
class _Scene:
    """What every walk reads: flat face ids ``[B * H * W]``, clip positions, faces, their neighbours
    and which faces the rasterizer draws (``[B, F]``)."""

    face_id: torch.Tensor
    clip_pos: torch.Tensor
    faces: torch.Tensor
    neighbours: torch.Tensor
    drawn: torch.Tensor
    resolution: tuple[int, int]

    def corners(self, item: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertex indices ``[P, 3]`` of the faces and their pixel positions ``[P, 3, 2]``."""
        corners = self.faces[item, face]
        return corners, clip_to_pixel(self.clip_pos[item.unsqueeze(1), corners], self.resolution)


@dataclass(frozen=True)
class _Walked:
    """Where each walk of :func:`_walk` ended (``[P]`` each, but ``found``/``t``/``face``: the walks
    that left through an outline of the pair direction's kind, by index). A walk neither ``met``
    an outline nor ended inside a face (``end_face`` -1) ran out of hops."""

    found: torch.Tensor
    t: torch.Tensor
    face: torch.Tensor
    met: torch.Tensor
    end_face: torch.Tensor

    @property
    def cut(self) -> torch.Tensor:
        return ~self.met & (self.end_face < 0)


def _crossings(
    scene: _Scene, item: torch.Tensor, face: torch.Tensor, own_centre: torch.Tensor, other_centre: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each segment ``[A]`` from ``own_centre`` to ``other_centre`` inside ``face``, where along
    it the segment crosses each edge's line (``[A, 3]``, ``inf`` where it does not leave the face
    through that edge; differentiable), and each face's corners ``[A, 3]`` and their pixel
    positions ``[A, 3, 2]``."""
    corners, xy = scene.corners(item, face)  # [A, 3], [A, 3, 2]
    inward = torch.sign(_screen_area(xy.detach()))
    at_own = _edge_values(xy, inward, own_centre)
    at_other = _edge_values(xy, inward, other_centre)
    leaving = at_other < at_own  # convex: the segment leaves where the first of these reaches 0
    return torch.where(leaving, at_own / torch.where(leaving, at_own - at_other, 1.0), torch.inf), corners, xy


def _hop(
    scene: _Scene,
    item: torch.Tensor,
    face: torch.Tensor,
    own_centre: torch.Tensor,
    other_centre: torch.Tensor,
    face_at_other: torch.Tensor,
    horizontal: bool,
) -> tuple[torch.Tensor, ...]:
    """One step of :func:`_walk` for walks ``[A]`` inside ``face`` (no gradients): the edge the
    segment leaves the face through, the face beyond it, whether that edge is an outline the segment
    ``met``, whether it is ``blended`` (an outline of this pair direction's kind), and whether the
    segment ``reaches`` the edge at all (else it ends inside the face)."""
    crossing, corners, xy = _crossings(scene, item, face, own_centre, other_centre)
    exit_t, edge = crossing.min(dim=1)
    beyond = scene.neighbours[item, face, edge]
    ends = corners.gather(1, torch.stack([(edge + 1) % 3, (edge + 2) % 3], dim=1))
    wing, wing_xy = scene.corners(item, beyond.clamp(min=0))
    apex = ((wing != ends[:, :1]) & (wing != ends[:, 1:])).long().argmax(1, keepdim=True)
    apex_xy = wing_xy.gather(1, apex.unsqueeze(2).expand(-1, 1, 2)).squeeze(1)
    # An outline: no drawn face beyond, or the one beyond folds back over this face on screen (its
    # far corner on this side of the edge), whichever way the faces are wound.
    inward = torch.sign(_screen_area(xy))
    folds = _edge_values(xy, inward, apex_xy).gather(1, edge.unsqueeze(1)).squeeze(1) >= 0
    outline = (beyond < 0) | ~scene.drawn[item, beyond.clamp(min=0)] | folds
    # Each edge is blended by one pair direction: horizontal pairs take the steeper edges.
    span = (xy.roll(-2, dims=1) - xy.roll(-1, dims=1)).abs()
    span = span.gather(1, edge.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
    this_kind = span[:, 1] >= span[:, 0] if horizontal else span[:, 0] > span[:, 1]
    # A crossing exactly at the other centre counts, unless this face is the one seen there.
    reaches = (exit_t < 1) | ((exit_t == 1) & (face_at_other != face))
    met = reaches & outline
    return edge, beyond, met, met & this_kind, reaches


def _walk(scene: _Scene, own: torch.Tensor, other: torch.Tensor, horizontal: bool, max_hops: int) -> _Walked:
    """Follow the segment from pixel ``own``'s centre to ``other``'s (flat indices ``[P]``) through
    ``own``'s face and across inner edges, until it leaves through an outline (``met``; blended if
    the edge is of this pair direction's kind, at ``t`` in ``[0, 1]`` along the segment,
    differentiable), ends inside a face (``end_face``), or runs out of hops."""
    H, W = scene.resolution
    item = own // (H * W)
    own_centre = _pixel_centre(own, H, W, scene.clip_pos.dtype)
    other_centre = _pixel_centre(other, H, W, scene.clip_pos.dtype)
    with torch.no_grad():
        if _antialias_triton.supports(own.device):
            met, face, edge, end_face = _antialias_triton.follow(
                scene.clip_pos, scene.faces, scene.neighbours, scene.drawn, scene.face_id, own, other, (H, W),
                horizontal, max_hops,
            )  # fmt: skip
        else:
            met, face, edge, end_face = _follow(scene, item, own_centre, other_centre, scene.face_id[own],
                                                scene.face_id[other], horizontal, max_hops)  # fmt: skip
    found = (face >= 0).nonzero().squeeze(1)
    # Only where a walk ends does its position matter: the crossing is taken again there, with gradients.
    crossing, _, _ = _crossings(scene, item[found], face[found], own_centre[found], other_centre[found])
    t = crossing.gather(1, edge[found].unsqueeze(1)).squeeze(1)
    return _Walked(found, t.clamp(0.0, 1.0), face[found], met, end_face)


def _follow(
    scene: _Scene,
    item: torch.Tensor,
    own_centre: torch.Tensor,
    other_centre: torch.Tensor,
    start: torch.Tensor,
    face_at_other: torch.Tensor,
    horizontal: bool,
    max_hops: int,
) -> tuple[torch.Tensor, ...]:
    """:func:`_walk`'s hops, without gradients: per walk ``[P]``, whether it met an outline, the
    face and edge it was blended at (-1 where it was not), and the face it ended inside (-1 where
    it did not). Each hop's outcomes are scattered once at the end, so the only host sync per hop is
    dropping the walks that ended (a walk ends once, so the records never overlap)."""
    face = start.clone()
    none = start.new_zeros(0)
    walked, outcomes = [none], [(none, none, none, none)]
    active = torch.arange(len(start), device=start.device)
    for _ in range(max_hops):
        if not len(active):
            break
        f = face[active]
        edge, beyond, met, blended, reaches = _hop(
            scene, item[active], f, own_centre[active], other_centre[active], face_at_other[active], horizontal
        )
        walked.append(active)
        outcomes.append((met.long(), torch.where(blended, f + 1, 0), torch.where(blended, edge + 1, 0),
                         torch.where(reaches, 0, f + 1)))  # fmt: skip
        walking = reaches & ~met
        face[active] = torch.where(walking, beyond, f)
        active = active[walking]
    index = torch.cat(walked)
    scattered = (
        torch.cat(column).new_zeros(len(start)).index_put((index,), torch.cat(column), accumulate=True)
        for column in zip(*outcomes, strict=True)
    )
    met, blended_face, blended_edge, end_face = scattered
    return met > 0, blended_face - 1, blended_edge - 1, end_face - 1


def _inverse_depth(scene: _Scene, item: torch.Tensor, face: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``1 / w`` of each face's plane at screen ``point [P, 2]`` (affine on screen): larger is nearer."""
    corners, xy = scene.corners(item, face)
    edge = _edge_values(xy, torch.ones_like(xy[:, 0, 0]), point)
    total = edge.sum(dim=1)
    inverse_w = 1.0 / scene.clip_pos[item.unsqueeze(1), corners][..., 3]
    return (edge * inverse_w).sum(dim=1) / torch.where(total == 0, 1.0, total)


def _changes(color: torch.Tensor, own: torch.Tensor, other: torch.Tensor, t: torch.Tensor):
    """The owner's face reaches ``t`` along the segment: the pixel past the crossing shows the far
    side's colour over the rest of it, so the other pixel takes ``t - 1/2`` of the owner's colour,
    or the owner ``1/2 - t`` of the other's."""
    past_middle = (t > 0.5).unsqueeze(1)
    share = torch.where(past_middle, t.unsqueeze(1) - 0.5, 0.5 - t.unsqueeze(1))
    own_color, other_color = color[own], color[other]
    change = share * torch.where(past_middle, own_color - other_color, other_color - own_color)
    return torch.where(past_middle.squeeze(1), other, own), change


def _blends(
    color: torch.Tensor,
    scene: _Scene,
    depth: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    horizontal: bool,
    max_hops: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """For adjacent pixel pairs ``(p, q)`` (flat indices): the pixels that change, by how much, and
    how many walks ran out of hops."""
    face_id = scene.face_id
    differ = face_id[p] != face_id[q]
    p, q = p[differ], q[differ]
    fp, fq = face_id[p], face_id[q]
    p_owns = (fq < 0) | ((fp >= 0) & (depth[p] <= depth[q]))  # the nearer face's outline is the one seen
    own, other = torch.where(p_owns, p, q), torch.where(p_owns, q, p)
    first = _walk(scene, own, other, horizontal, max_hops)
    pixels, changes = _changes(color, own[first.found], other[first.found], first.t)
    # Depth at the two centres can pick the wrong owner where surfaces nearly touch. If the owner's
    # walk ends inside a face other than the one seen at the other pixel, that pixel's face is
    # walked back; its outline counts where it lies in front of the face the first walk ended in.
    retry = ~first.met & ~first.cut & (face_id[other] >= 0) & (first.end_face != face_id[other])
    own, other, behind = other[retry], own[retry], first.end_face[retry]
    back = _walk(scene, own, other, horizontal, max_hops)
    with torch.no_grad():
        H, W = scene.resolution
        start, end = _pixel_centre(own, H, W, color.dtype), _pixel_centre(other, H, W, color.dtype)
        item = own // (H * W)
        found = back.found
        at = start[found] + back.t.detach().unsqueeze(1) * (end[found] - start[found])
        seen = _inverse_depth(scene, item[found], back.face, at) > _inverse_depth(scene, item[found], behind[found], at)
    keep = found[seen]
    pixels_back, changes_back = _changes(color, own[keep], other[keep], back.t[seen])
    unfinished = int(first.cut.sum()) + int(back.cut.sum())
    return [pixels, pixels_back], [changes, changes_back], unfinished


def antialias(
    color: torch.Tensor,
    fragments: Fragments,
    clip_pos: torch.Tensor,
    neighbours: torch.Tensor | None = None,
    max_hops: int = 64,
) -> torch.Tensor:
    """``color [B, H, W, C]`` (rendered through ``fragments``) blended across mesh outlines;
    differentiable w.r.t. ``color`` and ``clip_pos [B, V, 4]`` (the positions ``fragments`` were
    rasterized from). ``neighbours``: :func:`edge_neighbours` of ``fragments.faces``, to reuse for a
    fixed mesh.

    The segment between two pixel centres may cross many small faces before it meets the outline
    (faces seen edge-on near it): it is followed across at most ``max_hops`` faces, and a warning
    counts the segments cut short. A pixel blended by several pairs (a feature smaller than a
    pixel) can leave ``[0, 1]``, as in nvdiffrast. Vertices must be shared between faces (welded):
    a seam of duplicated vertices counts as an outline. On CUDA the walks run as one Triton kernel
    (``_antialias_triton``); elsewhere as tensor code, a few dozen operations per hop."""
    B, H, W = fragments.face_id.shape
    check_shape("antialias", "color", color, (B, H, W, "C"))
    check_shape("antialias", "clip_pos", clip_pos, (B, fragments.num_verts, 4))
    faces = fragments.faces
    if neighbours is None:  # a batch sharing one face list (stride 0) pairs its faces once
        neighbours = edge_neighbours(faces[:1] if faces.stride(0) == 0 else faces).expand(B, -1, -1)
    check_shape("antialias", "neighbours", neighbours, tuple(faces.shape))
    flat = color.reshape(B * H * W, -1)
    drawn = drawable_faces(clip_pos.detach(), faces, (H, W))
    scene = _Scene(fragments.face_id.reshape(-1), clip_pos, faces, neighbours, drawn, (H, W))
    depth = fragments.depth.detach().reshape(-1)
    index = torch.arange(B * H * W, device=color.device).view(B, H, W)
    pixels, changes, unfinished = [], [], 0
    for horizontal, first, second in ((True, index[:, :, :-1], index[:, :, 1:]), (False, index[:, :-1], index[:, 1:])):
        found, change, cut = _blends(flat, scene, depth, first.reshape(-1), second.reshape(-1), horizontal, max_hops)
        pixels += found
        changes += change
        unfinished += cut
    if unfinished:
        warnings.warn(
            f"antialias(): {unfinished} segments crossed more than max_hops={max_hops} faces; not blended", stacklevel=2
        )
    return flat.index_add(0, torch.cat(pixels), torch.cat(changes).to(flat.dtype)).view(B, H, W, -1)
