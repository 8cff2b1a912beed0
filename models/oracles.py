"""The oracles' networks: a per-pixel part segmenter and a viewpoint regressor.

They stand in for the person or off-the-shelf parser the GAN methods' papers rely on (annotating
parts, labelling view codes, masking objects), trained on simulator labels instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartSegmenter", "ViewpointRegressor"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )  # fmt: skip


class PartSegmenter(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] → logits ``[B, 1 + parts, H, W]`` (class 0: background).

    A small U-Net: ``levels`` downsamplings, skip connections at each scale. ``features`` gives
    the deepest encoder features, which the GAN foundation reuses as a fixed image encoder."""

    def __init__(self, parts: int, width: int = 32, levels: int = 3) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(levels + 1)]
        pairs = list(zip(widths, widths[1:], strict=False))
        self.down = nn.ModuleList([_block(3, widths[0])] + [_block(a, b) for a, b in pairs])
        self.up = nn.ModuleList([_block(b + a, a) for a, b in pairs])
        self.head = nn.Conv2d(widths[0], 1 + parts, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x * 2 - 1 if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.features(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(x)


class ViewpointRegressor(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] → ``[B, 3]``: cos and sin of the azimuth (unnormalized) and
    the elevation in radians. Predicting the azimuth as a vector keeps 359° next to 1°."""

    def __init__(self, width: int = 32, levels: int = 4) -> None:
        super().__init__()
        layers, cin = [], 3
        for i in range(levels):
            cout = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, 128), nn.SiLU(), nn.Linear(128, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).mean((2, 3)))

    @staticmethod
    def angles(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Azimuth in [0, 2π) and elevation (radians) from a forward output."""
        return torch.atan2(output[:, 1], output[:, 0]) % (2 * torch.pi), output[:, 2]
