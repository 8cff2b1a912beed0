"""Source registry: a source's name → its config dataclass and its class.

A source is built once per process (or Ray actor) and then produces batches:
``generate(seed, batch_index) -> dict of tensors`` (a pure function of its arguments) and
``to_samples(batch, seeds, keys) -> list of schema samples``; ``config.batch_size`` and ``meta``
describe it. An optional ``warmup()`` does one throwaway batch (producer actors call it).
"""

from __future__ import annotations

from typing import Any

import torch

from renderloop.registry import Registry

from .datasetgan import DatasetGANSource, DatasetGANSourceConfig
from .digits import FontDigits, FontDigitsConfig, RealDigits, RealDigitsConfig
from .fashion_mnist import FashionMNIST, FashionMNISTConfig
from .image_folder import ImageFolder, ImageFolderConfig
from .mocap import Mocap, MocapConfig
from .simulator import Simulator, SimulatorConfig
from .stylegan2 import StyleGAN2Source, StyleGAN2SourceConfig

__all__ = ["SOURCES", "source_config", "build_source", "image_size"]

SOURCES = Registry(
    "source.name",
    {
        "simulator": (SimulatorConfig, Simulator),
        "image_folder": (ImageFolderConfig, ImageFolder),
        "fashion_mnist": (FashionMNISTConfig, FashionMNIST),
        "font_digits": (FontDigitsConfig, FontDigits),
        "real_digits": (RealDigitsConfig, RealDigits),
        "mocap": (MocapConfig, Mocap),
        "stylegan2": (StyleGAN2SourceConfig, StyleGAN2Source),
        "datasetgan": (DatasetGANSourceConfig, DatasetGANSource),
    },
)


def source_config(node: Any) -> tuple[str, Any]:
    """``(name, validated config)`` of a ``source`` config node holding ``name`` and the source's keys."""
    return SOURCES.resolve(node)


def build_source(name: str, config: Any, device: torch.device | str = "cpu"):
    """Build the source ``name`` from its validated ``config`` (once per process or actor)."""
    return SOURCES.entry(name).cls(config, device)


def image_size(config: Any) -> int:
    """The side of a source's images: its ``resolution``, or, where that is 0 or absent (a GAN
    source), its generator's."""
    if getattr(config, "resolution", 0):
        return config.resolution
    from renderloop.models.stylegan2.io import load_generator

    return load_generator(config.checkpoint, config.network).img_resolution
