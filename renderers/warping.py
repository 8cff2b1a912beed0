"""Photometric warping for structure from motion: depth + relative pose → warped image.

Images are channels-first ``[B, C, H, W]``; frames are those of :mod:`renderloop.renderers.cameras`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from renderloop.checks import check_shape

from .cameras import pixel_grid, pixel_to_camera

__all__ = ["pose_to_rt", "warp"]


def pose_to_rt(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 6]`` (axis-angle, translation) egomotion → ``(R [B, 3, 3], t [B, 3])``."""
    check_shape("pose_to_rt", "pose", pose, ("B", 6))
    return axis_angle_to_rotation_matrix(pose[:, :3]), pose[:, 3:]


def warp(
    source: torch.Tensor, target_depth: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a ``source`` image into the target view (inverse warping).

    Each target pixel centre is unprojected with ``target_depth``, moved into the source camera by
    ``x_src = R @ x_tgt + t`` and projected with ``K``; the source is sampled there bilinearly.

    Args:
        source: ``[B, C, H, W]`` source-view image.
        target_depth: ``[B, H, W]`` target-view depth (> 0 where valid).
        K: ``[B, 3, 3]`` intrinsics shared by both views.
        R, t: ``[B, 3, 3]``, ``[B, 3]`` target→source rigid transform.

    Returns:
        ``(warped [B, C, H, W], valid [B, 1, H, W])``: ``valid`` is 1 where the target depth is
        positive, the point lies in front of the source camera and projects inside the source image.
        Differentiable w.r.t. ``source``, ``target_depth``, ``R`` and ``t``.
    """
    check_shape("warp", "source", source, ("B", None, ">0", ">0"))
    B, _, H, W = source.shape
    check_shape("warp", "target_depth", target_depth, (B, H, W))
    check_shape("warp", "K", K, (B, 3, 3))
    check_shape("warp", "R", R, (B, 3, 3))
    check_shape("warp", "t", t, (B, 3))
    uv = pixel_grid(H, W, dtype=source.dtype, device=source.device).expand(B, H, W, 2)
    points = pixel_to_camera(uv, target_depth, K).view(B, -1, 3) @ R.transpose(1, 2) + t.unsqueeze(1)
    z = points[..., 2]
    safe_z = torch.where(z > 1e-6, z, torch.ones_like(z))
    proj = points @ K.transpose(1, 2)
    u, v = proj[..., 0] / safe_z, proj[..., 1] / safe_z
    # Pixel frame → grid_sample's [-1, 1] (align_corners=False puts -1 on the image's left edge).
    grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], dim=-1).view(B, H, W, 2)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (u >= 0) & (u <= W) & (v >= 0) & (v <= H) & (z > 1e-6) & (target_depth.view(B, -1) > 0)
    return warped, inside.view(B, 1, H, W).to(source.dtype)
