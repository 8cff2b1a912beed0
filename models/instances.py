"""Independent copies of a network, trained side by side: per-image optimization in one batch.

GAN2Shape fits its networks to one image at a time, restarting every image from the same
weights. ``Instances`` holds ``count`` such copies as stacked weights (``[count, ...]`` per
trainable parameter) and runs a batch whose rows come in ``count`` equal consecutive groups,
group ``i`` through copy ``i`` (``torch.func.vmap`` over the stacked weights). Adam, and an L2
term added to the gradient, act on every element alone, so one optimizer over the stacked
weights trains each copy as it would train alone, as long as the loss is the sum of each
group's own loss. Frozen parameters and buffers stay shared.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

__all__ = ["Instances"]


def _replace(module: nn.Module, name: str, weight: torch.Tensor) -> None:
    """Register ``weight`` as the parameter ``name`` (a dotted path) of ``module`` in place of its own."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path))
    delattr(owner, leaf)
    owner.register_parameter(leaf, nn.Parameter(weight))


class Instances(nn.Module):
    """``count`` copies of ``module``, all starting from its weights."""

    def __init__(self, module: nn.Module, count: int) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"Instances(): count must be >= 1; got {count}")
        self.count, self.module = count, module
        self.stacked: list[str] = []
        for name, p in list(module.named_parameters()):
            if not p.requires_grad:
                continue
            _replace(module, name, p.detach().unsqueeze(0).repeat(count, *[1] * p.dim()))  # copies in front
            self.stacked.append(name)

    def copy(self, index: int) -> nn.Module:
        """Copy ``index`` as a plain module of the wrapped kind (for export or inspection)."""
        import copy

        single = copy.deepcopy(self.module)
        for name in self.stacked:
            _replace(single, name, single.get_parameter(name)[index].detach().clone())
        return single

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [count * k, ...]`` → the module's output for each row, through its group's copy."""
        if len(x) % self.count:
            raise ValueError(f"Instances: {len(x)} rows do not split into {self.count} equal groups")
        weights = {name: self.module.get_parameter(name) for name in self.stacked}

        def one(w: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, w, (rows,))

        out = vmap(one)(weights, x.unflatten(0, (self.count, -1)))
        return out.flatten(0, 1)
