"""Scene builders and a dense reference rasterizer shared by renderer tests and benchmarks."""

from __future__ import annotations

import math

import torch

from renderloop.renderers import cameras
from renderloop.renderers.meshes import icosphere


def pixels_to_clip(xy: torch.Tensor, resolution: tuple[int, int], w: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Clip coordinates ``[..., 4]`` that land on pixel positions ``xy [..., 2]`` at depth ``w``."""
    H, W = resolution
    w = torch.as_tensor(w, dtype=xy.dtype).expand(xy.shape[:-1])
    x = (xy[..., 0] / W * 2 - 1) * w
    y = (xy[..., 1] / H * 2 - 1) * w
    return torch.stack([x, y, torch.zeros_like(x), w], dim=-1)


def orbit_scene(batch: int, resolution: tuple[int, int], subdivisions: int = 3, dtype=torch.float32, device="cpu"):
    """A unit icosphere seen by ``batch`` cameras around it: (verts [B, V, 3], faces, R, t, K)."""
    mesh = icosphere(subdivisions, dtype=dtype).to(device)
    az = torch.linspace(0, 2 * math.pi, batch + 1, dtype=dtype, device=device)[:-1]
    R, t = cameras.orbit_camera(az, torch.full_like(az, 0.4), torch.full_like(az, 3.0))
    K = cameras.fov_intrinsics(40.0, *resolution, batch=batch, dtype=dtype, device=device)
    return mesh.verts.expand(batch, -1, -1), mesh.faces, R, t, K


def reference_face_ids(clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Dense pixels × faces reference (no binning, no tie rule): nearest face whose interior
    strictly contains the pixel centre; pixels on an edge are left out of the comparison by callers."""
    H, W = resolution
    xy = cameras.clip_to_pixel(clip_pos[:, faces], resolution)  # (B, F, 3, 2)
    w = clip_pos[:, faces][..., 3]
    p = cameras.pixel_grid(H, W, dtype=clip_pos.dtype).view(1, -1, 1, 1, 2)  # (1, P, 1, 1, 2)
    a, b = xy[:, None, :, [1, 2, 0]], xy[:, None, :, [2, 0, 1]]
    edge = (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])
    area = edge.sum(-1, keepdim=True)
    inside = ((edge * area.sign()) > 0).all(-1) & (area.squeeze(-1) != 0)
    depth = area.squeeze(-1).abs() / (edge.abs() / w[:, None]).sum(-1)
    depth = torch.where(inside, depth, torch.full_like(depth, float("inf")))
    best = depth.argmin(-1)
    return torch.where(inside.any(-1), best, -1).view(-1, H, W)
