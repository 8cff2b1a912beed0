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
import torch.nn.functional as F
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
        """The same ensemble for labelling (in evaluation mode): every member at once, batch norm
        folded in."""
        if self.training:
            raise ValueError("StyleInterpreter.fused(): call .eval() first (batch norm folds its running statistics)")
        return FusedEnsemble(self)


class FusedEnsemble(nn.Module):
    """An evaluation-mode :class:`StyleInterpreter` as three batched matrix products.

    Batch norm in evaluation is a per-channel affine map after a ReLU, so it folds into the
    next linear layer; the members' weights are stacked, so pixels cost three products (plus
    their biases and ReLUs) instead of seven kernels per member. Logits equal the interpreter's up
    to rounding.
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
        # Every member's first layer as one product: [channels, members * 128].
        self.register_buffer("weight0", torch.cat([w[0] for w in weights], 1))
        self.register_buffer("bias0", torch.cat([b[0] for b in biases]))
        for i in (1, 2):
            self.register_buffer(f"weight{i}", torch.stack([w[i] for w in weights]))  # [M, in, out]
            self.register_buffer(f"bias{i}", torch.stack([b[i] for b in biases])[:, None])  # [M, 1, out]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, channels]`` → logits ``[members, P, classes]``."""
        return self._rest(features @ self.weight0)

    def on_maps(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[members, B * H * W, classes]`` of every pixel of images whose features are
        ``maps`` (``[B, C_l, h_l, w_l]`` per layer, as ``latents.layer_maps`` gives them) upsampled
        to ``size``, bilinearly.

        The first layer is linear and so is upsampling, per channel: each map is multiplied at its
        own resolution and the sums per resolution are upsampled, so the concatenated per-pixel
        features are never built (at 64², a third of the multiply-adds). Sums stay channels-last,
        the layout in which upsampling many channels is fast on the CPU.
        """
        per_size: dict[tuple[int, int], torch.Tensor] = {}
        start = 0
        for fmap in maps:
            C, h, w = fmap.shape[1:]
            part = fmap.float().permute(0, 2, 3, 1) @ self.weight0[start : start + C]  # [B, h, w, M * 128]
            per_size[(h, w)] = part if (h, w) not in per_size else per_size[(h, w)].add_(part)
            start += C
        if start != len(self.weight0):
            raise ValueError(f"FusedEnsemble.on_maps(): maps have {start} channels; the ensemble takes "
                             f"{len(self.weight0)}")  # fmt: skip
        hidden = None
        for (h, w), part in per_size.items():
            if (h, w) != size:  # a channels-last view, upsampled in that layout
                part = F.interpolate(part.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
                part = part.permute(0, 2, 3, 1)
            hidden = part if hidden is None else hidden.add_(part)
        return self._rest(hidden.reshape(-1, hidden.shape[-1]))

    def _rest(self, first: torch.Tensor) -> torch.Tensor:
        """The first layer's products ``[P, members * 128]`` → logits ``[members, P, classes]``."""
        hidden = first.add_(self.bias0).relu_().view(len(first), self.members, -1).transpose(0, 1)
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
