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
from torch import nn

from ..adversarial import discriminator_accuracy, discriminator_loss, generator_loss
from ..method import Method, ModelSpec, Phase
from .config import AIGNConfig
from .tasks import TASKS

__all__ = ["AIGN"]


class AIGN(Method):
    """AIGN: lift inputs to factors a renderer reproduces and a discriminator finds plausible."""

    name = "aign"

    def __init__(self, config: AIGNConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.task = TASKS.entry(config.task).cls(config, device)

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

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        if phase.model == "G":
            factors, reconstruction, logs = self.task.lift(nets["G"], batch["input"])
            out = {"reconstruction": reconstruction, **logs}
            loss = cfg.reconstruction_weight * reconstruction if cfg.loss != "adversarial" else 0.0
            if cfg.loss != "reconstruction":
                adversarial = generator_loss(nets["D"](self.task.fake(factors)))  # D frozen
                loss = loss + cfg.adversarial_weight * adversarial
                out["adversarial"] = adversarial
            return {"loss": loss, **out}
        with torch.no_grad():
            factors, _, _ = self.task.lift(nets["G"], batch["input"])
        real, fake = self.task.real(batch["memory"]), self.task.fake(factors).detach()
        logits_real, logits_fake = nets["D"](real), nets["D"](fake)
        loss = discriminator_loss(logits_real, logits_fake)
        return {"loss": loss, "accuracy": discriminator_accuracy(logits_real, logits_fake)}

    @torch.no_grad()
    def images(self, batch: dict, nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        return self.task.images(batch, nets["G"]) if "input" in batch else {}

    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        results = self.task.evaluate(nets["G"], out_dir)
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results
