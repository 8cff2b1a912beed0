"""StyleGAN2 training (``method=stylegan2``): make a generator from any image stream.

Non-saturating logistic loss with style mixing; lazy regularization: R1 on real images every
``r1_interval`` steps (a double backward through the discriminator) and, optionally, path-length
regularization of the generator every ``pl_interval`` steps, each scaled by the engine's gain, with
Adam's learning rate and betas adjusted as in the paper. The EMA generator (``engine.ema_half_life``)
gives the sample grids, the export and ``renderloop eval``, which writes
``<run_dir>/eval/generator.pt``: a checkpoint the ``stylegan2`` source loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from renderloop.config import ConfigError, check_number, check_roles, check_values
from renderloop.datasets import category
from renderloop.datasets.sources import source_config
from renderloop.models.stylegan2 import Discriminator, Generator, GeneratorConfig

from .adversarial import discriminator_loss, generator_loss, r1_penalty
from .method import Method, ModelSpec, Phase
from .stylegan2_quality import QualityConfig, quality_report

__all__ = ["StyleGAN2MethodConfig", "StyleGAN2"]


@dataclass
class StyleGAN2MethodConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data role ``real``: the source of the images to learn (its ``resolution`` is the generator's)."""
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 16384
    channel_max: int = 512
    conv_clamp: float | None = 256.0
    fake_batch: int = 32
    """Generated images per generator update (set it to ``engine.data.batch_size``)."""
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    style_mixing_prob: float = 0.9
    r1_gamma: float = 0.05
    """R1 weight γ (the paper's heuristic is 0.0002 · resolution² / batch); 0 turns R1 off."""
    r1_interval: int = 16
    pl_weight: float = 0.0
    """Path-length regularization weight (the paper uses 2); 0 turns it off."""
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    ema: bool = True
    compile: bool = False
    """``torch.compile`` G and D for the main phases (the regularizers' double backward stays
    eager, on the same weights); the first steps compile."""
    grid: int = 16
    """Images in the sample grids (fixed latents)."""
    seed: int = 0
    evaluation: QualityConfig = field(default_factory=QualityConfig)
    """``renderloop eval``: feature distances to the data, and oracle scores on the category."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"method.{key}", msg)

        if isinstance(self.evaluation, dict):
            self.evaluation = QualityConfig(**self.evaluation)
        check_roles(self.data, ("real",))
        _, source = source_config(self.data["real"])
        res = getattr(source, "resolution", 0)
        if res < 4 or res & (res - 1):
            raise bad("data.real.resolution", f"must be a power of two >= 4 (the generator's size); got {res}")
        check_values(self, {
            "z_dim": self.z_dim >= 1, "w_dim": self.w_dim >= 1, "mapping_layers": self.mapping_layers >= 1,
            "fake_batch": self.fake_batch >= 1, "r1_interval": self.r1_interval >= 1,
            "pl_interval": self.pl_interval >= 1, "pl_batch_shrink": self.pl_batch_shrink >= 1, "grid": self.grid >= 1,
        })  # fmt: skip
        check_number("method.lr", self.lr, above=0)
        if len(self.betas) != 2:
            raise bad("betas", f"must be Adam's two betas; got {self.betas}")
        for i, beta in enumerate(self.betas):  # each on its own: Adam does not need them ordered
            check_number(f"method.betas.{i}", beta, at_least=0, below=1)
        check_number("method.conv_clamp", self.conv_clamp, above=0, optional=True, note="null: no clamp")
        check_number("method.style_mixing_prob", self.style_mixing_prob, at_least=0, at_most=1)
        check_number("method.r1_gamma", self.r1_gamma, at_least=0)
        check_number("method.pl_weight", self.pl_weight, at_least=0)
        check_number("method.pl_decay", self.pl_decay, at_least=0, at_most=1)

    @property
    def resolution(self) -> int:
        return source_config(self.data["real"])[1].resolution


def _lazy(lr: float, betas: tuple[float, float], interval: int | None) -> tuple[float, tuple[float, float]]:
    """Adam settings of a model regularized every ``interval`` updates (the paper's correction)."""
    if not interval:
        return lr, betas
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


class StyleGAN2(Method):
    """StyleGAN2: a generator and a discriminator trained on one image stream."""

    name = "stylegan2"

    def __init__(self, config: StyleGAN2MethodConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.pl_mean = torch.zeros([], device=device)
        self.grid_z = torch.randn(config.grid, config.z_dim, generator=torch.Generator().manual_seed(config.seed))
        self._compiled: dict[str, nn.Module] = {}

    @classmethod
    def check_engine(cls, config: StyleGAN2MethodConfig, engine: Any) -> None:
        if engine.zero_stage == 3 and (config.r1_gamma or config.pl_weight):
            raise ConfigError(
                "engine.zero_stage",
                "R1 and path-length regularization take a double backward, which ZeRO-3's partitioned "
                "weights do not support: use ZeRO 0-2, or method.r1_gamma=0 and method.pl_weight=0",
            )
        if engine.zero_stage == 3 and config.compile:
            raise ConfigError("method.compile", "compiled modules do not take ZeRO-3's parameter hooks: use ZeRO 0-2")

    def fields(self, role: str) -> list[str]:
        return ["rgb.png"]

    def generator_config(self) -> GeneratorConfig:
        cfg = self.config
        return GeneratorConfig(
            z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, mapping_layers=cfg.mapping_layers,
            channel_base=cfg.channel_base, channel_max=cfg.channel_max, conv_clamp=cfg.conv_clamp,
        )  # fmt: skip

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        g_lr, g_betas = _lazy(cfg.lr, cfg.betas, cfg.pl_interval if cfg.pl_weight else None)
        d_lr, d_betas = _lazy(cfg.lr, cfg.betas, cfg.r1_interval if cfg.r1_gamma else None)
        D = Discriminator(cfg.resolution, 3, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                          conv_clamp=cfg.conv_clamp)  # fmt: skip
        return {
            "G": ModelSpec(Generator(self.generator_config()), lr=g_lr, betas=g_betas, ema=cfg.ema),
            "D": ModelSpec(D, lr=d_lr, betas=d_betas),
        }

    def phases(self) -> list[Phase]:
        cfg = self.config
        phases = [Phase("G_main", "G", ())]
        if cfg.pl_weight:
            phases.append(Phase("G_reg", "G", (), interval=cfg.pl_interval))
        phases.append(Phase("D_main", "D", ("real",)))
        if cfg.r1_gamma:
            phases.append(Phase("D_reg", "D", ("real",), interval=cfg.r1_interval))
        return phases

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, device=self.device)

    def _generate(self, G: Generator, n: int, update_emas: bool = False) -> torch.Tensor:
        """Images of ``n`` random latents, a share ``style_mixing_prob`` of them style-mixed."""
        z = self._z(n)
        mixing = torch.rand(n, device=self.device) < self.config.style_mixing_prob
        crossover = torch.where(mixing, torch.randint(1, G.num_ws, (n,), device=self.device), G.num_ws)
        return G(z, update_emas=update_emas, z_mix=self._z(n), crossover=crossover)

    def _main(self, nets: Mapping[str, nn.Module]) -> tuple[nn.Module, nn.Module]:
        """G and D as the main phases run them: compiled once when ``method.compile`` is on
        (random ops fall back to eager's, so a seed draws the same noise either way)."""
        if not self.config.compile:
            return nets["G"], nets["D"]
        if not self._compiled:
            self._compiled = {k: torch.compile(nets[k], options={"fallback_random": True}) for k in ("G", "D")}
        return self._compiled["G"], self._compiled["D"]

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        if phase.name in ("G_reg", "D_reg"):
            G, D = nets["G"], nets["D"]
        else:
            G, D = self._main(nets)
        if phase.name == "G_main":
            logits = D(self._generate(G, cfg.fake_batch, update_emas=True)).float()
            return {"loss": generator_loss(logits), "fake_score": logits.mean().detach()}
        if phase.name == "G_reg":
            return self._path_length(G, gain)
        real = batch["real"]["rgb"] * 2 - 1
        if phase.name == "D_main":
            with torch.no_grad():
                fake = self._generate(G, real.shape[0])
            fake_logits, real_logits = D(fake).float(), D(real).float()
            loss = discriminator_loss(real_logits, fake_logits)
            return {"loss": loss, "real_score": real_logits.mean().detach(), "fake_score": fake_logits.mean().detach()}
        penalty = r1_penalty(D, real)  # D_reg
        return {"loss": penalty.mean() * (cfg.r1_gamma / 2) * gain, "r1_penalty": penalty.mean().detach()}

    def _path_length(self, G: Generator, gain: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        z = self._z(max(cfg.fake_batch // cfg.pl_batch_shrink, 1))
        ws = G.mapping(z)
        img = G.synthesis(ws)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), cfg.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        return {"loss": penalty * cfg.pl_weight * gain, "pl_penalty": penalty.detach()}

    @torch.no_grad()
    def images(self, batch: dict, nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        G = nets["G"]
        img = G(self.grid_z.to(self.device), noise_mode="const")
        return {"samples": ((img.float() + 1) / 2).clamp(0, 1)}

    def _trained_on(self) -> dict[str, Any] | None:
        """The simulator category's object range the real images came from (recorded in the
        generator file, so the GAN methods can prove their test objects were never shown)."""
        name, real = source_config(self.config.data["real"])
        if name != "simulator" or not real.category:
            return None
        seeds = list(category.resolve_range(real.object_seeds))
        return {"source": name, "category": real.category, "object_seeds": seeds}

    @torch.no_grad()
    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        from renderloop.images import image_grid, save_png
        from renderloop.models.stylegan2.io import save_generator

        out = Path(out_dir)
        G = nets["G"]
        grid = self.images({}, nets)["samples"]
        save_png(image_grid(grid, columns=int(math.ceil(math.sqrt(len(grid))))), out / "samples.png")
        save_generator(G.cpu() if isinstance(G, Generator) else G, out / "generator.pt", self._trained_on())
        G.to(self.device)
        report = {"images": float(len(grid)), "w_avg_norm": G.mapping.w_avg.norm().item()}
        report |= quality_report(G, self.config.data["real"], self.config.evaluation, self.device)
        (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    def state_dict(self) -> dict[str, Any]:
        return {"pl_mean": self.pl_mean.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pl_mean = state["pl_mean"].to(self.device)
