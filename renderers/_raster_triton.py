"""Triton kernels of the rasterizer: the z-buffer pass of ``ops.rasterize`` and the per-pixel sums
of ``ops.soft_silhouette`` (forward and backward).

A program per face walks the pixel centres of the face's bounding box, tests each against the
face's edge table and keeps the nearest packed ``(depth, face)`` key per pixel with an atomic
minimum. The tensor path instead lists every (face, pixel) candidate, gathers a table row for
each and reduces them with ``scatter_reduce``; here a face's row is read once, no candidate list
is built, and no host sync sizes one. The arithmetic is ``ops._candidate_keys``'s, in its order,
with correctly rounded division and without fused multiply-adds, so keys, and face ids, are bit
for bit the tensor path's. ``ops`` runs them on CUDA; the tests also run them on the CPU, in
Triton's interpreter (``TRITON_INTERPRET=1``).

The fragment kernels recompute each covered pixel's perspective-correct barycentrics and depth
from its face's three clip-space corners (``ops._fragment_math``'s formulas), and in the backward
pass sum the nine corner gradients (x, y and w of three corners) over each run of pixels showing
one face and add the sums straight into the vertex gradients: no per-pixel corner table is
gathered or kept, and background pixels add nothing.

The soft silhouette walks each face's box grown by its margin the same way, adding each pixel's
``log(1 - exp(-d²/sigma))`` with an atomic add; its backward walks the boxes again and sums each
face's six corner gradients in registers, so no candidate tensor is kept for autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the tensor path is used
    triton = None

__all__ = ["Launch", "supports", "nearest_face_keys", "fragments", "soft_sums"]


@dataclass(frozen=True)
class Launch:
    """How a kernel's programs cover the faces: ``faces`` per program, each face's pixel box walked
    ``block`` centres at a time, by ``warps`` warps. The z-buffer and the soft silhouette take any
    shape (the z-buffer's keys are the same bit for bit, the soft sums the same to rounding). The
    default is chosen with ``bench/renderers.py --launch``."""

    faces: int = 4
    block: int = 32
    warps: int = 4

    def __post_init__(self) -> None:
        for name in ("faces", "block", "warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"Launch.{name} must be a power of two; got {value}")

    @classmethod
    def parse(cls, text: str) -> Launch:
        """``FACESxBLOCKxWARPS``, e.g. ``4x32x4``."""
        try:
            faces, block, warps = (int(part) for part in text.split("x"))
        except ValueError:
            raise ValueError(f"a launch is FACESxBLOCKxWARPS, e.g. 4x32x4; got {text!r}") from None
        return cls(faces, block, warps)

    def __str__(self) -> str:
        return f"{self.faces}x{self.block}x{self.warps}"


def supports(device: torch.device) -> bool:
    """Whether ``ops`` runs the kernels on tensors of ``device`` (CUDA; the interpreter that runs
    them on the CPU is for tests, far slower than the candidate lists)."""
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _column(row, k, real):
        """Entry ``k`` of each face's table row, as a column (0 for the block's padding faces)."""
        return tl.load(row + k, mask=real, other=0.0)[:, None]

    @triton.jit
    def _nearest_keys_kernel(table_ptr, box_ptr, best_ptr, total_faces, num_faces, H, W,
                             FACES: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        # Rows: this program's faces; columns: a block of pixel centres of each face's box.
        face = tl.program_id(0).to(tl.int64) * FACES + tl.arange(0, FACES).to(tl.int64)
        real = face < total_faces
        box = box_ptr + face * 4
        col0 = tl.load(box, mask=real, other=0)[:, None]
        row0 = tl.load(box + 1, mask=real, other=0)[:, None]
        width = tl.load(box + 2, mask=real, other=0)
        count = width * tl.load(box + 3, mask=real, other=0)
        width = tl.maximum(width, 1)[:, None]
        row = table_ptr + face * 16
        a0, b0, c0 = _column(row, 0, real), _column(row, 1, real), _column(row, 2, real)
        a1, b1, c1 = _column(row, 3, real), _column(row, 4, real), _column(row, 5, real)
        a2, b2, c2 = _column(row, 6, real), _column(row, 7, real), _column(row, 8, real)
        own0, own1, own2 = _column(row, 9, real), _column(row, 10, real), _column(row, 11, real)
        iw0, iw1, iw2 = _column(row, 12, real), _column(row, 13, real), _column(row, 14, real)
        inv_area = _column(row, 15, real)
        image = ((face // num_faces) * H * W)[:, None]
        local = (face % num_faces)[:, None]
        for start in range(0, tl.max(count, axis=0), BLOCK):
            offset = start + tl.arange(0, BLOCK)[None, :]
            inside_box = offset < count[:, None]
            r = row0 + offset // width
            c = col0 + offset % width
            px = c.to(a0.dtype) + 0.5
            py = r.to(a0.dtype) + 0.5
            e0 = a0 * px + b0 * py + c0
            e1 = a1 * px + b1 * py + c1
            e2 = a2 * px + b2 * py + c2
            # Edge k covers the centre if e_k > 0, or e_k == 0 on an edge the face owns.
            inside = (
                tl.where(own0 > 0, e0 >= 0, e0 > 0)
                & tl.where(own1 > 0, e1 >= 0, e1 > 0)
                & tl.where(own2 > 0, e2 >= 0, e2 > 0)
            )
            weight = (e0 * iw0 + e1 * iw1 + e2 * iw2) * inv_area
            one = tl.zeros_like(weight) + 1.0
            if weight.dtype == tl.float32:
                inverse = tl.math.div_rn(one, weight)  # plain fp32 division is approximate
            else:
                inverse = one / weight  # fp64 division rounds correctly
            depth = tl.maximum(inverse.to(tl.float32), 0.0)
            key = (depth.to(tl.int32, bitcast=True).to(tl.int64) << 32) | local
            pixel = image + r.to(tl.int64) * W + c
            tl.atomic_min(best_ptr + pixel, key, mask=inside_box & inside)


def _boxes(first: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The kernels' view of ``_binning.pixel_boxes``: ``[B * F, 4]`` int32 (col, row, width, height)."""
    return torch.cat([first, size], dim=1).to(torch.int32).contiguous()


