"""SimGAN (Shrivastava et al., CVPR 2017): refine simulated images so they look real, keep their labels.

A refiner R (ResNet blocks, 1×1 output convolution) maps a simulated image x to R(x); a local
discriminator D classifies every patch of an image as real or refined. R minimizes the
adversarial loss plus the self-regularization ``λ · mean|ψ(R(x)) − ψ(x)|`` (the paper sums over
pixels; a mean keeps λ independent of resolution); D sees real images against refined images
of which a share comes from a history of earlier refiner outputs.

Phases: ``R_pretrain`` (self-regularization only), ``D_pretrain``, then ``R_main`` ×K_g and
``D_main`` ×K_d per engine step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError, check_number, check_roles
from renderloop.datasets.sources import source_config

from .adversarial import discriminator_accuracy, discriminator_loss, generator_loss
from .method import Method, ModelSpec, Phase

__all__ = ["SimGANConfig", "SimGAN", "Refiner", "PatchDiscriminator", "HistoryBuffer", "EvalConfig"]

SELF_REG_SPACES = ("identity", "channel_mean")


@dataclass
class EvalConfig:
    """The downstream experiment of ``renderloop eval method=simgan``: digit classification when the
    streams are digits (``trainers/simgan_digits.py``), else light direction (``trainers/downstream.py``)."""

    train_samples: int = 4096
    """Labeled simulated images the estimators train on (raw, then refined)."""
    test_samples: int = 1024
    """Light direction: labeled real-like held-out test images (digits: the held-out real half)."""
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 1234
    """Seeds of the evaluation images and classifiers; distinct from the training streams' seeds."""
    classifier_seeds: int = 1
    """Digit experiment: classifiers trained per row (seeds ``seed``, ``seed + 1``, ...)."""
    classifier_width: int = 32
    """Digit experiment: the classifier's first layer width (the others are twice that)."""
    figure_rows: int = 8

    def __post_init__(self) -> None:
        for key in (
            "train_samples",
            "test_samples",
            "steps",
            "batch_size",
            "classifier_seeds",
            "classifier_width",
            "figure_rows",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")
        check_number("method.evaluation.lr", self.lr, above=0)


@dataclass
class SimGANConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data roles ``synthetic`` and ``real``: source configs of the streams they read."""
    channels: int = 64
    """Refiner width."""
    blocks: int = 4
    """Refiner ResNet blocks."""
    disc_channels: list[int] = field(default_factory=lambda: [96, 64, 32, 32])
    """Discriminator widths: two stride-2 3×3 convolutions, a 3×3 max-pool, one 3×3 convolution,
    then 1×1 convolutions (the paper's 96-64-pool-32-32)."""
    output: str = "tanh"
    """The refiner's last layer: ``tanh`` (images stay in [0, 1]) or ``linear`` (the paper's 1×1
    convolution alone). On near-binary images a tanh refiner must saturate to copy its input, and
    a saturated one gets no gradient back once the discriminator has pushed it off (BENCHMARKS.md:
    the paper-sized digit runs collapse to black)."""
    discriminator: str = "local"
    """``local``: one decision per patch (the paper); ``global``: one per image (its ablation)."""
    self_reg: float = 0.5
    """λ of the self-regularization (mean absolute difference in ψ space)."""
    self_reg_space: str = "identity"
    """ψ: ``identity`` (RGB) or ``channel_mean`` (intensity; lets R change colours)."""
    history_size: int = 512
    """Refined images each rank keeps for the discriminator (0: no history)."""
    history_fraction: float = 0.5
    """Share of each refined batch that D sees from the history once it is full."""
    pretrain_refiner_steps: int = 200
    pretrain_discriminator_steps: int = 50
    refiner_updates: int = 2
    """K_g: refiner updates per engine step."""
    discriminator_updates: int = 1
    """K_d: discriminator updates per engine step."""
    lr_refiner: float = 2e-4
    lr_discriminator: float = 2e-4
    ema: bool = True
    """Keep an EMA refiner (``engine.ema_half_life``) for images, export and evaluation."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"method.{key}", msg)

        check_roles(self.data, ("synthetic", "real"))
        check_number("method.self_reg", self.self_reg, at_least=0)
        check_number("method.history_fraction", self.history_fraction, at_least=0, below=1)
        check_number("method.lr_refiner", self.lr_refiner, above=0)
        check_number("method.lr_discriminator", self.lr_discriminator, above=0)
        if self.output not in ("tanh", "linear"):
            raise bad("output", f"must be tanh or linear; got {self.output!r}")
        if self.discriminator not in ("local", "global"):
            raise bad("discriminator", f"must be local or global; got {self.discriminator!r}")
        if self.self_reg_space not in SELF_REG_SPACES:
            raise bad("self_reg_space", f"must be one of {SELF_REG_SPACES}; got {self.self_reg_space!r}")
        checks = {
            "channels": (self.channels >= 1, "must be >= 1"),
            "blocks": (self.blocks >= 0, "must be >= 0"),
            "disc_channels": (bool(self.disc_channels) and min(self.disc_channels) >= 1, "must be widths >= 1"),
            "history_size": (self.history_size >= 0, "must be >= 0"),
            "pretrain_refiner_steps": (self.pretrain_refiner_steps >= 0, "must be >= 0"),
            "pretrain_discriminator_steps": (self.pretrain_discriminator_steps >= 0, "must be >= 0"),
            "refiner_updates": (self.refiner_updates >= 1, "must be >= 1"),
            "discriminator_updates": (self.discriminator_updates >= 1, "must be >= 1"),
        }
        for key, (ok, rule) in checks.items():
            if not ok:
                raise bad(key, f"{rule}; got {getattr(self, key)!r}")


class ResnetBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Refiner(nn.Module):
    """``[B, 3, H, W]`` in ``[0, 1]`` → refined ``[B, 3, H, W]`` (fully convolutional): in ``[0, 1]``
    through a tanh, or (``output="linear"``, the paper's plain 1×1 convolution) unbounded."""

    def __init__(self, channels: int = 64, blocks: int = 4, output: str = "tanh") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResnetBlock(channels) for _ in range(blocks)))
        self.head = nn.Conv2d(channels, 3, 1)
        self.squash = torch.tanh if output == "tanh" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.stem(2 * x - 1)))
        return (self.squash(self.head(h)) + 1) / 2


