"""Image grids and PNG files for logs and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["image_grid", "save_png"]


def image_grid(images: torch.Tensor, columns: int = 8, pad: int = 2) -> torch.Tensor:
    """Tile ``images`` ``[N, C, H, W]`` (C = 1 or 3) into one ``[3, rows*(H+pad)+pad, ...]`` image."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    columns = max(min(columns, n), 1)
    rows = (n + columns - 1) // columns
    grid = torch.ones(3, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``[3, H, W]`` image in ``[0, 1]`` as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path
