"""Depth scores of Unsup3d and GAN2Shape, against true depth over a valid mask.

SIDE, the scale-invariant depth error: the standard deviation over the mask of
``log(pred) - log(true)`` (a global scale of ``pred`` shifts the log difference and leaves it
unchanged); the papers print it ×10⁻². MAD, the mean angle (degrees) between the normals of the
two depth maps, each unprojected with its own intrinsics; a global scale of a depth map leaves
its normals unchanged. Both score the mask's interior, as Unsup3d does: a pixel counts when its
3 × 3 neighbourhood is valid, so no normal is taken across the object's edge (where a depth map
drops to the background's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from renderloop.renderers.depth_map import depth_to_normals

__all__ = ["side", "mad", "log_depth_variance", "interior"]


def _check(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if pred.shape != true.shape or pred.shape != mask.shape or pred.dim() != 3:
        raise ValueError(f"pred, true and mask must share one shape [B, H, W]; got "
                         f"{tuple(pred.shape)}, {tuple(true.shape)}, {tuple(mask.shape)}")  # fmt: skip
    valid = interior(mask.bool() & (pred > 0) & (true > 0))
    if not valid.flatten(1).any(1).all():
        raise ValueError("every image needs at least one valid pixel (mask, positive depths, its 3 × 3 neighbours too)")
    return valid


def interior(mask: torch.Tensor) -> torch.Tensor:
    """``mask [B, H, W]`` eroded by a 3 × 3 square (the image's border counts as outside)."""
    return F.avg_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 1 - 1e-6


def log_depth_variance(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: the variance of ``log pred - log true`` over ``mask`` (SIDE², differentiable
    in ``pred``: the supervised ceiling's loss)."""
    m = mask.float()
    diff = (pred.clamp_min(1e-8).log() - true.clamp_min(1e-8).log()) * m
    n = m.sum((1, 2)).clamp_min(1)
    centred = (diff - (diff.sum((1, 2)) / n).view(-1, 1, 1)) * m
    return centred.square().sum((1, 2)) / n


def side(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-invariant depth error per image ``[B]`` (not yet ×10²) over ``mask [B, H, W]``."""
    return log_depth_variance(pred, true, _check(pred, true, mask)).sqrt()


def mad(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, K_pred: torch.Tensor,
        K_true: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mean angle in degrees ``[B]`` between the normals of ``pred`` and ``true`` over ``mask``."""
    valid = _check(pred, true, mask).float()
    n_pred = depth_to_normals(pred, K_pred)
    n_true = depth_to_normals(true, K_pred if K_true is None else K_true)
    cos = (n_pred * n_true).sum(-1).clamp(-1, 1)
    return (torch.rad2deg(torch.acos(cos)) * valid).sum((1, 2)) / valid.sum((1, 2))
