"""Oracles for the GAN methods: a part segmenter and a viewpoint regressor learned from simulator labels.

GAN2Shape masks objects with a parser, GANverse3D has a person label view codes, DatasetGAN has a
person annotate parts. Here networks trained on abundant simulator renders of the category play
those roles, from their own object-seed range (``oracle``), scored on the disjoint ``test`` range.
A method loads them through :class:`Oracle`, which counts every image it is asked about and
refuses calls beyond a budget, so a result can state how much annotation it used.

``renderloop run method=oracle`` trains both (one phase each, on one stream of renders);
``renderloop eval method=oracle`` reports part and mask IoU and viewpoint errors on held-out
renders beside constant baselines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError, check_number, check_roles
from renderloop.datasets import category
from renderloop.datasets.simulator import Simulator
from renderloop.datasets.sources import source_config
from renderloop.images import image_grid, save_png
from renderloop.models.oracles import PartSegmenter, ViewpointRegressor

from .method import Method, ModelSpec, Phase
from .scores import angle_error_deg, class_iou, confusion, mean_iou, scored_classes

__all__ = ["OracleConfig", "OracleMethod", "Oracle", "OracleBudgetError", "colour_labels", "parts_not_scored"]


@dataclass
class OracleEvalConfig:
    samples: int = 1024
    """Held-out renders of the ``test`` object range that the oracles are scored on."""
    batch_size: int = 64
    seed: int = 0
    figure_rows: int = 8

    def __post_init__(self) -> None:
        for key in ("samples", "batch_size", "figure_rows"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")


@dataclass
class OracleConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data role ``renders``: a simulator stream of the category, from the ``oracle`` object range."""
    width: int = 32
    """First-layer width of both networks."""
    levels: int = 3
    """Segmenter downsamplings."""
    lr: float = 1e-3
    evaluation: OracleEvalConfig = field(default_factory=OracleEvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.evaluation, dict):
            self.evaluation = OracleEvalConfig(**self.evaluation)
        check_roles(self.data, ("renders",))
        name, source = source_config(self.data["renders"])
        if name != "simulator" or not source.category:
            raise ConfigError("method.data.renders", f"needs a simulator category (simulator_vehicle); got {name}")
        category.check_disjoint({"oracle training": tuple(source.object_seeds), "test": category.SEED_RANGES["test"]})
        if self.width < 8 or self.width % 8:
            raise ConfigError("method.width", f"must be a multiple of 8 (group norm); got {self.width}")
        if not 1 <= self.levels <= 5:
            raise ConfigError("method.levels", f"must be in [1, 5]; got {self.levels}")
        check_number("method.lr", self.lr, above=0)


