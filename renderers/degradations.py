"""Degradation operators (AIGN super-resolution and inpainting). Images are ``[B, C, H, W]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from renderloop.checks import check_shape

__all__ = ["downsample", "random_box_masks", "apply_mask"]


def downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool ``image [B, C, H, W]`` by an integer ``factor`` dividing ``H`` and ``W``."""
    check_shape("downsample", "image", image, ("B", None, ">0", ">0"))
    H, W = image.shape[-2:]
    if factor < 1 or H % factor or W % factor:
        raise ValueError(f"downsample(): factor must be a positive divisor of H={H} and W={W}; got {factor}")
    return F.avg_pool2d(image, factor)


def random_box_masks(
    batch: int,
    resolution: tuple[int, int],
    box_fraction: tuple[float, float] = (0.25, 0.5),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Masks ``[batch, 1, H, W]``: 1 = kept, 0 = one missing axis-aligned box per item.

    Box sides are drawn uniformly in ``box_fraction`` of the image side, positions uniformly. The
    masks are built on ``device``; without a ``generator`` (a CPU one, for repeatable draws) the
    draws are made there too, so a training step neither works on nor copies from the host.
    """
    lo, hi = box_fraction
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"random_box_masks(): box_fraction must satisfy 0 < lo <= hi <= 1; got {box_fraction}")
    H, W = resolution
    if generator is None:
        r = torch.rand(batch, 4, device=device)
    else:
        r = torch.rand(batch, 4, generator=generator).to(device)
    sides = torch.tensor([H, W], dtype=r.dtype, device=r.device)
    size = (lo + (hi - lo) * r[:, :2]) * sides
    start = r[:, 2:] * (sides - size)
    rows = torch.arange(H, device=r.device).view(1, H, 1) + 0.5
    cols = torch.arange(W, device=r.device).view(1, 1, W) + 0.5
    inside = (
        (rows >= start[:, 0, None, None])
        & (rows < (start[:, 0] + size[:, 0])[:, None, None])
        & (cols >= start[:, 1, None, None])
        & (cols < (start[:, 1] + size[:, 1])[:, None, None])
    )
    return (~inside).float().unsqueeze(1)


def apply_mask(image: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Keep ``image`` where ``mask`` is 1 and put ``fill`` where it is 0; ``mask`` is ``[B, 1, H, W]``."""
    check_shape("apply_mask", "mask", mask, (image.shape[0], 1, image.shape[2], image.shape[3]))
    return image * mask + fill * (1 - mask)
