"""AIGN's tasks by name (``method.task``): each supplies G, D, the renderer P and its metrics."""

from __future__ import annotations

from renderloop.registry import Registry

from .config import ImageConfig, PoseConfig, SfMConfig
from .images import ImageTask
from .pose import PoseTask
from .sfm import SfMTask

__all__ = ["TASKS"]

TASKS = Registry(
    "method.task",
    {
        "pose": (PoseConfig, PoseTask),
        "sfm": (SfMConfig, SfMTask),
        "superres": (ImageConfig, ImageTask),
        "inpaint": (ImageConfig, ImageTask),
    },
)
