"""Scores shared by evaluations: segmentation IoU over a dataset and angle errors."""

from __future__ import annotations

import math

import torch

__all__ = ["confusion", "class_iou", "scored_classes", "mean_iou", "angle_error_deg"]

MIN_PART_SHARE = 1e-3
"""A part class counts in a mean IoU only with at least this share of the test set's part pixels."""


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


def scored_classes(counts: torch.Tensor, min_share: float = MIN_PART_SHARE) -> torch.Tensor:
    """``[C]`` the classes a mean IoU counts, from the true labels of confusion ``counts [..., C, C]``
    (summed over any leading axes): the background, and every part with at least ``min_share`` of
    the part pixels. A part the cameras almost never see (a vehicle's underside at 0–30° elevation:
    31 of about 730,000 part pixels in 500 test renders) scores 0 for every model, however good,
    and would only shrink every mean."""
    truth = counts.reshape(-1, *counts.shape[-2:]).sum(0).sum(1).double()
    parts = truth[1:]
    return torch.cat([torch.ones(1, dtype=torch.bool), parts >= min_share * parts.sum().clamp_min(1)])


def mean_iou(counts: torch.Tensor, scored: torch.Tensor, background: bool) -> float:
    """Mean IoU over the ``scored`` classes of ``counts [C, C]``, with or without class 0."""
    keep = scored.clone()
    keep[0] = background
    return float(class_iou(counts)[keep].nanmean())


def angle_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute difference of angles in radians, wrapped to [0°, 180°]."""
    diff = torch.remainder(pred - target + math.pi, 2 * math.pi) - math.pi
    return diff.abs() * 180 / math.pi
