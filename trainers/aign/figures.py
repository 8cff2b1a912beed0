"""Figures of AIGN's evaluations: skeleton drawings and input / prediction / ground-truth grids."""

from __future__ import annotations

from pathlib import Path

import torch

from renderloop.images import image_grid, save_png

__all__ = ["draw_skeletons", "skeleton_images", "save_pose_figure", "save_rows"]


def _parents(joints: int) -> list[int]:
    from renderloop.datasets.mocap import COMMON_JOINTS, COMMON_PARENTS

    return list(COMMON_PARENTS) if joints == len(COMMON_JOINTS) else [-1] * joints


def draw_skeletons(points: torch.Tensor, size: int = 96, color=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Draw 2D skeletons ``[N, J, 2]`` (any units; each is fit into the frame, y down) as
    ``[N, 3, size, size]`` images: bones of the common skeleton as dotted lines, joints as dots."""
    n, joints, _ = points.shape
    pts = points.detach().float().cpu()
    lo, hi = pts.amin(1, keepdim=True), pts.amax(1, keepdim=True)
    centre, extent = (lo + hi) / 2, (hi - lo).amax(-1, keepdim=True).clamp_min(1e-6)
    pix = (pts - centre) / extent * (0.8 * size) + size / 2  # (N, J, 2)
    parents = _parents(joints)
    segments = [(j, p) for j, p in enumerate(parents) if p >= 0]
    t = torch.linspace(0, 1, 2 * size).view(1, -1, 1)
    dots = [pix]
    for j, p in segments:
        dots.append(pix[:, j : j + 1] * (1 - t) + pix[:, p : p + 1] * t)  # (N, 2·size, 2)
    dots = torch.cat(dots, 1).round().long().clamp(0, size - 1)
    canvas = torch.zeros(n, 3, size, size)
    flat = dots[..., 1] * size + dots[..., 0]  # (N, M)
    for c in range(3):
        canvas[:, c].view(n, -1).scatter_(1, flat, color[c])
    return canvas


def skeleton_images(posed: torch.Tensor) -> torch.Tensor:
    """Front (x, y) and side (z, y) views of root-relative camera-space poses ``[N, J, 3]``."""
    front = draw_skeletons(posed[..., [0, 1]])
    side = draw_skeletons(posed[..., [2, 1]], color=(0.6, 0.8, 1.0))
    return torch.cat([front, side], -1)


def save_pose_figure(kp2d: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor, path: Path, rows: int) -> Path:
    """One row per example: 2D input | predicted 3D (front, side) | ground truth 3D (front, side)."""
    rows = min(rows, len(kp2d))
    tiles = torch.cat(
        [draw_skeletons(kp2d[:rows]), skeleton_images(pred[:rows]), skeleton_images(truth[:rows])], -1
    )  # (rows, 3, H, 5W)
    return save_png(image_grid(tiles, columns=1), path)


def save_rows(columns: list[torch.Tensor], path: Path, rows: int) -> Path:
    """One row per example, one column per ``[N, C, H, W]`` tensor (resized to the first's size)."""
    size = columns[0].shape[-2:]
    tiles = [
        torch.nn.functional.interpolate(c[:rows].float().cpu(), size=size, mode="nearest").expand(-1, 3, -1, -1)
        for c in columns
    ]
    return save_png(image_grid(torch.cat(tiles, -1), columns=1), path)
