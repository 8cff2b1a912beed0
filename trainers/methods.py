"""The methods by name (``method.name``), each with its config schema."""

from __future__ import annotations

from typing import Any

from renderloop.registry import Registry

from .aign import AIGN, AIGNConfig
from .datasetgan import DatasetGAN, DatasetGANConfig
from .gan2shape import GAN2Shape, GAN2ShapeConfig
from .ganverse3d import GANverse3D, GANverse3DConfig
from .oracle import OracleConfig, OracleMethod
from .part_segmentation import PartSegmentation, PartSegmentationConfig
from .simgan import SimGAN, SimGANConfig
from .stylegan2 import StyleGAN2, StyleGAN2MethodConfig

__all__ = ["METHODS", "method_config"]

METHODS = Registry(
    "method.name",
    {
        "simgan": (SimGANConfig, SimGAN),
        "stylegan2": (StyleGAN2MethodConfig, StyleGAN2),
        "aign": (AIGNConfig, AIGN),
        "oracle": (OracleConfig, OracleMethod),
        "gan2shape": (GAN2ShapeConfig, GAN2Shape),
        "datasetgan": (DatasetGANConfig, DatasetGAN),
        "part_segmentation": (PartSegmentationConfig, PartSegmentation),
        "ganverse3d": (GANverse3DConfig, GANverse3D),
    },
)


def method_config(node: Any) -> tuple[str, Any]:
    """``(name, validated config)`` of a ``method`` config node; unknown names are refused."""
    return METHODS.resolve(node)
