"""AIGN settings: one config for every task; task-specific keys live in their own records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from renderloop.config import ConfigError, check_number, check_roles, check_values

__all__ = ["LOSSES", "AIGNConfig", "PoseConfig", "ImageConfig", "SfMConfig", "AIGNEvalConfig"]

LOSSES = ("both", "reconstruction", "adversarial")


@dataclass
class PoseConfig:
    """3D human pose from 2D keypoints (task ``pose``)."""

    components: int = 30
    """PCA basis size, learnt from the memory's poses (the paper keeps 60 of 96 for 32 joints)."""
    basis_samples: int = 8192
    """Memory poses drawn to fit the basis."""
    width: int = 1024
    """Hidden width of the generator and discriminator MLPs."""
    blocks: int = 2
    """Residual blocks of the generator MLP."""


@dataclass
class ImageConfig:
    """Super-resolution and inpainting (tasks ``superres``, ``inpaint``)."""

    factor: int = 4
    """Super-resolution: the degradation average-pools by this factor."""
    box_fraction: tuple[float, float] = (0.3, 0.5)
    """Inpainting: side of the missing box, as a fraction of the image side."""
    channels: int = 64
    blocks: int = 4
    disc_channels: list[int] = field(default_factory=lambda: [64, 128, 256])


@dataclass
class SfMConfig:
    """Structure from motion (task ``sfm``): depth and egomotion from two frames."""

    channels: int = 32
    """Base width of the depth U-Net and the pose encoder."""
    disc_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    min_depth: float = 0.5
    max_depth: float = 10.0
    search_radius: int = 3
    """The pose network's correlation range, in pixels at a quarter of the input resolution (so ±12
    input pixels at 3; raise it with the resolution or the view step)."""
    trim: float = 0.0
    """Share of each frame's largest per-pixel photometric errors left out (a trimmed mean; 0: none):
    with a backdrop (``source.backdrop_radius``), pixels that the object's moving silhouette hides
    in one frame are outliers, not evidence of a motion."""


@dataclass
class AIGNEvalConfig:
    """``renderloop eval``: held-out data and figures."""

    data: dict[str, Any] = field(default_factory=dict)
    """Source config of the held-out set (pose: other frames or sequences; images: the test split)."""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Pose: more held-out sets by name, each the keys it changes in ``data`` (e.g. another
    performer's file); their results are reported under ``<name>/``."""
    samples: int = 2048
    batch_size: int = 256
    seed: int = 4321
    figure_rows: int = 8
    attribute_classes: list[int] | None = None
    """Images: classes whose share of the outputs a classifier measures (the biased memory's)."""
    classifier_steps: int = 1500
    """Images: steps of the Fashion-MNIST classifier trained for that measure."""
    classifier_cache_dir: str = "~/.cache/renderloop/classifiers"
    """Images: where that classifier is kept once trained (per data, resolution, steps and seed),
    so evaluations after the first skip its training; empty: train it every time."""


@dataclass
class AIGNConfig:
    task: str = "pose"
    data: dict[str, Any] = field(default_factory=dict)
    """Data roles ``input`` (what the generator lifts) and ``memory`` (unpaired ground truth)."""
    loss: str = "both"
    """``both``, ``reconstruction`` (no discriminator) or ``adversarial`` (no reconstruction)."""
    reconstruction_weight: float = 1.0
    adversarial_weight: float = 0.01
    """β of the adversarial term in the generator's loss."""
    discriminator_updates: int = 1
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    ema: bool = True
    pose: PoseConfig = field(default_factory=PoseConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    sfm: SfMConfig = field(default_factory=SfMConfig)
    evaluation: AIGNEvalConfig = field(default_factory=AIGNEvalConfig)

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"method.{key}", msg)

        from .tasks import TASKS  # the task modules import this one

        TASKS.entry(self.task)
        if self.loss not in LOSSES:
            raise bad("loss", f"must be one of {LOSSES}; got {self.loss!r}")
        check_roles(self.data, ("input", "memory"))
        check_values(self, {
            "discriminator_updates": self.discriminator_updates >= 1,
            "pose.components": self.pose.components >= 1,
            "pose.basis_samples": self.pose.basis_samples >= self.pose.components,
            "pose.width": self.pose.width >= 1,
            "image.factor": self.image.factor >= 2,
            "image.channels": self.image.channels >= 1,
            "sfm.channels": self.sfm.channels >= 1,
            "sfm.search_radius": self.sfm.search_radius >= 1,
            "evaluation.samples": self.evaluation.samples >= 1,
            "evaluation.batch_size": self.evaluation.batch_size >= 1,
        })  # fmt: skip
        check_number("method.reconstruction_weight", self.reconstruction_weight, at_least=0)
        check_number("method.adversarial_weight", self.adversarial_weight, at_least=0)
        check_number("method.lr_generator", self.lr_generator, above=0)
        check_number("method.lr_discriminator", self.lr_discriminator, above=0)
        check_number("method.image.box_fraction", self.image.box_fraction, above=0, below=1)
        check_number("method.sfm.min_depth", self.sfm.min_depth, above=0)
        check_number("method.sfm.max_depth", self.sfm.max_depth, above=self.sfm.min_depth, note="beyond min_depth")
        check_number("method.sfm.trim", self.sfm.trim, at_least=0, below=1)
        self._check_sources()

    def _check_sources(self) -> None:
        """The sources each task can read, checked before any stream or model is built."""
        from renderloop.datasets.sources import source_config

        sources = {role: source_config(node) for role, node in self.data.items()}
        if self.evaluation.splits and self.task != "pose":
            raise ConfigError("method.evaluation.splits", f"only task 'pose' reads them; got task {self.task!r}")
        base = dict(self.evaluation.data or self.data["input"])
        for name, node in self.evaluation.splits.items():
            if not name or "/" in name:
                raise ConfigError("method.evaluation.splits", f"names must be non-empty, without '/'; got {name!r}")
            sources[f"evaluation.splits.{name}"] = source_config({**base, **node})
        needs = {"pose": "mocap", "sfm": "simulator"}.get(self.task)
        for role, (name, _) in sources.items():
            if needs and name != needs:
                key = f"method.{role}" if role.startswith("evaluation.") else f"method.data.{role}"
                raise ConfigError(key, f"task {self.task!r} reads {needs} sources; got {name!r}")
        _, source = sources["input"]
        if self.task == "sfm" and (source.views != 2 or source.batch_size % 2 or not source.view_step_deg > 0):
            raise ConfigError("method.data.input", "task 'sfm' needs a sequence stream: views: 2, view_step_deg > 0")
        if self.task == "superres" and source.resolution % self.image.factor:
            raise ConfigError(
                "method.image.factor", f"must divide the input resolution {source.resolution}; got {self.image.factor}"
            )
