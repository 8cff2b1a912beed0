"""DatasetGAN's style interpreter: an ensemble of small per-pixel classifiers on GAN features.

Each member maps one pixel's concatenated synthesis features (``latents.pixel_features``) to part
logits through ``C → 128 → 32 → classes`` (ReLU, then batch norm, as in DatasetGAN). The ensemble
labels a pixel by majority vote and scores its disagreement as the Jensen–Shannon divergence of
the members' distributions; an image's uncertainty is the mean over its most uncertain pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["StyleInterpreter", "FusedEnsemble", "majority_vote", "js_divergence", "image_uncertainty",
           "save_interpreter", "load_interpreter"]  # fmt: skip

FORMAT = "renderloop-style-interpreter"


def _member(channels: int, classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels, 128), nn.ReLU(), nn.BatchNorm1d(128),
        nn.Linear(128, 32), nn.ReLU(), nn.BatchNorm1d(32),
        nn.Linear(32, classes),
    )  # fmt: skip


class StyleInterpreter(nn.Module):
    """``members`` classifiers of ``channels``-dimensional pixel features into ``classes``."""

    def __init__(self, channels: int, classes: int, members: int = 10) -> None:
        super().__init__()
        if channels < 1 or classes < 2 or members < 1:
            raise ValueError(f"need channels >= 1, classes >= 2, members >= 1; got {channels}, {classes}, {members}")
        self.channels, self.classes = channels, classes
        self.members = nn.ModuleList([_member(channels, classes) for _ in range(members)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, channels]`` → logits ``[members, P, classes]``."""
        return torch.stack([m(features) for m in self.members])

    def fused(self) -> FusedEnsemble:
        """The same ensemble for labelling: every member at once, batch norm folded in."""
        return FusedEnsemble(self)


class FusedEnsemble(nn.Module):
    """An evaluation-mode :class:`StyleInterpreter` as three batched matrix products.

    Batch norm in evaluation is a per-channel affine map after a ReLU, so it folds into the
    next linear layer; the members' weights are stacked, so a chunk of pixels costs three kernels
    (plus two ReLUs) instead of seven per member. Logits equal the interpreter's up to rounding.
    """

    def __init__(self, interpreter: StyleInterpreter) -> None:
        super().__init__()
        self.members = len(interpreter.members)
        weights, biases = [], []
        for member in interpreter.members:
            first, _, norm1, second, _, norm2, last = member
            scale1, shift1 = _affine(norm1)
            scale2, shift2 = _affine(norm2)
            layers = [(first.weight, first.bias), (second.weight * scale1, second.bias + second.weight @ shift1),
                      (last.weight * scale2, last.bias + last.weight @ shift2)]  # fmt: skip
            weights.append([w.detach().t() for w, _ in layers])
            biases.append([b.detach() for _, b in layers])
        for i in range(3):
            self.register_buffer(f"weight{i}", torch.stack([w[i] for w in weights]))  # [M, in, out]
            self.register_buffer(f"bias{i}", torch.stack([b[i] for b in biases])[:, None])  # [M, 1, out]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, channels]`` → logits ``[members, P, classes]``."""
        hidden = torch.matmul(features, self.weight0).add_(self.bias0).relu_()
        hidden = torch.baddbmm(self.bias1, hidden, self.weight1).relu_()
        return torch.baddbmm(self.bias2, hidden, self.weight2)


def _affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm`` in evaluation as ``x * scale + shift``."""
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    return scale, norm.bias - norm.running_mean * scale


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """``[M, P, K]`` → ``[P]``: the class most members pick (ties: the lowest class id)."""
    votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0)
    return votes.argmax(-1)


def js_divergence(logits: torch.Tensor) -> torch.Tensor:
    """``[M, P, K]`` → ``[P]``: entropy of the mean distribution minus the mean entropy (nats);
    0 when all members agree, at most ``log M``."""
    p = logits.float().softmax(-1)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(q * q.clamp_min(1e-12).log()).sum(-1)

    return (entropy(p.mean(0)) - entropy(p).mean(0)).clamp_min(0)


def image_uncertainty(pixel_divergence: torch.Tensor, top_share: float = 0.1) -> torch.Tensor:
    """``[B, P]`` → ``[B]``: mean divergence of each image's ``top_share`` most uncertain pixels."""
    k = max(1, math.ceil(pixel_divergence.shape[1] * top_share))
    return pixel_divergence.topk(k, dim=1).values.mean(1)


def save_interpreter(interpreter: StyleInterpreter, path: str | Path, meta: dict[str, Any]) -> Path:
    """Weights and shape of an interpreter, in a weights-only file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "channels": interpreter.channels, "classes": interpreter.classes,
             "members": len(interpreter.members), "state": interpreter.state_dict(), "meta": meta}  # fmt: skip
    torch.save(state, path)
    return path


def load_interpreter(path: str | Path) -> tuple[StyleInterpreter, dict[str, Any]]:
    """An interpreter written by :func:`save_interpreter` (in eval mode) and its meta."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a style interpreter file (renderloop eval method=datasetgan writes one)")
    interpreter = StyleInterpreter(state["channels"], state["classes"], state["members"])
    interpreter.load_state_dict(state["state"])
    return interpreter.eval(), state["meta"]
