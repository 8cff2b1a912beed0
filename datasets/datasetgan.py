"""DatasetGAN as a source: GAN samples with part labels from a trained style interpreter.

Built once per process or actor from a generator and an ``interpreter.pt`` (``renderloop eval
method=datasetgan``). ``generate(seed, batch_index)`` draws a pool of ``ceil(B / (1 - drop_share))``
samples, labels every pixel by the ensemble's majority vote, scores each image's uncertainty (the
Jensen–Shannon divergence of the members, mean of its most uncertain ``top_share`` pixels), and
keeps the B least uncertain: each pool's most uncertain share is dropped, so a stream of these
batches is DatasetGAN's filtered dataset. Pure in its arguments (constant noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from renderloop.config import ConfigError, check_number

from . import category
from .seeding import batch_seed, config_digest

__all__ = ["DatasetGANSourceConfig", "DatasetGANSource"]

VERSION = 1


@dataclass
class DatasetGANSourceConfig:
    """Settings of the DatasetGAN source (Hydra group ``source``, option ``datasetgan``)."""

    checkpoint: str = "???"
    """The generator the interpreter was trained on."""
    network: str = "G_ema"
    interpreter: str = "???"
    """``interpreter.pt`` of a ``method=datasetgan`` run (``<run_dir>/eval``)."""
    batch_size: int = 16
    truncation_psi: float = 0.7
    truncation_cutoff: int = 8
    """Truncate only the first this many styles (the official car setting: 8 of 16, the layers up
    to 32²; at 64² the same layers, leaving the finest untruncated); 0: every style."""
    drop_share: float = 0.1
    """The most uncertain share of each pool that is dropped (0 keeps every sample)."""
    members: int = 0
    """Ensemble members that vote (0: all; 1: the single-MLP ablation, which has no uncertainty
    to filter by, so it needs ``drop_share=0``)."""
    top_share: float = 0.1
    pixel_chunk: int = 32768
    """Pixels labelled at once, in whole images (at least one): eight 64² images make one
    synthesis and one pass of the ensemble, so a GPU launches fewer, larger kernels. It bounds
    memory: their synthesis maps and the ensemble's hidden layers, ``members · 128`` floats per
    pixel in each of a few buffers (about 335 MB each for one 256² image of 10 members). On a CPU
    smaller groups run faster (BENCHMARKS.md, DatasetGAN)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.members < 0 or self.pixel_chunk < 1 or self.truncation_cutoff < 0:
            raise ConfigError("source.batch_size", "batch_size and pixel_chunk must be >= 1, members and "
                              "truncation_cutoff >= 0")  # fmt: skip
        check_number("source.drop_share", self.drop_share, at_least=0, below=1)
        if self.members == 1 and self.drop_share:
            raise ConfigError("source.drop_share", "one member has no disagreement to rank samples by; "
                              f"set drop_share=0 with members=1 (got {self.drop_share})")  # fmt: skip
        check_number("source.top_share", self.top_share, above=0, at_most=1)
        check_number("source.truncation_psi", self.truncation_psi, note="1 is no truncation")
        if self.checkpoint != "???":  # its labels train segmenters scored on the test objects
            category.check_generator_held_out(self.checkpoint, "source.checkpoint")

    def digest(self) -> str:
        return config_digest(self, {"pixel_chunk": self.pixel_chunk})  # it never changes the samples


class DatasetGANSource:
    """``generate`` → ``rgb [B, 3, S, S]``, ``seg [B, S, S]`` (part labels), ``uncertainty [B]``."""

    name = "datasetgan"

    def __init__(self, config: DatasetGANSourceConfig, device: torch.device | str = "cpu") -> None:
        from renderloop.models.style_interpreter import load_interpreter
        from renderloop.models.stylegan2.checkpoints import CheckpointError
        from renderloop.models.stylegan2.io import load_generator
        from renderloop.models.stylegan2.latents import feature_channels

        self.config, self.device = config, torch.device(device)
        try:
            self.G = load_generator(config.checkpoint, config.network).to(self.device).eval().requires_grad_(False)
        except (CheckpointError, FileNotFoundError) as err:
            raise ConfigError("source.checkpoint", str(err)) from None
        try:
            interpreter, trained = load_interpreter(config.interpreter)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError("source.interpreter", str(err)) from None
        for key in ("network", "truncation_psi", "truncation_cutoff"):  # the latents it learned to label
            if key in trained and trained[key] != getattr(config, key):
                raise ConfigError(f"source.{key}", f"is {getattr(config, key)!r}; the interpreter was trained on "
                                  f"samples drawn with {key}={trained[key]!r}")  # fmt: skip
        if interpreter.channels != feature_channels(self.G):
            raise ConfigError("source.interpreter", f"was trained on {interpreter.channels} feature channels; "
                              f"this generator has {feature_channels(self.G)}")  # fmt: skip
        if config.members > len(interpreter.members):
            raise ConfigError("source.members", f"the interpreter has {len(interpreter.members)} members")
        if config.members:
            interpreter.members = interpreter.members[: config.members]
        self.ensemble = interpreter.fused().to(self.device)

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": VERSION, "config": self.config.digest()}

    def warmup(self) -> None:
        self.generate(0, 0)

    @torch.no_grad()
    def _label(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, majority labels and uncertainties of ``ws``, in groups of as many whole images
        as ``pixel_chunk`` allows: one synthesis per group, then the ensemble on its layer maps."""
        from renderloop.models.style_interpreter import image_uncertainty, js_divergence, majority_vote
        from renderloop.models.stylegan2.latents import layer_maps

        res = self.G.img_resolution
        images, labels, scores = [], [], []
        for group in ws.split(max(1, self.config.pixel_chunk // res**2)):
            maps, image = layer_maps(self.G, group)
            logits = self.ensemble.on_maps(maps, (res, res))
            images.append(((image.float() + 1) / 2).clamp(0, 1))
            labels.append(majority_vote(logits).view(-1, res, res))
            scores.append(image_uncertainty(js_divergence(logits).view(-1, res * res), self.config.top_share))
        return torch.cat(images), torch.cat(labels), torch.cat(scores)

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        from renderloop.models.stylegan2.latents import sample_ws

        cfg = self.config
        pool = math.ceil(cfg.batch_size / (1 - cfg.drop_share))
        gen = torch.Generator(device=self.device).manual_seed(batch_seed(seed, batch_index))
        z = torch.randn(pool, self.G.z_dim, generator=gen, device=self.device)
        ws = sample_ws(self.G, z, psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff or None)
        images, labels, uncertainty = self._label(ws)
        kept = uncertainty.argsort()[: cfg.batch_size].sort().values  # the least uncertain, in draw order
        return {"rgb": images[kept], "seg": labels[kept], "uncertainty": uncertainty[kept],
                "pool_index": kept, "pool_threshold": uncertainty[kept].max().expand(len(kept))}  # fmt: skip

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """``rgb.png``, ``seg.png`` (part labels), ``meta.json`` (uncertainty, place in the pool)."""
        cpu = {k: v.detach().cpu() for k, v in batch.items()}
        rgb = (cpu["rgb"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        seg = cpu["seg"].to(torch.uint8).numpy()
        samples = []
        for i, (key, seed) in enumerate(zip(keys, seeds, strict=True)):
            info = {**self.meta, "seed": int(seed), "uncertainty": float(cpu["uncertainty"][i])}
            info |= {"pool_index": int(cpu["pool_index"][i]), "pool_threshold": float(cpu["pool_threshold"][i])}
            samples.append({"__key__": key, "rgb.png": rgb[i], "seg.png": seg[i], "meta.json": info})
        return samples