def nearest_face_keys(table: torch.Tensor, first: torch.Tensor, size: torch.Tensor, best: torch.Tensor,
                      num_faces: int, resolution: tuple[int, int], *, launch: Launch = Launch()) -> None:  # fmt: skip
    """Lower ``best [B * H * W]`` (int64 keys) to each pixel's nearest covering face.

    ``table [B * F, 16]``: ``ops._face_table``'s edge table; ``first``, ``size``: the faces'
    pixel boxes (``_binning.pixel_boxes``)."""
    boxes = _boxes(first, size)
    H, W = resolution
    total = boxes.shape[0]
    _nearest_keys_kernel[(triton.cdiv(total, launch.faces),)](
        table.contiguous(), boxes, best, total, num_faces, H, W,
        FACES=launch.faces, BLOCK=launch.block, num_warps=launch.warps, enable_fp_fusion=False,
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _fragment_corner(clip_ptr, faces_ptr, face_row, k, vertex_base, covered):
        """Corner ``k``'s vertex row and its clip x, y and w (w = 1 in the background)."""
        vertex = vertex_base + tl.load(faces_ptr + face_row + k, mask=covered, other=0)
        corner = clip_ptr + vertex * 4
        x = tl.load(corner, mask=covered, other=0.0)
        y = tl.load(corner + 1, mask=covered, other=0.0)
        w = tl.load(corner + 3, mask=covered, other=1.0)
        return vertex, x, y, w

    @triton.jit
    def _fragment_pixels(clip_ptr, faces_ptr, face_id_ptr, start, total, V, face_stride, H, W, BLOCK: tl.constexpr):
        """One block of pixels: index, face, whether covered, the pixel centre, and each corner's
        vertex row and clip x, y, w."""
        pixel = start + tl.arange(0, BLOCK).to(tl.int64)
        face = tl.load(face_id_ptr + pixel, mask=pixel < total, other=-1)
        covered = face >= 0
        item = pixel // (H * W)
        local = pixel % (H * W)
        face_row = item * face_stride + tl.maximum(face, 0) * 3
        v0, x0, y0, w0 = _fragment_corner(clip_ptr, faces_ptr, face_row, 0, item * V, covered)
        v1, x1, y1, w1 = _fragment_corner(clip_ptr, faces_ptr, face_row, 1, item * V, covered)
        v2, x2, y2, w2 = _fragment_corner(clip_ptr, faces_ptr, face_row, 2, item * V, covered)
        px = (local % W).to(x0.dtype) + 0.5
        py = (local // W).to(x0.dtype) + 0.5
        return (pixel, face, covered, px, py, v0, x0, y0, w0, v1, x1, y1, w1, v2, x2, y2, w2)

    @triton.jit
    def _edge(ax, ay, bx, by, px, py):
        """Corner k's edge value (twice the area of the pixel and the opposite edge a→b)."""
        return (bx - ax) * (py - ay) - (by - ay) * (px - ax)

    @triton.jit
    def _screen_terms(covered, px, py, x0, y0, w0, x1, y1, w1, x2, y2, w2, sx, sy):
        """Screen corners (u, t), edge values e_k, q_k = e_k / w_k and their sum (1 in the background)."""
        u0, t0 = (x0 / w0 + 1.0) * sx, (y0 / w0 + 1.0) * sy
        u1, t1 = (x1 / w1 + 1.0) * sx, (y1 / w1 + 1.0) * sy
        u2, t2 = (x2 / w2 + 1.0) * sx, (y2 / w2 + 1.0) * sy
        e0, e1, e2 = _edge(u1, t1, u2, t2, px, py), _edge(u2, t2, u0, t0, px, py), _edge(u0, t0, u1, t1, px, py)
        q0, q1, q2 = e0 / w0, e1 / w1, e2 / w2
        return u0, t0, u1, t1, u2, t2, e0, e1, e2, q0, q1, q2, tl.where(covered, q0 + q1 + q2, 1.0)

    @triton.jit
    def _fragment_forward_kernel(clip_ptr, faces_ptr, face_id_ptr, bary_ptr, depth_ptr, total, V, face_stride,
                                 H, W, BLOCK: tl.constexpr):  # fmt: skip
        pixel, _, covered, px, py, _, x0, y0, w0, _, x1, y1, w1, _, x2, y2, w2 = _fragment_pixels(
            clip_ptr, faces_ptr, face_id_ptr, tl.program_id(0).to(tl.int64) * BLOCK, total, V, face_stride,
            H, W, BLOCK)  # fmt: skip
        sx, sy = 0.5 * W, 0.5 * H
        u0, t0, u1, t1, u2, t2, e0, e1, e2, q0, q1, q2, total_q = _screen_terms(
            covered, px, py, x0, y0, w0, x1, y1, w1, x2, y2, w2, sx, sy
        )
        inside = pixel < total
        out = bary_ptr + pixel * 3
        tl.store(out, tl.where(covered, q0 / total_q, 0.0), mask=inside)
        tl.store(out + 1, tl.where(covered, q1 / total_q, 0.0), mask=inside)
        tl.store(out + 2, tl.where(covered, q2 / total_q, 0.0), mask=inside)
        tl.store(depth_ptr + pixel, tl.where(covered, (e0 + e1 + e2) / total_q, 0.0), mask=inside)

    @triton.jit
    def _clip_gradient(gu, gt, gw_direct, x, y, w, sx, sy):
        """A corner's screen-position and w gradients chained to its clip x, y and w."""
        gx = gu * sx / w
        gy = gt * sy / w
        return gx, gy, gw_direct - (gx * x + gy * y) / w

    @triton.jit
    def _face_key(face, pixel, H, W):
        """Which face a pixel shows, unique across the batch (negative for the background)."""
        return tl.where(face >= 0, (pixel // (H * W)) * 2**32 + face, -1)

    @triton.jit
    def _key_at(face_id_ptr, pixel, total, H, W):
        """``_face_key`` of the pixel at ``pixel`` (the background outside ``[0, total)``)."""
        return _face_key(tl.load(face_id_ptr + pixel, mask=(pixel >= 0) & (pixel < total), other=-1), pixel, H, W)

    @triton.jit
    def _run_sum(fa, a0, a1, a2, a3, a4, a5, a6, a7, a8, fb, b0, b1, b2, b3, b4, b5, b6, b7, b8):
        """Segmented sum: ``fb`` marks where a run begins, and a run's sum restarts there."""
        restart = fb != 0
        return (fa | fb, tl.where(restart, b0, a0 + b0), tl.where(restart, b1, a1 + b1),
                tl.where(restart, b2, a2 + b2), tl.where(restart, b3, a3 + b3), tl.where(restart, b4, a4 + b4),
                tl.where(restart, b5, a5 + b5), tl.where(restart, b6, a6 + b6), tl.where(restart, b7, a7 + b7),
                tl.where(restart, b8, a8 + b8))  # fmt: skip

    @triton.jit
    def _add_row(row, gx, gy, gw, last):
        tl.atomic_add(row, gx, mask=last)
        tl.atomic_add(row + 1, gy, mask=last)
        tl.atomic_add(row + 3, gw, mask=last)

    @triton.jit
    def _fragment_backward_kernel(clip_ptr, faces_ptr, face_id_ptr, grad_bary_ptr, grad_depth_ptr, grad_clip_ptr,
                                  total, V, face_stride, H, W, RUNS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        pixel, face, covered, px, py, v0, x0, y0, w0, v1, x1, y1, w1, v2, x2, y2, w2 = _fragment_pixels(
            clip_ptr, faces_ptr, face_id_ptr, tl.program_id(0).to(tl.int64) * BLOCK, total, V, face_stride,
            H, W, BLOCK)  # fmt: skip
        sx, sy = 0.5 * W, 0.5 * H
        u0, t0, u1, t1, u2, t2, e0, e1, e2, q0, q1, q2, total_q = _screen_terms(
            covered, px, py, x0, y0, w0, x1, y1, w1, x2, y2, w2, sx, sy
        )
        b0, b1, b2 = q0 / total_q, q1 / total_q, q2 / total_q
        depth = (e0 + e1 + e2) / total_q
        g = grad_bary_ptr + pixel * 3
        gb0 = tl.load(g, mask=covered, other=0.0)
        gb1 = tl.load(g + 1, mask=covered, other=0.0)
        gb2 = tl.load(g + 2, mask=covered, other=0.0)
        gd = tl.load(grad_depth_ptr + pixel, mask=covered, other=0.0)
        # bary_k = q_k / sum q, depth = sum e / sum q, q_k = e_k / w_k.
        shared = gb0 * b0 + gb1 * b1 + gb2 * b2 + gd * depth
        gq0, gq1, gq2 = (gb0 - shared) / total_q, (gb1 - shared) / total_q, (gb2 - shared) / total_q
        ge0, ge1, ge2 = gq0 / w0 + gd / total_q, gq1 / w1 + gd / total_q, gq2 / w2 + gd / total_q
        # e_k = (b - a) x (p - a) over the edge a→b opposite corner k: de/da = (b_y - p_y, p_x - b_x),
        # de/db = (p_y - a_y, a_x - p_x).
        gu0 = ge1 * (py - t2) + ge2 * (t1 - py)
        gt0 = ge1 * (u2 - px) + ge2 * (px - u1)
        gu1 = ge2 * (py - t0) + ge0 * (t2 - py)
        gt1 = ge2 * (u0 - px) + ge0 * (px - u2)
        gu2 = ge0 * (py - t1) + ge1 * (t0 - py)
        gt2 = ge0 * (u1 - px) + ge1 * (px - u0)
        gx0, gy0, gw0 = _clip_gradient(gu0, gt0, -gq0 * q0 / w0, x0, y0, w0, sx, sy)
        gx1, gy1, gw1 = _clip_gradient(gu1, gt1, -gq1 * q1 / w1, x1, y1, w1, sx, sy)
        gx2, gy2, gw2 = _clip_gradient(gu2, gt2, -gq2 * q2 / w2, x2, y2, w2, sx, sy)
        last = covered
        if RUNS:
            # Neighbouring pixels mostly show the same face: each run of them adds its sum once, from
            # its last pixel, so a vertex takes a few atomic adds per row of a face, not one per pixel.
            key = _face_key(face, pixel, H, W)
            begins = (key != _key_at(face_id_ptr, pixel - 1, total, H, W)).to(tl.int32)
            ends = (key != _key_at(face_id_ptr, pixel + 1, total, H, W)) | (tl.arange(0, BLOCK) == BLOCK - 1)
            last = covered & ends
            _, gx0, gy0, gw0, gx1, gy1, gw1, gx2, gy2, gw2 = tl.associative_scan(
                (begins, gx0, gy0, gw0, gx1, gy1, gw1, gx2, gy2, gw2), 0, _run_sum
            )
        _add_row(grad_clip_ptr + v0 * 4, gx0, gy0, gw0, last)
        _add_row(grad_clip_ptr + v1 * 4, gx1, gy1, gw1, last)
        _add_row(grad_clip_ptr + v2 * 4, gx2, gy2, gw2, last)


FRAGMENT_BLOCK = 256
"""Pixels per program of the fragment kernels."""


def _face_layout(faces: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``faces [B, F, 3]`` as a flat int64 buffer and its batch stride (0 where one list is shared)."""
    if faces.stride(0) == 0:
        return faces[0].contiguous(), 0
    return faces.contiguous(), faces.shape[1] * 3


class _Fragments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clip_pos, faces, face_id, runs):
        V = clip_pos.shape[1]
        H, W = face_id.shape[1:]
        flat_faces, face_stride = _face_layout(faces)
        clip = clip_pos.contiguous()
        face_id = face_id.contiguous()
        total = face_id.numel()
        bary = torch.empty(total, 3, dtype=clip.dtype, device=clip.device)
        depth = torch.empty(total, 1, dtype=clip.dtype, device=clip.device)
        grid = (triton.cdiv(total, FRAGMENT_BLOCK),)
        _fragment_forward_kernel[grid](
            clip, flat_faces, face_id, bary, depth, total, V, face_stride, H, W, BLOCK=FRAGMENT_BLOCK
        )
        ctx.save_for_backward(clip, flat_faces, face_id)
        ctx.face_stride, ctx.runs = face_stride, runs
        return bary, depth

    @staticmethod
    def backward(ctx, grad_bary, grad_depth):
        clip, flat_faces, face_id = ctx.saved_tensors
        V = clip.shape[1]
        H, W = face_id.shape[1:]
        total = face_id.numel()
        grad_bary = torch.zeros(total, 3, dtype=clip.dtype, device=clip.device) if grad_bary is None else grad_bary
        grad_depth = torch.zeros(total, 1, dtype=clip.dtype, device=clip.device) if grad_depth is None else grad_depth
        grad_clip = torch.zeros_like(clip)
        grid = (triton.cdiv(total, FRAGMENT_BLOCK),)
        _fragment_backward_kernel[grid](
            clip, flat_faces, face_id, grad_bary.contiguous(), grad_depth.contiguous(), grad_clip, total, V,
            ctx.face_stride, H, W, RUNS=ctx.runs, BLOCK=FRAGMENT_BLOCK,
        )  # fmt: skip
        return grad_clip, None, None, None


def fragments(clip_pos: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, *,
              runs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``ops._fragment_math`` as two kernels: barycentrics ``[P, 3]`` and depth ``[P, 1]`` of each
    pixel's face ``face_id [B, H, W]`` (-1: background, zeros), differentiable w.r.t. ``clip_pos [B, V, 4]``;
    ``faces`` int64 ``[B, F, 3]``. ``runs=False``: the backward pass adds every pixel's corner
    gradients on its own (one atomic add per pixel and value, for ``bench/renderers.py``)."""
    return _Fragments.apply(clip_pos, faces, face_id, runs)


if triton is not None:

    @triton.jit
    def _segment(px, py, ax, ay, bx, by):
        """Squared distance from the points to segment a-b, the closest point's parameter and offset."""
        abx, aby = bx - ax, by - ay
        t = ((px - ax) * abx + (py - ay) * aby) / tl.maximum(abx * abx + aby * aby, 1e-12)
        t = tl.minimum(tl.maximum(t, 0.0), 1.0)
        dx, dy = px - (ax + t * abx), py - (ay + t * aby)
        return dx * dx + dy * dy, t, dx, dy

    @triton.jit
    def _soft_faces(tri_ptr, box_ptr, total_faces, num_faces, H, W, FACES: tl.constexpr):
        """This program's faces, read once (columns): which are real (not the last tile's padding),
        the first pixel of each face's image, its screen corners and winding sign, its grown box
        (first column, first row, width, pixel count), and the most box pixels any of them has."""
        face = tl.program_id(0).to(tl.int64) * FACES + tl.arange(0, FACES).to(tl.int64)
        real = face < total_faces
        row = tri_ptr + face * 6
        x0, y0 = _column(row, 0, real), _column(row, 1, real)
        x1, y1 = _column(row, 2, real), _column(row, 3, real)
        x2, y2 = _column(row, 4, real), _column(row, 5, real)
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        sign = tl.where(area > 0, 1.0, tl.where(area < 0, -1.0, 0.0))
        box = box_ptr + face * 4
        col0 = tl.load(box, mask=real, other=0)[:, None]
        row0 = tl.load(box + 1, mask=real, other=0)[:, None]
        width = tl.load(box + 2, mask=real, other=0)
        count = width * tl.load(box + 3, mask=real, other=0)
        image = ((face // num_faces) * H * W)[:, None]
        return (face, real, image, x0, y0, x1, y1, x2, y2, sign, col0, row0, tl.maximum(width, 1)[:, None],
                count[:, None], tl.max(count, axis=0))  # fmt: skip

    @triton.jit
    def _soft_tile(x0, y0, x1, y1, x2, y2, sign, col0, row0, width, count, start, W, sigma, BLOCK: tl.constexpr):
        """Columns ``start`` to ``start + BLOCK`` of each face's grown box (rows: the program's faces):
        pixel index within the image, in the box, inside the face, d²/sigma, the nearest edge k (from
        corner k to corner k + 1), and for each edge the closest point's parameter t and the offset
        from it to the pixel centre."""
        offset = start + tl.arange(0, BLOCK)[None, :]
        in_box = offset < count
        r = row0 + offset // width
        c = col0 + offset % width
        px, py = c.to(x0.dtype) + 0.5, r.to(x0.dtype) + 0.5
        e0 = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) * sign
        e1 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) * sign
        e2 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) * sign
        inside = (e0 > 0) & (e1 > 0) & (e2 > 0)
        d0, t0, dx0, dy0 = _segment(px, py, x0, y0, x1, y1)
        d1, t1, dx1, dy1 = _segment(px, py, x1, y1, x2, y2)
        d2, t2, dx2, dy2 = _segment(px, py, x2, y2, x0, y0)
        nearest = tl.where(d0 <= d1, tl.where(d0 <= d2, 0, 2), tl.where(d1 <= d2, 1, 2))
        x = tl.minimum(tl.minimum(d0, d1), d2) / sigma
        pixel = r.to(tl.int64) * W + c
        return pixel, in_box, inside, x, nearest, t0, dx0, dy0, t1, dx1, dy1, t2, dx2, dy2

    @triton.jit
    def _soft_forward_kernel(tri_ptr, box_ptr, log_ptr, covered_ptr, total_faces, num_faces, H, W, sigma,
                             FACES: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        face, real, image, x0, y0, x1, y1, x2, y2, sign, col0, row0, width, count, most = _soft_faces(
            tri_ptr, box_ptr, total_faces, num_faces, H, W, FACES
        )
        for start in range(0, most, BLOCK):
            pixel, in_box, inside, x, _, _, _, _, _, _, _, _, _, _ = _soft_tile(
                x0, y0, x1, y1, x2, y2, sign, col0, row0, width, count, start, W, sigma, BLOCK
            )
            x = tl.maximum(x, 1e-6)  # a centre exactly on an edge keeps a finite gradient
            # log(1 - exp(-x)); near 0 its series, where 1 - exp(-x) would lose the digits.
            term = tl.where(x < 1e-2, tl.log(x) - 0.5 * x + x * x / 24.0, tl.log(1.0 - tl.exp(-x)))
            outside = inside == 0
            tl.atomic_add(log_ptr + image + pixel, term, mask=in_box & outside)
            tl.atomic_max(covered_ptr + image + pixel, inside.to(tl.int32), mask=in_box & inside)

    @triton.jit
    def _soft_backward_kernel(tri_ptr, box_ptr, grad_log_ptr, grad_tri_ptr, total_faces, num_faces, H, W, sigma,
                              FACES: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        face, real, image, x0, y0, x1, y1, x2, y2, sign, col0, row0, width, count, most = _soft_faces(
            tri_ptr, box_ptr, total_faces, num_faces, H, W, FACES
        )
        zero = tl.zeros((FACES,), dtype=tri_ptr.dtype.element_ty)
        g0x, g0y, g1x, g1y, g2x, g2y = zero, zero, zero, zero, zero, zero
        for start in range(0, most, BLOCK):
            pixel, in_box, inside, x, nearest, t0, dx0, dy0, t1, dx1, dy1, t2, dx2, dy2 = _soft_tile(
                x0, y0, x1, y1, x2, y2, sign, col0, row0, width, count, start, W, sigma, BLOCK
            )
            grad = tl.load(grad_log_ptr + image + pixel, mask=in_box, other=0.0)
            # d term / dx = 1 / (exp(x) - 1); x = d²/sigma carries no gradient where it was clamped.
            live = in_box & (inside == 0) & (x > 1e-6)
            safe = tl.maximum(x, 1e-6)
            slope = tl.where(safe < 1e-2, 1.0 / safe - 0.5 + safe / 12.0, 1.0 / (tl.exp(safe) - 1.0))
            g = tl.where(live, grad * slope * (-2.0 / sigma), 0.0)  # d(d²)/d(closest point) = -2 offset
            # The nearest edge's start moves its closest point by (1 - t), its end by t.
            a0 = tl.where(nearest == 0, g * (1.0 - t0), 0.0)
            b0 = tl.where(nearest == 0, g * t0, 0.0)
            a1 = tl.where(nearest == 1, g * (1.0 - t1), 0.0)
            b1 = tl.where(nearest == 1, g * t1, 0.0)
            a2 = tl.where(nearest == 2, g * (1.0 - t2), 0.0)
            b2 = tl.where(nearest == 2, g * t2, 0.0)
            g0x += tl.sum(a0 * dx0 + b2 * dx2, axis=1)
            g0y += tl.sum(a0 * dy0 + b2 * dy2, axis=1)
            g1x += tl.sum(b0 * dx0 + a1 * dx1, axis=1)
            g1y += tl.sum(b0 * dy0 + a1 * dy1, axis=1)
            g2x += tl.sum(b1 * dx1 + a2 * dx2, axis=1)
            g2y += tl.sum(b1 * dy1 + a2 * dy2, axis=1)
        out = grad_tri_ptr + face * 6
        tl.store(out, g0x, mask=real)
        tl.store(out + 1, g0y, mask=real)
        tl.store(out + 2, g1x, mask=real)
        tl.store(out + 3, g1y, mask=real)
        tl.store(out + 4, g2x, mask=real)
        tl.store(out + 5, g2y, mask=real)


class _SoftSums(torch.autograd.Function):
    """Per pixel: the sum of the outside faces' ``log(1 - exp(-d²/sigma))`` (differentiable w.r.t.
    the screen triangles) and whether a face covers its centre."""

    @staticmethod
    def forward(ctx, tri, boxes, num_faces, resolution, sigma, launch):
        H, W = resolution
        total = boxes.shape[0]
        log_empty = torch.zeros(total // num_faces * H * W, dtype=tri.dtype, device=tri.device)
        covered = torch.zeros_like(log_empty, dtype=torch.int32)
        _soft_forward_kernel[(triton.cdiv(total, launch.faces),)](
            tri, boxes, log_empty, covered, total, num_faces, H, W, sigma,
            FACES=launch.faces, BLOCK=launch.block, num_warps=launch.warps,
        )  # fmt: skip
        ctx.save_for_backward(tri, boxes)
        ctx.settings = (num_faces, H, W, sigma, launch)
        ctx.mark_non_differentiable(covered)
        return log_empty, covered

    @staticmethod
    def backward(ctx, grad_log, _):
        tri, boxes = ctx.saved_tensors
        num_faces, H, W, sigma, launch = ctx.settings
        total = boxes.shape[0]
        grad_tri = torch.empty_like(tri)
        _soft_backward_kernel[(triton.cdiv(total, launch.faces),)](
            tri, boxes, grad_log.contiguous(), grad_tri, total, num_faces, H, W, sigma,
            FACES=launch.faces, BLOCK=launch.block, num_warps=launch.warps,
        )  # fmt: skip
        return grad_tri, None, None, None, None, None


def soft_sums(tri: torch.Tensor, first: torch.Tensor, size: torch.Tensor, num_faces: int, resolution: tuple[int, int],
              sigma: float, *, launch: Launch = Launch()) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``ops.soft_silhouette``'s per-pixel sums over the faces' grown boxes: ``log_empty [B * H * W]``
    (differentiable w.r.t. ``tri [B * F, 6]``, the screen corners) and ``covered`` (int32, 0 or 1)."""
    return _SoftSums.apply(tri.contiguous(), _boxes(first, size), num_faces, tuple(resolution), float(sigma), launch)
