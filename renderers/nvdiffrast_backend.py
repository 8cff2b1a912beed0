"""The ``nvdiffrast`` renderer backend: nvdiffrast's CUDA rasterizer behind ``ops.rasterize``'s API.

renderloop's clip space is nvdiffrast's: ``x / w = -1`` at the image's left edge and
``y / w = -1`` at its first row, so clip coordinates pass unchanged and image rows agree.
nvdiffrast clips triangles at the near plane where ``ops.rasterize`` culls them; it is given only
the faces ours draws, every batch item its own list (range mode, where triangle ids index the
whole list). Its ``(u, v)`` are the perspective-correct barycentrics of corners 0 and 1,
differentiable w.r.t. the clip coordinates. One ``RasterizeCudaContext`` per device is built on
first use and reused. Importing this module registers the backend.
"""

from __future__ import annotations

import torch
from nvdiffrast import torch as dr

from .backends import library_backend, register_backend

_CONTEXTS: dict[torch.device, object] = {}
INT32_MAX = 2**31 - 1


def check_limits(batch: int, num_verts: int, num_faces: int) -> None:
    """Refuse, before any kernel, a batch whose vertex or triangle indices overflow nvdiffrast's int32."""
    for what, count in (("vertices", batch * num_verts), ("faces", batch * num_faces)):
        if count > INT32_MAX:
            raise ValueError(
                f"rasterize(): the nvdiffrast backend indexes the batch's {what} with int32, and this batch has "
                f"{count:,}; render it in smaller batches or use renderer.backend=torch"
            )


def _context(device: torch.device):
    if device not in _CONTEXTS:
        _CONTEXTS[device] = dr.RasterizeCudaContext(device=device)
    return _CONTEXTS[device]


def _visible(clip_pos: torch.Tensor, faces: torch.Tensor, drawn: torch.Tensor, resolution: tuple[int, int]):
    B, V = clip_pos.shape[:2]
    check_limits(B, V, faces.shape[1])
    item, local = drawn.nonzero(as_tuple=True)  # item-major: each item's faces are one range
    triangles = (faces[item, local] + V * item[:, None]).int().contiguous()
    counts = drawn.sum(1)
    ranges = torch.stack([counts.cumsum(0) - counts, counts], 1).int().cpu()
    positions = clip_pos.reshape(B * V, 4).float().contiguous()
    rast, _ = dr.rasterize(_context(clip_pos.device), positions, triangles, resolution=list(resolution), ranges=ranges)
    triangle = rast[..., 3].long() - 1  # -1: no triangle
    covered = triangle >= 0
    face_id = torch.where(covered, local[triangle.clamp(min=0)], -1)
    u, v = rast[..., 0], rast[..., 1]
    return face_id, torch.where(covered[..., None], torch.stack([u, v, 1 - u - v], -1), 0.0)


register_backend(library_backend("nvdiffrast", _visible))