class PatchDiscriminator(nn.Module):
    """``[B, 3, H, W]`` → ``[B, H/4, W/4]`` logits, one real-vs-refined decision per local patch;
    with ``whole_image``, ``[B, 1, 1]``: one decision per image from a linear layer over the map
    (the paper's global-adversarial ablation; it needs the image size)."""

    def __init__(self, channels: list[int], whole_image: tuple[int, int] | None = None) -> None:
        super().__init__()
        c = [3, *channels]
        layers: list[nn.Module] = [nn.Conv2d(c[0], c[1], 3, stride=2, padding=1), nn.ReLU()]
        if len(c) > 2:
            layers += [nn.Conv2d(c[1], c[2], 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, padding=1)]
        for i, (a, b) in enumerate(zip(c[2:], c[3:], strict=False)):
            layers += [nn.Conv2d(a, b, 3 if i == 0 else 1, padding=1 if i == 0 else 0), nn.ReLU()]
        layers.append(nn.Conv2d(c[-1], 1, 1))
        self.net = nn.Sequential(*layers)
        self.whole = None
        if whole_image is not None:
            h, w = (math.ceil(math.ceil(s / 2) / 2) if len(c) > 2 else math.ceil(s / 2) for s in whole_image)
            self.whole = nn.Linear(h * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(2 * x - 1)[:, 0]
        return logits if self.whole is None else self.whole(logits.flatten(1))[:, :, None]


class HistoryBuffer:
    """Past refined images for the discriminator, one buffer per rank (never synchronized).

    ``mix(refined)`` returns a batch of ``len(refined)`` images: while the buffer holds fewer than
    ``size`` images, the batch is ``refined`` itself and all of it is stored; once full, a share
    ``fraction`` of the batch is replaced by images drawn at random from the buffer, and as many
    random buffer slots are overwritten by the current batch's first images (every slot, when the
    buffer is smaller than that share). With W ranks the history of the whole run is W × ``size``
    images; each rank's buffer is saved in its checkpoint.
    """

    def __init__(self, size: int, fraction: float = 0.5) -> None:
        self.size, self.fraction = size, fraction
        self.images: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    @torch.no_grad()
    def mix(self, refined: torch.Tensor) -> torch.Tensor:
        refined = refined.detach()
        if self.size == 0:
            return refined
        if len(self) < self.size:
            room = self.size - len(self)
            new = refined[:room]
            self.images = new.clone() if self.images is None else torch.cat([self.images, new])
            return refined
        n = int(round(self.fraction * refined.shape[0]))
        if n == 0:
            return refined
        dev = self.images.device
        picked = self.images[torch.randint(self.size, (n,), device=dev)]
        mixed = torch.cat([refined[: refined.shape[0] - n], picked.to(refined.dtype)])
        slots = torch.randperm(self.size, device=dev)[:n]  # all of them when n > size
        self.images[slots] = refined[: len(slots)].to(self.images.dtype)
        return mixed

    def state_dict(self) -> dict[str, Any]:
        return {"images": None if self.images is None else self.images.cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = None if state["images"] is None else state["images"].to(device)


def _psi(x: torch.Tensor, space: str) -> torch.Tensor:
    return x.mean(1, keepdim=True) if space == "channel_mean" else x


class SimGAN(Method):
    """SimGAN: a refiner that makes simulated images look real while keeping their labels."""

    name = "simgan"

    def __init__(self, config: SimGANConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.history = HistoryBuffer(config.history_size, config.history_fraction)

    def fields(self, role: str) -> list[str]:
        return ["rgb.png"]

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        return {
            "R": ModelSpec(
                Refiner(cfg.channels, cfg.blocks, cfg.output), lr=cfg.lr_refiner, betas=(0.5, 0.999), ema=cfg.ema
            ),
            "D": ModelSpec(
                PatchDiscriminator(cfg.disc_channels, self._whole_image()), lr=cfg.lr_discriminator, betas=(0.5, 0.999)
            ),  # fmt: skip
        }

    def _whole_image(self) -> tuple[int, int] | None:
        """The real stream's image size for a global discriminator (None: local)."""
        if self.config.discriminator == "local":
            return None
        _, scfg = source_config(self.config.data["real"])
        return (scfg.resolution, scfg.resolution)

    def phases(self) -> list[Phase]:
        cfg = self.config
        pre_r, main = cfg.pretrain_refiner_steps, cfg.pretrain_refiner_steps + cfg.pretrain_discriminator_steps
        return [
            Phase("R_pretrain", "R", ("synthetic",), stop=pre_r),
            Phase("D_pretrain", "D", ("synthetic", "real"), start=pre_r, stop=main),
            Phase("R_main", "R", ("synthetic",), repeats=cfg.refiner_updates, start=main),
            Phase("D_main", "D", ("synthetic", "real"), repeats=cfg.discriminator_updates, start=main),
        ]

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        x = batch["synthetic"]["rgb"]
        if phase.model == "R":
            refined = nets["R"](x)
            reg = cfg.self_reg * (_psi(refined, cfg.self_reg_space) - _psi(x, cfg.self_reg_space)).abs().float().mean()
            if phase.name == "R_pretrain":
                return {"loss": reg, "self_reg": reg}
            adversarial = generator_loss(nets["D"](refined))  # D frozen: no gradient into it
            return {"loss": adversarial + reg, "adversarial": adversarial, "self_reg": reg}
        with torch.no_grad():
            refined = self.history.mix(nets["R"](x))
        real = batch["real"]["rgb"]
        logits = nets["D"](torch.cat([real, refined]))  # [2B, h, w]: one pass over both
        real_logits, fake_logits = logits[: len(real)], logits[len(real) :]
        # Half the sum of the two means: the mean over all 2B patch maps, as the paper's loss.
        loss = discriminator_loss(real_logits, fake_logits) / 2
        return {"loss": loss, "accuracy": discriminator_accuracy(real_logits, fake_logits)}

    @torch.no_grad()
    def images(self, batch: dict, nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        out = {}
        if "synthetic" in batch:
            x = batch["synthetic"]["rgb"][:16]
            out["synthetic"], out["refined"] = x, nets["R"](x)
        if "real" in batch:
            out["real"] = batch["real"]["rgb"][:16]
        return out

    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        if source_config(self.config.data["synthetic"])[0] == "font_digits":
            from .simgan_digits import digits_experiment

            return digits_experiment(self.config, nets["R"], self.device, out_dir)
        from .downstream import simgan_experiment

        return simgan_experiment(self.config, nets["R"], self.device, out_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state["history"], self.device)
