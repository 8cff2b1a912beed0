"""A pretrained StyleGAN2 as a source: images with their latents, and multi-view groups.

The generator is loaded once per process or actor from a user's checkpoint (our format, an
NVlabs ``.pkl`` or a rosinality ``.pt``; see ``models/stylegan2/io.py``; nothing in the file is
executed). ``generate(seed, batch_index)`` is a pure function of its arguments (noise included).

With ``views > 1`` every object (a W latent) is drawn once and rendered with ``views`` view codes
(GANverse3D: the first ``view_layers`` styles set the viewpoint), so a group is one object seen
from several named views. The codes come from a pool (a registry file, ``view_codes``, or codes
sampled from the generator, ``view_seed``); each group draws ``views`` distinct ones, as the
paper's many view codes, seeded by its batch so a shard is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from renderloop.config import ConfigError, check_image_size, check_number

from .seeding import batch_seed, config_digest

__all__ = ["StyleGAN2SourceConfig", "StyleGAN2Source"]

VERSION = 2
NOISE_MODES = ("const", "random", "none")
VIEW_DRAW_SALT = 0x71E5
"""Xored into the batch seed for the groups' code draws: a stream of their own, apart from z's."""


@dataclass
class StyleGAN2SourceConfig:
    """Settings of the StyleGAN2 source (Hydra group ``source``, option ``stylegan2``)."""

    checkpoint: str = "???"
    """Generator file: our format (``renderloop run method=stylegan2`` exports one), NVlabs ``.pkl``
    or rosinality ``.pt``."""
    network: str = "G_ema"
    """Which network of an NVlabs pickle (``G_ema``, ``G``), or key of a rosinality file."""
    batch_size: int = 16
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = None
    noise_mode: str = "const"
    """``const`` (the checkpoint's fixed noise), ``random`` (seeded per batch) or ``none``."""
    resolution: int = 0
    """Output size; 0 keeps the generator's, another size resizes (area, or bilinear up)."""
    views: int = 1
    """Views per object; > 1 makes multi-view groups."""
    view_layers: int = 4
    view_codes: str = ""
    """A ``ViewCodes`` file (``models/stylegan2/latents.py``); empty: sample ``views`` codes."""
    view_names: list[str] = field(default_factory=list)
    """The pool: registry names, at least ``views`` (default: every code of the registry). Each
    group draws ``views`` distinct codes of it in a random order; a pool of exactly ``views`` codes
    gives every group all of them."""
    view_seed: int = 0
    compile: bool = False
    """``torch.compile`` the synthesis network: it fuses the elementwise work around each
    convolution, and on CUDA runs each 2× layer's filter and epilogue as one Triton kernel (4.3×
    eager's images/s at 256² on an H200, ``BENCHMARKS.md``); the first batch compiles."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if self.batch_size < 1 or self.views < 1 or self.batch_size % self.views:
            raise bad("views", f"must be >= 1 and divide batch_size={self.batch_size}; got {self.views}")
        if self.noise_mode not in NOISE_MODES:
            raise bad("noise_mode", f"must be one of {NOISE_MODES}; got {self.noise_mode!r}")
        if self.resolution < 0 or self.view_layers < 1:
            raise bad("resolution", "resolution must be >= 0 and view_layers >= 1")
        if self.view_names:
            check_pool(self.view_names, self.views, "source.view_names")
        check_number("source.truncation_psi", self.truncation_psi, note="1 is no truncation")
        if self.resolution:  # 0: the generator's size, known once it is loaded
            check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))

    def digest(self) -> str:
        return config_digest(self, {"compile": False})


def check_pool(names: list[str], views: int, key: str) -> None:
    """Refuse a view-code pool that cannot give every group ``views`` distinct codes."""
    if views < 2:
        raise ConfigError(key, f"view codes need views >= 2; got {views}")
    if len(set(names)) != len(names):
        raise ConfigError(key, f"names a view code twice: {sorted({n for n in names if names.count(n) > 1})}")
    if len(names) < views:
        raise ConfigError(key, f"a pool of {len(names)} view codes cannot give {views} distinct views per group")


def view_pool(config: StyleGAN2SourceConfig, registry: list[str]) -> list[str]:
    """The names of the codes groups draw from: ``view_names``, else the whole registry."""
    names = list(config.view_names) or registry
    check_pool(names, config.views, "source.view_names" if config.view_names else "source.view_codes")
    if missing := [n for n in names if n not in registry]:
        raise ConfigError("source.view_names", f"no view code named {missing} in the registry")
    return names


class StyleGAN2Source:
    """``generate(seed, batch_index)`` → ``rgb [B, 3, S, S]`` in ``[0, 1]``, ``w [B, num_ws, w_dim]``,
    ``z [B, z_dim]``, ``group``, ``view``."""

    name = "stylegan2"

    def __init__(self, config: StyleGAN2SourceConfig, device: torch.device | str = "cpu") -> None:
        from renderloop.models.stylegan2.checkpoints import CheckpointError
        from renderloop.models.stylegan2.io import load_generator
        from renderloop.models.stylegan2.latents import ViewCodes

        self.config, self.device = config, torch.device(device)
        try:
            self.G = load_generator(config.checkpoint, config.network).to(self.device).eval().requires_grad_(False)
        except (CheckpointError, FileNotFoundError) as err:
            raise ConfigError("source.checkpoint", str(err)) from None
        if config.view_layers >= self.G.num_ws:
            raise ConfigError("source.view_layers", f"must be < the generator's {self.G.num_ws} styles")
        self.view_names: list[str] = []
        self.view_codes = None
        if config.views > 1:
            codes = ViewCodes.load(config.view_codes) if config.view_codes else ViewCodes(config.view_layers)
            if not config.view_codes:
                codes.add_sampled(self.G.cpu(), config.views, seed=config.view_seed)
                self.G.to(self.device)
            self.view_names = view_pool(config, codes.names())
            self.view_codes = codes.stack(self.view_names).to(self.device)
        self.synthesis = self.G.synthesis
        if config.compile:  # random noise from PyTorch's generator, as in eager mode
            self.synthesis = torch.compile(self.G.synthesis, options={"fallback_random": True})

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": VERSION, "config": self.config.digest()}

    def warmup(self) -> None:
        self.generate(0, 0)

    def draw_views(self, seed: int, batch_index: int) -> torch.Tensor:
        """``[B / views, views]`` each group's pool indices: distinct, in a random order."""
        cfg = self.config
        gen = torch.Generator().manual_seed(batch_seed(seed, batch_index) ^ VIEW_DRAW_SALT)
        keys = torch.rand(cfg.batch_size // cfg.views, len(self.view_names), generator=gen)
        return keys.argsort(1)[:, : cfg.views].to(self.device)

    def z(self, seed: int, batch_index: int) -> torch.Tensor:
        """The batch's object latents ``[B / views, z_dim]`` (what ``generate`` draws)."""
        gen = torch.Generator(device=self.device).manual_seed(batch_seed(seed, batch_index))
        return torch.randn(self.config.batch_size // self.config.views, self.G.z_dim, generator=gen, device=self.device)

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        from renderloop.models.stylegan2.latents import view_group

        cfg = self.config
        z = self.z(seed, batch_index)
        ws = self.G.mapping(z, None, cfg.truncation_psi, cfg.truncation_cutoff)
        V, N = cfg.views, z.shape[0]
        view = torch.zeros(N, 1, dtype=torch.long, device=self.device)
        if V > 1:
            view = self.draw_views(seed, batch_index)
            ws = view_group(ws, self.view_codes[view])
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(batch_seed(seed, batch_index) ^ 0x5EED)  # noise: a function of the batch too
            img = self.synthesis(ws, noise_mode=cfg.noise_mode)
        rgb = ((img.float() + 1) / 2).clamp(0, 1)
        if cfg.resolution and cfg.resolution != rgb.shape[-1]:
            mode = "area" if cfg.resolution < rgb.shape[-1] else "bilinear"
            rgb = F.interpolate(rgb, size=(cfg.resolution, cfg.resolution), mode=mode)
        return {
            "rgb": rgb,
            "w": ws.float(),
            "z": z.repeat_interleave(V, dim=0),
            "group": torch.arange(N, device=self.device).repeat_interleave(V) + batch_index * N,
            "view": view.flatten(),
        }

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """``rgb.png``, ``latent.npy`` (w, ``[num_ws, w_dim]``), ``meta.json`` (truncation, noise,
        the drawn code's name, the object's index in its batch: with the seed, ``z(seed, batch_index)``
        gives z); ``view.txt`` is the code's index in the pool."""
        cpu = {k: v.detach().cpu() for k, v in batch.items()}
        rgb = (cpu["rgb"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        cfg, meta, V = self.config, self.meta, self.config.views
        samples = []
        for i, (key, seed) in enumerate(zip(keys, seeds, strict=True)):
            info = {**meta, "seed": int(seed), "truncation_psi": cfg.truncation_psi, "noise_mode": cfg.noise_mode}
            info["object"] = i // V
            sample = {"__key__": key, "rgb.png": rgb[i], "latent.npy": cpu["w"][i].numpy(), "meta.json": info}
            if V > 1:
                info["view_name"] = self.view_names[int(cpu["view"][i])]
                sample["group.txt"], sample["view.txt"] = int(cpu["group"][i]), int(cpu["view"][i])
            samples.append(sample)
        return samples
