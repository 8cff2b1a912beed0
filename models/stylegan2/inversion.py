"""Images → W latents of a frozen generator, a whole batch at once (GAN inversion).

Each image gets its own latent, optimized with Adam from the generator's average latent to
reproduce the image through the synthesis network (constant noise): mean squared error on the
pixels, plus an optional feature distance (any encoder the caller declares, e.g. the
discriminator's features). Adam updates every element on its own, so the images of a batch are
inverted independently, as if one at a time; the batch only shares the passes. ``space="w"``
optimizes one latent per image broadcast to every layer; ``"w+"``, one per layer (closer fits,
further from the generator's distribution).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .networks import Generator

__all__ = ["Inversion", "invert", "psnr"]


@dataclass
class Inversion:
    ws: torch.Tensor
    """``[B, num_ws, w_dim]``: the latents (the same row on every layer for ``space="w"``)."""
    images: torch.Tensor
    """``[B, C, H, W]`` in [0, 1]: what the generator makes of them."""
    psnr: torch.Tensor
    """``[B]`` dB of each reconstruction against its target (peak 1)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, ...]`` images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def _average_w(G: Generator, samples: int = 512, seed: int = 0) -> torch.Tensor:
    """The generator's tracked ``w_avg``, or (an untrained or converted one without it) the mean
    of ``samples`` mapped latents."""
    if G.mapping.w_avg.abs().sum() > 0:
        return G.mapping.w_avg.detach().clone()
    device = G.mapping.w_avg.device
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        return G.mapping(z)[:, 0].mean(0)


def invert(
    G: Generator,
    images: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 0.05,
    space: str = "w",
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    feature_weight: float = 1.0,
) -> Inversion:
    """Latents whose images reproduce ``images`` (``[B, C, H, W]`` in [0, 1], the generator's size).

    The learning rate ramps up over the first 5% of the steps and down (cosine) over the last
    25%, as projectors of StyleGAN do, so the last steps settle rather than jump.
    """
    if space not in ("w", "w+"):
        raise ValueError(f"invert(): space must be 'w' or 'w+'; got {space!r}")
    if images.shape[-1] != G.img_resolution or images.shape[1] != G.img_channels:
        raise ValueError(
            f"invert(): images must be [B, {G.img_channels}, {G.img_resolution}, {G.img_resolution}] "
            f"for this generator; got {list(images.shape)}"
        )
    target = images.to(G.mapping.w_avg.device, torch.float32)
    layers = 1 if space == "w" else G.num_ws
    start = _average_w(G).expand(len(target), layers, -1)
    w = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))
    wanted = features(target * 2 - 1).detach() if features is not None else None
    requires = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    try:
        for step in range(steps):
            t = step / max(steps - 1, 1)
            ramp = min(1.0, t / 0.05) * 0.5 * (1 + math.cos(math.pi * max(0.0, (t - 0.75) / 0.25)))
            for group in optimizer.param_groups:
                group["lr"] = lr * max(ramp, 1e-3)
            made = G.synthesis(w.expand(-1, G.num_ws, -1), noise_mode="const")
            loss = (made - (target * 2 - 1)).pow(2).flatten(1).mean(1)
            if wanted is not None:
                loss = loss + feature_weight * (features(made) - wanted).pow(2).flatten(1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum: each image's gradient is its own loss's
            optimizer.step()
        with torch.no_grad():
            ws = w.detach().expand(-1, G.num_ws, -1).clone()
            made = (G.synthesis(ws, noise_mode="const").clamp(-1, 1) + 1) / 2
    finally:
        for p, r in zip(G.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return Inversion(ws=ws, images=made, psnr=psnr(made, target))
