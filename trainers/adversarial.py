"""The adversarial losses every GAN method shares (logistic GAN, Goodfellow et al. 2014).

Logits are the discriminator's raw outputs, any shape (one per image, or one per patch as in
SimGAN's local discriminator); each loss is a mean over them, computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["generator_loss", "discriminator_loss", "discriminator_accuracy", "r1_penalty"]


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log D(G(z))``: strong gradients while D wins."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(x) - log(1 - D(G(z)))``, each term a mean over its own logits."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


@torch.no_grad()
def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Share of logits on the right side of zero (real > 0, fake < 0), over both sets."""
    return torch.cat([(real_logits > 0).flatten(), (fake_logits < 0).flatten()]).float().mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of ``∇_x D(x)`` at real images ``[B, ...]`` (Mescheder et al. 2018),
    with a graph for the backward into D's parameters; returns ``[B]``."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).float().sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(1)
