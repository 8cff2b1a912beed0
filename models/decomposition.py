"""An image's photo-geometric decomposition, as in Unsup3d and GAN2Shape: canonical depth, albedo,
viewpoint and light, each from its own network, squashed into the ranges that the depth-map
renderer (``renderers/depth_map.py``) takes. Also the ellipsoid shape prior that GAN2Shape
starts its depth from, placed by an object mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decomposition", "Encoder", "EncoderDecoder", "ellipsoid_depth"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 16), channels)  # up to 16 groups that divide the channels


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), _norm(cout), nn.ReLU())


def _levels(resolution: int) -> int:
    """Halvings from ``resolution`` to 4 × 4 (a power of two ≥ 8)."""
    levels = int(math.log2(resolution)) - 2
    if resolution < 8 or 4 * 2**levels != resolution:
        raise ValueError(f"resolution must be a power of two >= 8; got {resolution}")
    return levels


class Encoder(nn.Module):
    """``[B, 3, S, S]`` → ``[B, cout]``: strided convolutions down to 4 × 4, then a 4 × 4 convolution."""

    def __init__(self, resolution: int, cout: int, width: int = 32, zdim: int = 256) -> None:
        super().__init__()
        widths = [min(width * 2**i, zdim) for i in range(_levels(resolution))]
        layers, cin = [], 3
        for w in widths:
            layers.append(_down(cin, w))
            cin = w
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, zdim, 4), nn.ReLU(), nn.Conv2d(zdim, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1).flatten(1)


class EncoderDecoder(nn.Module):
    """``[B, 3, S, S]`` → ``[B, cout, S, S]`` through a ``zdim`` code (no skips: the map is made from
    the code alone, which keeps depth and albedo smooth)."""

    def __init__(self, resolution: int, cout: int, width: int = 32, zdim: int = 256) -> None:
        super().__init__()
        self.encode = Encoder(resolution, zdim, width, zdim)
        widths = [min(width * 2**i, zdim) for i in range(_levels(resolution))][::-1]
        layers: list[nn.Module] = [nn.ConvTranspose2d(zdim, widths[0], 4), nn.ReLU()]  # 1 × 1 → 4 × 4
        cin = widths[0]
        for w in widths:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, w, 3, padding=1),
                       _norm(w), nn.ReLU()]  # fmt: skip
            cin = w
        self.decode = nn.Sequential(*layers, nn.Conv2d(cin, cout, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[:, :, None, None])


class Decomposition(nn.Module):
    """Depth, albedo, view and light networks for one resolution, outputs already in range.

    The view and light networks start at zero output (the canonical view, a light from the camera):
    a randomly initialized view net turns each image by 10-20° about every axis, which the phases
    that train only depth or albedo would then bake into them.

    Args:
        min_depth, max_depth: the canonical depth's range (the object sits around their middle).
        rotation_deg: each Euler angle of the view within ± this.
        translation: x and y of the view's translation within ± this (z stays 0, as the papers fix it).
    """

    def __init__(self, resolution: int, width: int = 32, zdim: int = 256, min_depth: float = 0.9,
                 max_depth: float = 1.1, rotation_deg: float = 60.0, translation: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth; got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = min_depth, max_depth
        self.rotation, self.translation = math.radians(rotation_deg), translation
        self.depth_net = EncoderDecoder(resolution, 1, width, zdim)
        self.albedo_net = EncoderDecoder(resolution, 3, width, zdim)
        self.view_net = Encoder(resolution, 6, width, zdim)
        self.light_net = Encoder(resolution, 4, width, zdim)
        for head in (self.view_net.net[-1], self.light_net.net[-1]):
            nn.init.zeros_(head.weight)  # start at the canonical view and a frontal light, for every image
            nn.init.zeros_(head.bias)

    def depth(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, H, W]`` canonical depth in ``[min_depth, max_depth]``.

        As in Unsup3d, the raw map is centred before the squashing, so the network shapes the
        surface rather than moving it as a whole (which would only change the perspective), and
        the two outermost columns on each side are held at the background's depth (70% of the way
        to ``max_depth``)."""
        raw = self.depth_net(image)[:, 0]
        unit = (torch.tanh(raw - raw.mean((1, 2), keepdim=True)) + 1) / 2
        depth = self.min_depth + (self.max_depth - self.min_depth) * unit
        border = torch.zeros_like(depth[:1])
        border[..., :2], border[..., -2:] = 1.0, 1.0
        return torch.lerp(depth, torch.full_like(depth, 0.3 * self.min_depth + 0.7 * self.max_depth), border)

    def albedo(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1]."""
        return (torch.tanh(self.albedo_net(image)) + 1) / 2

    def view(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler angles ``[B, 3]`` (radians) and translation ``[B, 3]`` from the canonical view."""
        v = torch.tanh(self.view_net(image))
        translation = torch.cat([v[:, 3:5] * self.translation, torch.zeros_like(v[:, 5:])], 1)
        return v[:, :3] * self.rotation, translation

    def light(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ambient ``[B]`` and diffuse ``[B]`` in [0, 1], and the unit direction towards the light
        ``[B, 3]`` on the camera's side (``z < 0``, the frame of ``render_depth_map``)."""
        light = torch.tanh(self.light_net(image))
        xy = light[:, 2:]
        direction = F.normalize(torch.cat([xy, -torch.ones_like(xy[:, :1])], 1), dim=1)
        return (light[:, 0] + 1) / 2, (light[:, 1] + 1) / 2, direction


def ellipsoid_depth(mask: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """A half-ellipsoid bulging towards the camera inside each mask's bounding box (``[B, H, W]``,
    bool): ``far`` at the box's border and outside, ``near`` at its centre, so its axes are the box's
    half-sizes. An empty mask gives ``far`` everywhere."""
    B, H, W = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    grid = torch.arange(max(H, W), device=mask.device, dtype=torch.float32)

    def extent(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and half-size of the hit pixels (+0.5: a one-pixel box has half-size 0.5)."""
        lo = hits.float().argmax(1).float()
        hi = hits.shape[1] - 1 - hits.flip(1).float().argmax(1).float()
        return (lo + hi) / 2, (hi - lo) / 2 + 0.5

    cy, hy = extent(rows)
    cx, hx = extent(cols)
    v = (grid[:H].view(1, H, 1) - cy.view(B, 1, 1)) / hy.view(B, 1, 1)
    u = (grid[:W].view(1, 1, W) - cx.view(B, 1, 1)) / hx.view(B, 1, 1)
    inside = (1 - u**2 - v**2).clamp_min(0)
    depth = far - (far - near) * inside.sqrt()
    return torch.where(mask.flatten(1).any(1).view(B, 1, 1), depth, torch.full_like(depth, far))
