"""Scores shared by evaluations: segmentation IoU over a dataset and angle errors."""

from __future__ import annotations

import math

import torch

__all__ = ["confusion", "class_iou", "angle_error_deg"]


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``[classes, classes]`` counts of (target, predicted) label pairs; add them up over batches."""
    index = target.reshape(-1).long() * classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=classes * classes).view(classes, classes).cpu()


def class_iou(counts: torch.Tensor) -> torch.Tensor:
    """IoU per class from dataset-level confusion counts (NaN for a class absent from both)."""
    counts = counts.double()
    hits = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - hits
    return torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, math.nan))


def angle_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute difference of angles in radians, wrapped to [0°, 180°]."""
    diff = torch.remainder(pred - target + math.pi, 2 * math.pi) - math.pi
    return diff.abs() * 180 / math.pi
