"""Part segmentation (``method=part_segmentation``): the downstream network of DatasetGAN's rows.

One architecture for every row (the oracle's ``PartSegmenter`` U-Net, trained from scratch: no
pretrained weights exist offline) on any stream of ``rgb.png`` + ``seg.png``: DatasetGAN's
labelled samples (``source=datasetgan``), K labelled renders repeated (a closed stream of K
samples: the few-shot baseline), or abundant renders. ``renderloop eval`` scores it on held-out
renders of the ``test`` objects, split into folds by object: dataset-level mIoU with and without
the background in each fold, and their mean and spread over folds, for the last weights; and, where
the run kept snapshots (``engine.snapshot_every``), the paper's protocol: for each fold the weights
that score best on it, scored on the other folds (``selected/*``).
"""

from __future__ import annotations

import functools
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
from renderloop.datasets.sources import image_size, source_config
from renderloop.models.oracles import PartSegmenter

from .method import Method, ModelSpec, Phase
from .oracle import colour_labels, parts_not_scored
from .scores import confusion, mean_iou, scored_classes

__all__ = ["PartSegmentationConfig", "PartSegmentation", "fold_scores", "selected_scores", "mirror_classes", "mirrored",
           "label_counts"]  # fmt: skip

TASKS = ("parts", "inpaint")
PRIOR_SEED = 1_000_003
"""Added to the evaluation seed for the constant row's training renders."""


@dataclass
class PartSegmentationEvalConfig:
    renders: dict[str, Any] = field(default_factory=dict)
    """The simulator category to test on (its ``test`` objects are used, whatever it names)."""
    samples: int = 500
    folds: int = 5
    batch_size: int = 50
    seed: int = 0
    prior_samples: int = 500
    """Renders of training (``gan`` range) objects whose per-pixel majority label is the trivial
    row's constant prediction (``constant/*``); 0: no such row."""

    def __post_init__(self) -> None:
        for key in ("samples", "folds", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")
        if self.prior_samples < 0:
            raise ConfigError("method.evaluation.prior_samples", f"must be >= 0; got {self.prior_samples}")
        if self.samples < self.folds:
            raise ConfigError("method.evaluation.samples", f"must be at least the {self.folds} folds")


@dataclass
class PartSegmentationConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data role ``labeled``: a stream with ``rgb.png`` and ``seg.png``."""
    width: int = 32
    levels: int = 3
    lr: float = 1e-3
    task: str = "parts"
    """``parts``; or ``inpaint``, a self-supervised pretext on unlabelled renders (a grey square
    of each image is restored by the first three output channels), to pretrain for transfer."""
    init_from: str = ""
    """A ``part_segmentation`` run whose exported network starts this one (the transfer row:
    pretrain with ``task=inpaint``, then fine-tune on the K labels)."""
    flip: bool = True
    """Mirror each training image left–right with probability ½, its left and right parts'
    labels swapped (the category is mirror-symmetric): the standard augmentation, in every row."""
    evaluation: PartSegmentationEvalConfig = field(default_factory=PartSegmentationEvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.evaluation, dict):
            self.evaluation = PartSegmentationEvalConfig(**self.evaluation)
        name, renders = source_config(self.evaluation.renders)
        if name != "simulator" or not renders.category:
            raise ConfigError("method.evaluation.renders", f"needs a simulator category; got {name}")
        check_roles(self.data, ("labeled",))
        name, source = source_config(self.data["labeled"])
        if name == "simulator" and source.category:
            category.check_disjoint({"training": tuple(source.object_seeds), "test": category.SEED_RANGES["test"]})
        if self.width < 8 or self.width % 8 or not 1 <= self.levels <= 5:
            raise ConfigError("method.width", "width must be a multiple of 8 and levels in [1, 5]")
        check_number("method.lr", self.lr, above=0)
        if self.task not in TASKS:
            raise ConfigError("method.task", f"must be one of {TASKS}; got {self.task!r}")
        if self.init_from and not (Path(self.init_from) / "models" / "segmenter.pt").is_file():
            raise ConfigError("method.init_from", f"{self.init_from} holds no exported segmenter (models/segmenter.pt)")


@functools.cache
def mirror_classes() -> torch.Tensor:
    """``[1 + parts]`` each class's label in the mirror image: left and right parts swap (built
    once: every training step mirrors with it)."""
    names = ["background", *category.PART_NAMES]
    swap = {"left_": "right_", "right_": "left_"}
    mirrored = [next((n.replace(a, b, 1) for a, b in swap.items() if n.startswith(a)), n) for n in names]
    return torch.tensor([names.index(n) for n in mirrored])


def mirrored(
    rgb: torch.Tensor, seg: torch.Tensor | None, which: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``[B, 3, H, W]`` and labels ``[B, H, W]`` with the ``which [B]`` ones mirrored
    left–right, their left and right parts swapped."""
    rgb = torch.where(which[:, None, None, None], rgb.flip(3), rgb)
    if seg is not None:
        swapped = mirror_classes().to(seg.device)[seg.flip(2).long()].to(seg.dtype)
        seg = torch.where(which[:, None, None], swapped, seg)
    return rgb, seg


