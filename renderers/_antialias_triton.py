"""The Triton kernel of ``antialias``'s walk: every segment followed across faces in one launch.

The tensor path (``antialias._follow``) runs each hop of every walk as some forty tensor operations
and drops the finished walks between hops; here a lane follows one segment through all its hops
(a program's lanes stop when all of theirs have ended), reading each face's corners and its
neighbour across the exit edge as it goes. The decisions are ``antialias._hop``'s, in its order,
with correctly rounded division and without fused multiply-adds, so the faces and edges found are
the tensor path's bit for bit. It takes no gradients: the crossing where a walk ends is taken again
with autograd by ``antialias._walk``. ``antialias`` runs it on CUDA; the tests also run it on the
CPU, in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from ._raster_triton import supports, triton

__all__ = ["WALK_BLOCK", "follow", "supports"]

WALK_BLOCK = 128
"""Segments per program."""

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _div(a, b):
        if a.dtype == tl.float32:
            return tl.math.div_rn(a, b)  # plain fp32 division is approximate
        return a / b  # fp64 division rounds correctly

    @triton.jit
    def _corner(clip_ptr, vertex, sx, sy, alive):
        """A vertex's pixel position (``cameras.clip_to_pixel``)."""
        x = tl.load(clip_ptr + vertex * 4, mask=alive, other=0.0)
        y = tl.load(clip_ptr + vertex * 4 + 1, mask=alive, other=0.0)
        w = tl.load(clip_ptr + vertex * 4 + 3, mask=alive, other=1.0)
        return (_div(x, w) + 1.0) * sx, (_div(y, w) + 1.0) * sy

    @triton.jit
    def _edge_value(ax, ay, bx, by, px, py, inward):
        """``antialias._edge_values`` of the edge a→b at p: > 0 on the face's side."""
        return ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * inward

    @triton.jit
    def _crossing(at_own, at_other):
        """Where the segment crosses an edge's line, ``inf`` where it does not leave through it."""
        leaving = at_other < at_own
        return tl.where(leaving, _div(at_own, tl.where(leaving, at_own - at_other, 1.0)), float("inf"))

    @triton.jit
    def _pick(k, v0, v1, v2):
        return tl.where(k == 0, v0, tl.where(k == 1, v1, v2))

    @triton.jit
    def _walk_kernel(
        own_ptr, other_ptr, face_id_ptr, clip_ptr, faces_ptr, neighbours_ptr, drawn_ptr,
        met_ptr, blended_face_ptr, blended_edge_ptr, end_face_ptr,
        total, H, W, V, F, sx, sy, max_hops,
        HORIZONTAL: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        lane = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        real = lane < total
        own = tl.load(own_ptr + lane, mask=real, other=0)
        other = tl.load(other_ptr + lane, mask=real, other=0)
        item = own // (H * W)
        face = tl.load(face_id_ptr + own, mask=real, other=-1)
        face_at_other = tl.load(face_id_ptr + other, mask=real, other=-1)
        ox = ((own % (H * W)) % W).to(clip_ptr.dtype.element_ty) + 0.5
        oy = ((own % (H * W)) // W).to(clip_ptr.dtype.element_ty) + 0.5
        tx = ((other % (H * W)) % W).to(clip_ptr.dtype.element_ty) + 0.5
        ty = ((other % (H * W)) // W).to(clip_ptr.dtype.element_ty) + 0.5
        vertex_base = item * V
        face_base = item * F
        met = tl.zeros_like(lane).to(tl.int8)
        blended_face = tl.zeros_like(lane) - 1
        blended_edge = tl.zeros_like(lane) - 1
        end_face = tl.zeros_like(lane) - 1
        alive = real
        hop = 0
        while (hop < max_hops) & (tl.max(alive.to(tl.int32), axis=0) > 0):
            row = (face_base + tl.maximum(face, 0)) * 3
            c0 = tl.load(faces_ptr + row, mask=alive, other=0)
            c1 = tl.load(faces_ptr + row + 1, mask=alive, other=0)
            c2 = tl.load(faces_ptr + row + 2, mask=alive, other=0)
            x0, y0 = _corner(clip_ptr, vertex_base + c0, sx, sy, alive)
            x1, y1 = _corner(clip_ptr, vertex_base + c1, sx, sy, alive)
            x2, y2 = _corner(clip_ptr, vertex_base + c2, sx, sy, alive)
            area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # ops._screen_area
            inward = tl.where(area > 0, 1.0, tl.where(area < 0, -1.0, 0.0)).to(x0.dtype)
            # Edge k runs from corner k + 1 to corner k + 2.
            t0 = _crossing(_edge_value(x1, y1, x2, y2, ox, oy, inward), _edge_value(x1, y1, x2, y2, tx, ty, inward))
            t1 = _crossing(_edge_value(x2, y2, x0, y0, ox, oy, inward), _edge_value(x2, y2, x0, y0, tx, ty, inward))
            t2 = _crossing(_edge_value(x0, y0, x1, y1, ox, oy, inward), _edge_value(x0, y0, x1, y1, tx, ty, inward))
            # The first of equal minima, as torch.min (crossings of a drawn face are never NaN).
            edge = tl.where(t1 < t0, 1, 0)
            exit_t = tl.where(t1 < t0, t1, t0)
            edge = tl.where(t2 < exit_t, 2, edge)
            exit_t = tl.where(t2 < exit_t, t2, exit_t)
            beyond = tl.load(neighbours_ptr + row + edge, mask=alive, other=-1)
            end0, end1 = _pick((edge + 1) % 3, c0, c1, c2), _pick((edge + 2) % 3, c0, c1, c2)
            wing_row = (face_base + tl.maximum(beyond, 0)) * 3
            w0 = tl.load(faces_ptr + wing_row, mask=alive, other=0)
            w1 = tl.load(faces_ptr + wing_row + 1, mask=alive, other=0)
            w2 = tl.load(faces_ptr + wing_row + 2, mask=alive, other=0)
            # The wing's corner off the shared edge (its first, where none is: a degenerate wing).
            apex = tl.where((w0 != end0) & (w0 != end1), w0, tl.where((w1 != end0) & (w1 != end1), w1,
                            tl.where((w2 != end0) & (w2 != end1), w2, w0)))  # fmt: skip
            apex_x, apex_y = _corner(clip_ptr, vertex_base + apex, sx, sy, alive)
            ax, ay = _pick((edge + 1) % 3, x0, x1, x2), _pick((edge + 1) % 3, y0, y1, y2)
            bx, by = _pick((edge + 2) % 3, x0, x1, x2), _pick((edge + 2) % 3, y0, y1, y2)
            folds = _edge_value(ax, ay, bx, by, apex_x, apex_y, inward) >= 0
            drawn = tl.load(drawn_ptr + face_base + tl.maximum(beyond, 0), mask=alive, other=0) != 0
            outline = (beyond < 0) | ~drawn | folds
            span_x, span_y = tl.abs(bx - ax), tl.abs(by - ay)
            if HORIZONTAL:
                this_kind = span_y >= span_x  # horizontal pairs take the steeper edges
            else:
                this_kind = span_x > span_y
            reaches = (exit_t < 1.0) | ((exit_t == 1.0) & (face_at_other != face))
            meets = alive & reaches & outline
            met = tl.where(meets, 1, met).to(tl.int8)
            blended = meets & this_kind
            blended_face = tl.where(blended, face, blended_face)
            blended_edge = tl.where(blended, edge.to(tl.int64), blended_edge)
            end_face = tl.where(alive & ~reaches, face, end_face)
            alive = alive & reaches & ~outline
            face = tl.where(alive, beyond, face)
            hop += 1
        tl.store(met_ptr + lane, met, mask=real)
        tl.store(blended_face_ptr + lane, blended_face, mask=real)
        tl.store(blended_edge_ptr + lane, blended_edge, mask=real)
        tl.store(end_face_ptr + lane, end_face, mask=real)


def follow(
    clip_pos: torch.Tensor,
    faces: torch.Tensor,
    neighbours: torch.Tensor,
    drawn: torch.Tensor,
    face_id: torch.Tensor,
    own: torch.Tensor,
    other: torch.Tensor,
    resolution: tuple[int, int],
    horizontal: bool,
    max_hops: int,
) -> tuple[torch.Tensor, ...]:
    """``antialias._follow`` in one launch: per segment from pixel ``own`` to pixel ``other`` (flat
    indices ``[P]``), whether it met an outline, the face and edge it was blended at (-1: not), and
    the face it ended inside (-1: none). ``clip_pos [B, V, 4]``, ``faces`` and ``neighbours`` int64
    ``[B, F, 3]``, ``drawn [B, F]``, ``face_id`` flat ``[B * H * W]``."""
    B, V = clip_pos.shape[:2]
    F = faces.shape[1]
    H, W = resolution
    total = len(own)
    met = torch.empty(total, dtype=torch.int8, device=own.device)
    blended_face, blended_edge, end_face = (torch.empty_like(own) for _ in range(3))
    if total:
        _walk_kernel[(triton.cdiv(total, WALK_BLOCK),)](
            own.contiguous(), other.contiguous(), face_id.contiguous(), clip_pos.detach().contiguous(),
            faces.expand(B, F, 3).contiguous(), neighbours.expand(B, F, 3).contiguous(),
            drawn.expand(B, F).to(torch.int8).contiguous(), met, blended_face, blended_edge, end_face,
            total, H, W, V, F, 0.5 * W, 0.5 * H, max_hops,
            HORIZONTAL=horizontal, BLOCK=WALK_BLOCK, enable_fp_fusion=False,
        )  # fmt: skip
    return met.bool(), blended_face, blended_edge, end_face