class OracleMethod(Method):
    """Trains the segmenter and the viewpoint regressor side by side on one stream of renders."""

    name = "oracle"

    def __init__(self, config: OracleConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.source = source_config(config.data["renders"])[1]

    def fields(self, role: str) -> list[str]:
        return ["rgb.png", "seg.png", "cam.json"]

    def build(self) -> dict[str, ModelSpec]:
        parts, c = len(category.PART_NAMES), self.config
        return {
            "segmenter": ModelSpec(PartSegmenter(parts, c.width, c.levels), lr=c.lr),
            "viewpoint": ModelSpec(ViewpointRegressor(c.width), lr=c.lr),
        }

    def phases(self) -> list[Phase]:
        return [Phase("segmenter", "segmenter", ("renders",)), Phase("viewpoint", "viewpoint", ("renders",))]

    def step(self, phase: Phase, batch, nets: Mapping[str, nn.Module], gain: int) -> dict:
        renders = batch["renders"]
        rgb = renders["rgb"]
        if phase.model == "segmenter":
            logits = nets["segmenter"](rgb)
            target = renders["seg"].long()
            loss = F.cross_entropy(logits, target)
            return {"loss": loss, "pixel_accuracy": (logits.argmax(1) == target).float().mean().detach()}
        out = nets["viewpoint"](rgb)
        azimuth, elevation = renders["cam"]["azimuth"].float(), renders["cam"]["elevation"].float()
        target = torch.stack([azimuth.cos(), azimuth.sin(), elevation], -1)
        loss = F.mse_loss(out, target)
        error = angle_error_deg(ViewpointRegressor.angles(out.detach())[0], azimuth).median()
        return {"loss": loss, "azimuth_error_deg": error}

    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        return evaluate_oracles(Oracle(nets["segmenter"], nets["viewpoint"], self.device), self.source,
                                self.config.evaluation, out_dir)  # fmt: skip


@torch.no_grad()
def evaluate_oracles(oracle: Oracle, source, ev: OracleEvalConfig, out_dir: Any) -> dict[str, float]:
    """Part and mask IoU, azimuth and elevation errors on held-out renders; JSON and a figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = Simulator(replace(category.held_out(source), batch_size=ev.batch_size), oracle.device)
    classes = 1 + len(category.PART_NAMES)
    counts = torch.zeros(classes, classes, dtype=torch.long)
    label_counts = torch.zeros(classes, classes, dtype=torch.long)
    azimuth_errors, elevation_errors, zero_errors, elevations, figure = [], [], [], [], None
    pixel_totals = torch.zeros(classes, dtype=torch.long)
    batches = math.ceil(ev.samples / ev.batch_size)
    for index in range(batches):
        b = sim.generate(ev.seed, index)
        parts = oracle.segment(b["rgb"])
        counts += confusion(parts, b["seg"], classes)
        pixel_totals += torch.bincount(b["seg"].reshape(-1).cpu(), minlength=classes)
        azimuth, elevation = oracle.viewpoint(b["rgb"])
        azimuth_errors.append(angle_error_deg(azimuth, b["azimuth"]).cpu())
        zero_errors.append(angle_error_deg(torch.zeros_like(b["azimuth"]), b["azimuth"]).cpu())
        elevation_errors.append(((elevation - b["elevation"]).abs() * 180 / math.pi).cpu())
        elevations.append(b["elevation"].cpu())
        if figure is None:
            k = min(ev.figure_rows, len(parts))
            figure = torch.cat([b["rgb"][:k].cpu(), colour_labels(b["seg"][:k]), colour_labels(parts[:k])])
    # Constant baseline for the parts: every pixel gets the test set's most frequent label.
    majority = int(pixel_totals.argmax())
    label_counts[:, majority] = pixel_totals
    iou, constant_iou, scored = class_iou(counts), class_iou(label_counts), scored_classes(counts)
    binary = torch.stack([counts[:1, :1].sum(), counts[:1, 1:].sum(), counts[1:, :1].sum(), counts[1:, 1:].sum()])
    az, zero = torch.cat(azimuth_errors), torch.cat(zero_errors)
    el, elevation_all = torch.cat(elevation_errors), torch.cat(elevations)
    results = {
        "test_images": len(az),
        "part_miou": mean_iou(counts, scored, background=False),
        "part_miou_with_background": mean_iou(counts, scored, background=True),
        "mask_iou": float(binary[3] / (binary[1] + binary[2] + binary[3])),
        "pixel_accuracy": float(counts.diagonal().sum() / counts.sum()),
        "constant_part_miou_with_background": float(constant_iou[scored].nan_to_num(0).mean()),
        "azimuth_median_error_deg": float(az.median()),
        "azimuth_mean_error_deg": float(az.mean()),
        "azimuth_within_15deg": float((az <= 15).float().mean()),
        "azimuth_front_back_flips": float((az > 150).float().mean()),
        "constant_azimuth_mean_error_deg": float(zero.mean()),
        "elevation_mean_error_deg": float(el.mean()),
        "constant_elevation_mean_error_deg": float(
            ((elevation_all - elevation_all.mean()).abs() * 180 / math.pi).mean()
        ),
        "part_iou": {name: float(v) for name, v in zip(category.PART_NAMES, iou[1:], strict=True)},
        "parts_not_scored": parts_not_scored(scored),
        "calls": dict(oracle.calls),
    }
    save_png(image_grid(figure, columns=len(figure) // 3), out_dir / "oracle_eval.png")
    (out_dir / "oracle_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def parts_not_scored(scored: torch.Tensor) -> list[str]:
    """The part names a mean IoU over ``scored`` classes (``scores.scored_classes``) leaves out."""
    return [name for name, kept in zip(category.PART_NAMES, scored[1:], strict=True) if not kept]


def colour_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label maps ``[B, H, W]`` as images ``[B, 3, H, W]``, one fixed colour per class."""
    palette = torch.rand(256, 3, generator=torch.Generator().manual_seed(7))
    palette[0] = 0
    return palette[labels.long().cpu()].permute(0, 3, 1, 2)


class OracleBudgetError(RuntimeError):
    """More images were put to an oracle than its budget allows."""


class Oracle:
    """The trained oracles behind one small API; every image asked about is counted.

    ``budget`` caps the images per annotation kind (``segment``, ``viewpoint``): a method that
    emulates K human annotations sets ``budget=K`` and cannot use more by accident.
    """

    def __init__(self, segmenter: nn.Module, viewpoint: nn.Module, device, budget: int | None = None) -> None:
        # Frozen: methods take gradients through the oracle's features, never into its weights.
        self.segmenter = segmenter.to(device).eval().requires_grad_(False)
        self.viewpoint_net = viewpoint.to(device).eval().requires_grad_(False)
        self.device, self.budget = torch.device(device), budget
        self.calls = {"segment": 0, "viewpoint": 0}

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", budget: int | None = None) -> Oracle:
        """The oracles a ``method=oracle`` run exported to ``<run_dir>/models``."""
        from .evaluation import load_run

        method, nets = load_run("oracle", None, run_dir, device)
        return cls(nets["segmenter"], nets["viewpoint"], method.device, budget)

    def _count(self, kind: str, images: torch.Tensor, budgeted: bool = True) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"oracle {kind}: expected images [B, 3, H, W] in [0, 1]; got {tuple(images.shape)}")
        asked = self.calls.get(kind, 0)
        if budgeted and self.budget is not None and asked + len(images) > self.budget:
            raise OracleBudgetError(
                f"oracle {kind}: {asked} images asked so far, {len(images)} more exceed the budget of {self.budget}"
            )
        self.calls[kind] = asked + len(images)
        return images.to(self.device).float()

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Part labels ``[B, H, W]`` (0: background, k: ``category.PART_NAMES[k - 1]``)."""
        return self.segmenter(self._count("segment", images)).argmax(1)

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """Object masks ``[B, H, W]`` (bool); counted as segmentation calls."""
        return self.segment(images) > 0

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, C]``: the segmenter's deepest encoder features, averaged over space.
        A fixed encoder for distances between image sets; counted, but not an annotation, so
        outside the budget."""
        return self.segmenter.features(self._count("embed", images, budgeted=False))[-1].mean((2, 3))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The segmenter's encoder features at every scale, differentiable in ``images``: the fixed
        network of a perceptual loss. Counted, outside the budget."""
        return self.segmenter.features(self._count("features", images, budgeted=False))

    @torch.no_grad()
    def viewpoint(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Azimuth in [0, 2π) and elevation in radians, ``[B]`` each."""
        return ViewpointRegressor.angles(self.viewpoint_net(self._count("viewpoint", images)))
