"""The z-buffer pass of ``ops.rasterize`` as one Triton kernel.

A program per face walks the pixel centres of the face's bounding box, tests each against the
face's edge table and keeps the nearest packed ``(depth, face)`` key per pixel with an atomic
minimum. The tensor path instead lists every (face, pixel) candidate, gathers a table row for
each and reduces them with ``scatter_reduce``; here a face's row is read once, no candidate list
is built, and no host sync sizes one. The arithmetic is ``ops._candidate_keys``'s, in its order,
with correctly rounded division and without fused multiply-adds, so keys, and face ids, are bit
for bit the tensor path's. Runs on CUDA, or anywhere under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the tensor path is used
    triton = None

__all__ = ["supports", "nearest_face_keys"]

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Pixel centres a program tests at once; a face's box is walked in blocks of this many.
BLOCK = 32


def supports(device: torch.device) -> bool:
    """Whether the kernel can run on tensors of ``device``."""
    return triton is not None and (device.type == "cuda" or _INTERPRETED)


if triton is not None:

    @triton.jit
    def _nearest_keys_kernel(table_ptr, box_ptr, best_ptr, num_faces, H, W, BLOCK: tl.constexpr):
        face = tl.program_id(0).to(tl.int64)
        box = box_ptr + face * 4
        col0, row0, width, height = tl.load(box), tl.load(box + 1), tl.load(box + 2), tl.load(box + 3)
        row = table_ptr + face * 16
        a0, b0, c0 = tl.load(row), tl.load(row + 1), tl.load(row + 2)
        a1, b1, c1 = tl.load(row + 3), tl.load(row + 4), tl.load(row + 5)
        a2, b2, c2 = tl.load(row + 6), tl.load(row + 7), tl.load(row + 8)
        own0, own1, own2 = tl.load(row + 9), tl.load(row + 10), tl.load(row + 11)
        iw0, iw1, iw2, inv_area = tl.load(row + 12), tl.load(row + 13), tl.load(row + 14), tl.load(row + 15)
        image = (face // num_faces) * H * W
        local = face % num_faces
        count = width * height
        for start in range(0, count, BLOCK):
            offset = start + tl.arange(0, BLOCK)
            inside_box = offset < count
            r = row0 + offset // tl.maximum(width, 1)
            c = col0 + offset % tl.maximum(width, 1)
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


def nearest_face_keys(table: torch.Tensor, first: torch.Tensor, size: torch.Tensor, best: torch.Tensor,
                      num_faces: int, resolution: tuple[int, int]) -> None:  # fmt: skip
    """Lower ``best [B * H * W]`` (int64 keys) to each pixel's nearest covering face.

    ``table [B * F, 16]``: ``ops._visible_faces``'s edge table; ``first``, ``size``: the faces'
    pixel boxes (``_binning.pixel_boxes``)."""
    boxes = torch.cat([first, size], dim=1).to(torch.int32).contiguous()
    H, W = resolution
    _nearest_keys_kernel[(boxes.shape[0],)](
        table.contiguous(), boxes, best, num_faces, H, W, BLOCK=BLOCK, enable_fp_fusion=False
    )
