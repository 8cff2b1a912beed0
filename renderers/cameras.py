"""Cameras: the one place that defines renderloop's frames and axes.

Frames
------
* **World**: right-handed, +y up.
* **Camera** (OpenCV convention): +x right, +y down, +z forward (the viewing direction).
  ``x_cam = R @ x_world + t``; depth is the camera-space ``z`` and is positive in front.
* **Pixel**: continuous coordinates ``(u, v)`` with the image's top-left *corner* at ``(0, 0)``,
  ``u`` to the right and ``v`` down; the centre of pixel ``[row i, col j]`` is ``(j + 0.5, i + 0.5)``.
  Intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` map camera space to this frame, so a
  centred principal point is ``(W / 2, H / 2)``.
* **Clip**: homogeneous ``(x, y, z, w)`` with ``w`` = camera depth and normalised device
  coordinates ``x / w, y / w`` in ``[-1, 1]`` across the image (``-1`` at the left / top edge),
  ``z / w`` in ``[-1, 1]`` between the near and far planes.

Rotations are world→camera; ``look_at`` and ``orbit`` build them. Azimuth turns about world +y
(0 looks at the object from +z), elevation lifts the camera towards +y.
"""

from __future__ import annotations

import math

import torch

from renderloop.checks import check_shape

__all__ = [
    "look_at",
    "orbit_eye",
    "orbit_camera",
    "intrinsics",
    "fov_intrinsics",
    "world_to_camera",
    "camera_to_pixel",
    "pixel_to_camera",
    "camera_to_clip",
    "clip_to_pixel",
    "pixel_grid",
]


def look_at(eye: torch.Tensor, at: torch.Tensor, up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """World→camera rotation and translation of cameras at ``eye`` looking at ``at``.

    Args:
        eye: camera centres, ``[B, 3]`` world frame.
        at: points looked at, ``[B, 3]`` or ``[3]``.
        up: world up, ``[B, 3]`` or ``[3]``; default ``+y``. Must not be parallel to ``at - eye``.

    Returns:
        ``(R, t)``: ``[B, 3, 3]`` and ``[B, 3]`` with ``x_cam = R @ x_world + t``.
    """
    check_shape("look_at", "eye", eye, ("B", 3))
    at = at.expand_as(eye).to(eye)
    up = (eye.new_tensor([0.0, 1.0, 0.0]) if up is None else up.to(eye)).expand_as(eye)
    forward = torch.nn.functional.normalize(at - eye, dim=-1)  # camera +z
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)  # camera +x
    down = torch.cross(forward, right, dim=-1)  # camera +y (image rows grow downward)
    R = torch.stack([right, down, forward], dim=1)  # rows are the camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    return R, t


def orbit_eye(azimuth: torch.Tensor, elevation: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Camera centres on a sphere about the origin; angles in radians, each ``[B]``. Returns ``[B, 3]``."""
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
            distance * torch.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )


def orbit_camera(
    azimuth: torch.Tensor, elevation: torch.Tensor, distance: torch.Tensor, at: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, t)`` of cameras orbiting ``at`` (default origin) and looking at it; angles in radians, ``[B]``."""
    eye = orbit_eye(azimuth, elevation, distance)
    at = eye.new_zeros(3) if at is None else at.to(eye)
    return look_at(eye + at, at)


def intrinsics(fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Pinhole matrices ``[B, 3, 3]`` from per-camera ``[B]`` focal lengths and principal points (pixels)."""
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], dim=-1).view(-1, 3, 3)


def fov_intrinsics(fov_deg: float, height: int, width: int, batch: int = 1, **like) -> torch.Tensor:
    """``[batch, 3, 3]`` intrinsics with vertical field of view ``fov_deg``, square pixels, centred."""
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    ones = torch.ones(batch, **like)
    return intrinsics(f * ones, f * ones, 0.5 * width * ones, 0.5 * height * ones)


def world_to_camera(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``[B, N, 3]`` world points → camera frame, given ``R [B, 3, 3]`` and ``t [B, 3]``."""
    check_shape("world_to_camera", "points", points, ("B", None, 3))
    return points @ R.transpose(1, 2) + t.unsqueeze(1)


def camera_to_pixel(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``[B, N, 3]`` camera points → ``[B, N, 2]`` pixel coordinates ``(u, v)`` (perspective divide)."""
    check_shape("camera_to_pixel", "points", points, ("B", None, 3))
    uvw = points @ K.transpose(1, 2)
    return uvw[..., :2] / uvw[..., 2:3]


def pixel_to_camera(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Unproject pixels ``uv [B, ..., 2]`` at camera depth ``depth [B, ...]`` → ``[B, ..., 3]``."""
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    cx, cy = K[:, 0, 2], K[:, 1, 2]
    view = (-1,) + (1,) * (uv.dim() - 2)
    x = (uv[..., 0] - cx.view(view)) / fx.view(view) * depth
    y = (uv[..., 1] - cy.view(view)) / fy.view(view) * depth
    return torch.stack([x, y, depth], dim=-1)


def camera_to_clip(
    points: torch.Tensor, K: torch.Tensor, resolution: tuple[int, int], near: float = 0.01, far: float = 100.0
) -> torch.Tensor:
    """``[B, N, 3]`` camera points → ``[B, N, 4]`` clip coordinates for an ``(H, W)`` image."""
    check_shape("camera_to_clip", "points", points, ("B", None, 3))
    H, W = resolution
    x, y, z = points.unbind(-1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    clip_x = (2 * fx / W) * x + (2 * cx / W - 1) * z
    clip_y = (2 * fy / H) * y + (2 * cy / H - 1) * z
    clip_z = (far + near) / (far - near) * z - 2 * far * near / (far - near)
    return torch.stack([clip_x, clip_y, clip_z, z], dim=-1)


def clip_to_pixel(clip: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """``[..., 4]`` clip coordinates → ``[..., 2]`` pixel coordinates ``(u, v)`` in an ``(H, W)`` image."""
    H, W = resolution
    w = clip[..., 3]
    return torch.stack([(clip[..., 0] / w + 1) * (0.5 * W), (clip[..., 1] / w + 1) * (0.5 * H)], dim=-1)


def pixel_grid(height: int, width: int, **like) -> torch.Tensor:
    """Pixel-centre coordinates ``[H, W, 2]`` as ``(u, v) = (j + 0.5, i + 0.5)``."""
    v, u = torch.meshgrid(torch.arange(height, **like) + 0.5, torch.arange(width, **like) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)
