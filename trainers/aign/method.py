"""AIGN (Tung, Harley, Seto, Fragkiadaki, ICCV 2017): adversarial inverse graphics networks.

A generator G lifts an input x to latent factors (a 3D pose, a depth map and egomotion, a clean
image); a fixed differentiable renderer P maps the factors back to the input's space; a
discriminator D compares the factors with an unpaired *memory* of ground-truth factors:

    min_G max_D  ‖P(G(x)) − x‖  +  β · [log D(m) + log(1 − D(G(x)))]

Each task (``trainers/aign/{pose,sfm,images}.py``) supplies G, D, P and the reconstruction; this
module is the training recipe they share. ``loss`` selects the ablations: ``reconstruction``
(no D), ``adversarial`` (no reconstruction) or ``both``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..method import Method, ModelSpec, Phase, register_method
from .config import AIGNConfig

__all__ = ["AIGN", "make_task"]


def make_task(config: AIGNConfig, device: torch.device):
    """The task object of ``config.task``."""
    if config.task == "pose":
        from .pose import PoseTask

        return PoseTask(config, device)
    if config.task == "sfm":
        from .sfm import SfMTask

        return SfMTask(config, device)
    from .images import ImageTask

    return ImageTask(config, device)


@register_method("aign", AIGNConfig)
class AIGN(Method):
    """AIGN: lift inputs to factors a renderer reproduces and a discriminator finds plausible."""

    def __init__(self, config: AIGNConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.task = make_task(config, device)

    def fields(self, role: str) -> list[str]:
        return self.task.fields(role)

    def shuffle(self, role: str) -> bool:
        return self.task.shuffle(role)

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        G, D = self.task.build()
        return {
            "G": ModelSpec(G, lr=cfg.lr_generator, betas=(0.5, 0.999), ema=cfg.ema),
            "D": ModelSpec(D, lr=cfg.lr_discriminator, betas=(0.5, 0.999)),
        }

    def phases(self) -> list[Phase]:
        phases = [Phase("G_main", "G", ("input",))]
        if self.config.loss != "reconstruction":
            phases.append(Phase("D_main", "D", ("input", "memory"), repeats=self.config.discriminator_updates))
        return phases

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        if phase.model == "G":
            factors, reconstruction, logs = self.task.lift(nets["G"], batch["input"])
            out = {"reconstruction": reconstruction, **logs}
            loss = cfg.reconstruction_weight * reconstruction if cfg.loss != "adversarial" else 0.0
            if cfg.loss != "reconstruction":
                logits = nets["D"](self.task.fake(factors)).float()  # D frozen: its module
                adversarial = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                loss = loss + cfg.adversarial_weight * adversarial
                out["adversarial"] = adversarial
            return {"loss": loss, **out}
        with torch.no_grad():
            factors, _, _ = self.task.lift(nets["G"], batch["input"])
        real, fake = self.task.real(batch["memory"]), self.task.fake(factors).detach()
        logits_real, logits_fake = nets["D"](real).float(), nets["D"](fake).float()
        loss = F.binary_cross_entropy_with_logits(
            logits_real, torch.ones_like(logits_real)
        ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        accuracy = torch.cat([(logits_real > 0).float().flatten(), (logits_fake < 0).float().flatten()]).mean()
        return {"loss": loss, "accuracy": accuracy}

    @torch.no_grad()
    def images(self, batch: dict, nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        return self.task.images(batch, nets["G"]) if "input" in batch else {}

    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        results = self.task.evaluate(nets["G"], out_dir)
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results