def label_counts(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``[H, W, classes]`` how often each class appears at each pixel of label maps ``[N, H, W]``
    (add them up over batches)."""
    H, W = labels.shape[1:]
    index = torch.arange(H * W, device=labels.device) * classes + labels.reshape(len(labels), -1).long()
    return torch.bincount(index.reshape(-1), minlength=H * W * classes).view(H, W, classes)


def fold_scores(counts: torch.Tensor, scored: torch.Tensor | None = None) -> dict[str, float]:
    """Per-fold confusion counts ``[F, C, C]`` → mIoU with and without class 0 (background), each
    dataset-level within its fold, as mean and sample standard deviation over folds; over the
    ``scored`` classes (default: ``scored_classes`` of the whole test set, the same in every fold)."""
    scored = scored_classes(counts) if scored is None else scored
    with_bg = torch.tensor([mean_iou(c, scored, background=True) for c in counts])
    parts = torch.tensor([mean_iou(c, scored, background=False) for c in counts])
    report = {}
    for name, values in (("miou_with_background", with_bg), ("miou", parts)):
        report[name] = float(values.mean())
        report[f"{name}_fold_std"] = float(values.std()) if len(values) > 1 else 0.0
    return report


def selected_scores(counts: torch.Tensor) -> tuple[dict[str, float], list[int]]:
    """Confusion counts ``[N, F, C, C]`` of N candidate weights on F folds → for each fold i, the
    candidate with the best mIoU (without background) on fold i, scored on the other folds pooled
    (dataset-level); mean and sample standard deviation over the F choices, and each fold's choice.
    No fold both chooses and scores its weights."""
    N, F = counts.shape[:2]
    if F < 2:
        raise ValueError(f"selected_scores(): choosing on one fold and scoring on the others needs >= 2 folds; got {F}")
    scored = scored_classes(counts[0])  # every candidate labels the same test set
    chosen = [int(torch.tensor([mean_iou(counts[n, i], scored, background=False) for n in range(N)]).argmax())
              for i in range(F)]  # fmt: skip
    others = torch.stack([counts[c].sum(0) - counts[c, i] for i, c in enumerate(chosen)])
    return {f"selected/{k}": v for k, v in fold_scores(others, scored).items()}, chosen


class PartSegmentation(Method):
    """A part segmenter trained on one labelled stream, scored on held-out renders."""

    name = "part_segmentation"

    def fields(self, role: str) -> list[str]:
        return ["rgb.png", "seg.png"] if self.config.task == "parts" else ["rgb.png"]

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        segmenter = self._network()
        if cfg.init_from:
            state = torch.load(Path(cfg.init_from) / "models" / "segmenter.pt", map_location="cpu", weights_only=True)
            try:
                segmenter.load_state_dict(state)
            except RuntimeError as err:
                raise ConfigError("method.init_from", f"another architecture than method.width/levels: {err}") from None
        return {"segmenter": ModelSpec(segmenter, lr=cfg.lr)}

    def _network(self) -> PartSegmenter:
        return PartSegmenter(len(category.PART_NAMES), self.config.width, self.config.levels)

    def phases(self) -> list[Phase]:
        return [Phase("segmenter", "segmenter", ("labeled",))]

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        rgb, seg = labeled["rgb"], labeled.get("seg")
        if self.config.flip:
            rgb, seg = mirrored(rgb, seg, torch.rand(len(rgb), device=rgb.device) < 0.5)
        if self.config.task == "inpaint":
            return self._inpaint(nets["segmenter"], rgb)
        logits = nets["segmenter"](rgb)
        target = seg.long()
        loss = F.cross_entropy(logits.float(), target)
        return {"loss": loss, "pixel_accuracy": (logits.argmax(1) == target).float().mean().detach()}

    def _inpaint(self, segmenter: nn.Module, rgb: torch.Tensor, seed: int | None = None) -> dict[str, torch.Tensor]:
        """The pretext: restore a grey square (a quarter of the side) at a random place in each image."""
        B, _, H, W = rgb.shape
        gen = None if seed is None else torch.Generator(device=rgb.device).manual_seed(seed)
        top = torch.randint(0, H - H // 4 + 1, (B, 1, 1), device=rgb.device, generator=gen)
        left = torch.randint(0, W - W // 4 + 1, (B, 1, 1), device=rgb.device, generator=gen)
        rows, cols = torch.arange(H, device=rgb.device).view(1, H, 1), torch.arange(W, device=rgb.device).view(1, 1, W)
        hole = ((rows >= top) & (rows < top + H // 4) & (cols >= left) & (cols < left + W // 4))[:, None].to(rgb.dtype)
        restored = torch.sigmoid(segmenter(rgb * (1 - hole) + 0.5 * hole)[:, :3].float())
        loss = ((restored - rgb.float()).abs() * hole).sum() / (hole.sum() * 3).clamp_min(1)
        return {"loss": loss, "hole_l1": loss.detach()}

    @torch.no_grad()
    def _fold_counts(self, segmenter: nn.Module, test: list, classes: int) -> torch.Tensor:
        """Confusion counts ``[folds, C, C]`` of ``segmenter`` on the test batches."""
        counts = torch.zeros(self.config.evaluation.folds, classes, classes, dtype=torch.long)
        for rgb, seg, fold in test:
            predicted = segmenter(rgb).argmax(1).cpu()
            for f in fold.unique().tolist():
                counts[f] += confusion(predicted[fold == f], seg[fold == f], classes)
        return counts

    def _label_prior(self, renders, classes: int) -> torch.Tensor:
        """The per-pixel majority label of ``prior_samples`` renders of training objects (ties: the
        lowest class), drawn with a seed of their own (the test seed would give render i the test
        render i's camera)."""
        ev = self.config.evaluation
        sim = Simulator(replace(renders, object_seeds="gan"), self.device)
        counts, left = 0, ev.prior_samples
        for index in range(math.ceil(ev.prior_samples / ev.batch_size)):
            seg = sim.generate(PRIOR_SEED + ev.seed, index)["seg"][:left]
            counts = counts + label_counts(seg, classes).cpu()
            left -= len(seg)
        return counts.argmax(-1)

    @torch.no_grad()
    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        from renderloop.images import image_grid, save_png

        ev, segmenter = self.config.evaluation, nets["segmenter"]
        resolution = image_size(source_config(self.config.data["labeled"])[1])
        renders = replace(category.held_out(source_config(ev.renders)[1]), resolution=resolution,
                          batch_size=ev.batch_size)  # fmt: skip
        sim = Simulator(renders, self.device)
        classes = 1 + len(category.PART_NAMES)
        if self.config.task == "inpaint":  # the pretext's own score: its hole L1 on held-out renders
            b = sim.generate(ev.seed, 0)
            report = {"test_images": float(len(b["rgb"])),
                      "hole_l1": float(self._inpaint(segmenter, b["rgb"], seed=ev.seed)["hole_l1"])}  # fmt: skip
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "part_segmentation_eval.json").write_text(json.dumps(report, indent=2) + "\n")
            return report
        test = []
        for index in range(math.ceil(ev.samples / ev.batch_size)):
            b = sim.generate(ev.seed, index)
            n = min(ev.batch_size, ev.samples - index * ev.batch_size)
            fold = b["object_seed"][:n].long().cpu() % ev.folds  # by object: no object in two folds
            test.append((b["rgb"][:n].to(self.device), b["seg"][:n].cpu(), fold))
        k = min(8, len(test[0][0]))
        predicted = segmenter(test[0][0][:k]).argmax(1).cpu()
        figure = torch.cat([test[0][0][:k].cpu(), colour_labels(test[0][1][:k]), colour_labels(predicted)])
        counts = self._fold_counts(segmenter, test, classes)
        report = {"test_images": float(ev.samples), "folds": float(ev.folds), **fold_scores(counts),
                  "parts_not_scored": parts_not_scored(scored_classes(counts))}  # fmt: skip
        if ev.prior_samples:  # the trivial row: one label map for every test image
            prior = F.one_hot(self._label_prior(renders, classes), classes).permute(2, 0, 1).float().to(self.device)
            constant = self._fold_counts(lambda rgb: prior.expand(len(rgb), -1, -1, -1), test, classes)
            report |= {f"constant/{key}": value for key, value in fold_scores(constant).items()}
        snapshots = sorted((self.run_dir / "snapshots").glob("step*")) if self.run_dir else []
        if snapshots and ev.folds > 1:  # the paper's protocol: weights chosen on one fold, scored on the others
            candidates = [counts]
            for snapshot in snapshots:
                state = torch.load(snapshot / "segmenter.pt", map_location="cpu", weights_only=True)
                candidate = self._network()
                candidate.load_state_dict(state)
                candidates.append(self._fold_counts(candidate.to(self.device).eval(), test, classes))
            selected, chosen = selected_scores(torch.stack(candidates))
            names = ["last", *(p.name for p in snapshots)]
            report |= selected | {"selected/candidates": float(len(candidates))}
            report["selected/chosen"] = [names[c] for c in chosen]
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(figure, columns=len(figure) // 3), out / "part_segmentation_eval.png")
        (out / "part_segmentation_eval.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
