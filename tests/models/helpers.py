"""Shared by the tests that build networks with another project's own code."""

from __future__ import annotations

import torch


def perturbed(net: torch.nn.Module, fixed_suffix: str) -> torch.nn.Module:
    """Random values added everywhere but the fixed filters (names ending in ``fixed_suffix``),
    so no weight is trivially zero or one."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point() and not name.endswith(fixed_suffix):
                t.add_(0.2 * torch.randn(t.shape, generator=gen))
    return net
