"""Keypoint projector (AIGN): PCA shape basis + rotation + camera → 2D keypoints and heatmaps.

A 3D skeleton of ``J`` joints is ``mean + coeffs @ components`` reshaped to ``[J, 3]``; it is
rotated and placed in front of a pinhole camera (frames of :mod:`renderloop.renderers.cameras`)
and projected to pixels. The basis is learnt from a memory of ground-truth skeletons by
:func:`fit_pca`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renderloop.checks import check_finite, check_shape

from .cameras import pixel_grid

__all__ = ["PCABasis", "fit_pca", "compose_shape", "project_points", "project_keypoints", "gaussian_heatmaps"]


@dataclass(frozen=True)
class PCABasis:
    """A linear shape model.

    Attributes:
        mean: ``[J * 3]`` mean shape (flattened ``[J, 3]``).
        components: ``[k, J * 3]`` orthonormal principal directions, largest variance first.
        stddev: ``[k]`` standard deviation of the data along each component.
    """

    mean: torch.Tensor
    components: torch.Tensor
    stddev: torch.Tensor

    @property
    def num_joints(self) -> int:
        return self.mean.numel() // 3

    def to(self, *args, **kwargs) -> PCABasis:
        return PCABasis(*(x.to(*args, **kwargs) for x in (self.mean, self.components, self.stddev)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components, "stddev": self.stddev}


def fit_pca(shapes: torch.Tensor, num_components: int) -> PCABasis:
    """Fit a PCA basis to ``shapes [N, J, 3]`` keeping ``num_components`` (≤ min(N, 3J)) directions."""
    check_shape("fit_pca", "shapes", shapes, (">0", ">0", 3))
    check_finite("fit_pca", "shapes", shapes)
    flat = shapes.reshape(shapes.shape[0], -1)
    if not 0 < num_components <= min(flat.shape):
        raise ValueError(f"fit_pca(): num_components must be in [1, {min(flat.shape)}]; got {num_components}")
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    stddev = s[:num_components] / max(flat.shape[0] - 1, 1) ** 0.5
    return PCABasis(mean, vh[:num_components], stddev)


def compose_shape(coeffs: torch.Tensor, basis: PCABasis) -> torch.Tensor:
    """3D shapes ``[B, J, 3]`` from basis coefficients ``[B, k]``."""
    check_shape("compose_shape", "coeffs", coeffs, ("B", basis.components.shape[0]))
    return (basis.mean + coeffs @ basis.components).view(coeffs.shape[0], -1, 3)


def project_points(points: torch.Tensor, focal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-space ``points [B, J, 3]`` to pixels ``[B, J, 2]``.

    ``focal`` is ``[B]`` or ``[B, 2]`` (fx, fy) and ``center`` is ``[B, 2]`` (cx, cy), in pixels.
    """
    check_shape("project_points", "points", points, ("B", None, 3))
    check_shape("project_points", "center", center, (points.shape[0], 2))
    focal = focal.unsqueeze(-1).expand(-1, 2) if focal.dim() == 1 else focal
    check_shape("project_points", "focal", focal, (points.shape[0], 2))
    return focal.unsqueeze(1) * points[..., :2] / points[..., 2:3] + center.unsqueeze(1)


def project_keypoints(
    coeffs: torch.Tensor,
    basis: PCABasis,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal: torch.Tensor,
    center: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose, pose and project a skeleton.

    Args:
        coeffs: ``[B, k]`` PCA coefficients.
        basis: the shape model.
        rotation: ``[B, 3, 3]`` object→camera rotation.
        translation: ``[B, 3]`` object origin in the camera frame (``z > 0``).
        focal, center: see :func:`project_points`.

    Returns:
        ``(kp2d [B, J, 2] pixels, kp3d [B, J, 3] camera frame)``.
    """
    check_shape("project_keypoints", "rotation", rotation, (coeffs.shape[0], 3, 3))
    check_shape("project_keypoints", "translation", translation, (coeffs.shape[0], 3))
    kp3d = compose_shape(coeffs, basis) @ rotation.transpose(1, 2) + translation.unsqueeze(1)
    return project_points(kp3d, focal, center), kp3d


def gaussian_heatmaps(kp2d: torch.Tensor, resolution: tuple[int, int], sigma: float = 2.0) -> torch.Tensor:
    """Heatmaps ``[B, J, H, W]`` with an unnormalised Gaussian (peak 1) of std ``sigma`` pixels at
    each keypoint ``kp2d [B, J, 2]``, evaluated at pixel centres."""
    check_shape("gaussian_heatmaps", "kp2d", kp2d, ("B", None, 2))
    if not sigma > 0:
        raise ValueError(f"gaussian_heatmaps(): sigma must be > 0; got {sigma}")
    grid = pixel_grid(*resolution, dtype=kp2d.dtype, device=kp2d.device)  # (H, W, 2)
    d2 = ((grid[None, None] - kp2d[:, :, None, None, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * sigma**2))
