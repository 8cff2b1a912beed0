"""DatasetGAN's style interpreter (``method=datasetgan``): per-pixel part labels from a frozen GAN.

Zhang et al., "DatasetGAN: Efficient Labeled Data Factory with Minimal Human Effort" (CVPR 2021).
K GAN samples (seeded) get part labels from the oracle segmenter, called exactly K times per job
where the paper asks a person (rank 0 asks; the other ranks receive its labels), a count logged
with the losses (``oracle_calls``) and in the evaluation report; the annotations live in the
method's checkpoint state, so a resumed run asks nothing again. An ensemble of ``members`` small
MLPs (``models/style_interpreter.py``) learns the labels from every synthesis layer's features at
random pixels of the K images, each member on its own half of each step's pixels. A fixed share
of each image's pixels is held out: every ``validate_every`` steps each member is scored there
and its best weights are kept (early stopping by selection). ``renderloop eval`` writes the K
annotations for review, the validation scores (optimistic: the same pixels chose the weights, and
they lie among the training pixels of the same K images; the downstream test is what counts), and
``interpreter.pt``, which the ``datasetgan`` source loads to label new samples.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError, check_number
from renderloop.datasets import category
from renderloop.models.style_interpreter import StyleInterpreter, majority_vote, save_interpreter
from renderloop.models.stylegan2.io import load_generator
from renderloop.models.stylegan2.latents import feature_channels, pixel_features, sample_ws

from .distributed import from_main, is_main_rank
from .method import Method, ModelSpec, Phase
from .oracle import Oracle, colour_labels
from .scores import confusion, mean_iou, scored_classes

__all__ = ["DatasetGANConfig", "DatasetGAN"]


@dataclass
class DatasetGANConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """No streams: the K annotated samples are drawn from the generator itself."""
    generator: str = "???"
    """The frozen GAN (``renderloop eval method=stylegan2_vehicle`` exports one)."""
    network: str = "G_ema"
    oracle_run: str = "???"
    """A ``method=oracle`` run: the annotator."""
    annotations: int = 16
    """K: GAN samples labelled by the oracle (its budget)."""
    annotation_seed: int = 0
    truncation_psi: float = 0.7
    truncation_cutoff: int = 8
    """Styles truncated (``source=datasetgan``'s key: the official car setting; 0: every style)."""
    members: int = 10
    pixels: int = 4096
    """Training pixels per step, over all K images."""
    holdout: float = 0.1
    """Share of each annotated image's pixels held out for early stopping and never trained on:
    the interpreter learns from the rest of its K annotations, where the K-labelled rows use all
    of theirs (the official code holds none out; this works against DatasetGAN)."""
    fresh_samples: int = 64
    """New GAN samples on which ``renderloop eval`` scores the interpreter's labels against the
    oracle's (outside the annotation budget, counted apart): how it generalizes beyond its K
    images, whose held-out pixels neighbour its training pixels. 0: skip."""
    validate_every: int = 50
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.data:
            raise ConfigError("method.data", f"datasetgan reads no streams; got roles {sorted(self.data)}")
        if self.truncation_cutoff < 0:
            raise ConfigError("method.truncation_cutoff", f"must be >= 0; got {self.truncation_cutoff}")
        if self.fresh_samples < 0:
            raise ConfigError("method.fresh_samples", f"must be >= 0; got {self.fresh_samples}")
        for key in ("annotations", "members", "pixels", "validate_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}", f"must be >= 1; got {getattr(self, key)}")
        check_number("method.holdout", self.holdout, above=0, below=1)
        check_number("method.truncation_psi", self.truncation_psi, above=0, at_most=1)
        check_number("method.lr", self.lr, above=0)
        category.check_generator_held_out(self.generator, "method.generator")


class DatasetGAN(Method):
    """The style interpreter on K oracle-annotated samples of a frozen generator."""

    name = "datasetgan"

    def __init__(self, config: DatasetGANConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.classes = 1 + len(category.PART_NAMES)
        self.annotated: dict[str, torch.Tensor] = {}  # ws, labels, holdout (per pixel), calls
        self.best: list[dict[str, torch.Tensor] | None] = [None] * config.members
        self.best_accuracy = [-1.0] * config.members
        self.updates = 0
        self._holdout_features: torch.Tensor | None = None

    def build(self) -> dict[str, ModelSpec]:
        G = load_generator(self.config.generator, self.config.network).requires_grad_(False)
        interpreter = StyleInterpreter(feature_channels(G), self.classes, self.config.members)
        return {"interpreter": ModelSpec(interpreter, lr=self.config.lr), "G": ModelSpec(G, trainable=False)}

    def phases(self) -> list[Phase]:
        return [Phase("interpreter", "interpreter", ())]

    @torch.no_grad()
    def _annotate(self, G: nn.Module) -> None:
        """K samples and their oracle labels, once per job (restored from checkpoints after that).

        Every rank draws the same K samples; rank 0 alone asks the oracle (the one annotator) and
        hands its label maps to the others, so a job of R ranks asks K times, not K × R."""
        if self.annotated:
            return
        cfg = self.config
        z = torch.randn(cfg.annotations, G.z_dim, generator=torch.Generator().manual_seed(cfg.annotation_seed))
        ws = sample_ws(G, z.to(self.device), psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff or None)
        images = ((G.synthesis(ws, noise_mode="const").float() + 1) / 2).clamp(0, 1)
        answer = self._ask_oracle(images) if is_main_rank() else None
        labels = from_main(str(answer) if isinstance(answer, Exception) else answer)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(labels, str):
            raise RuntimeError(f"rank 0 could not annotate: {labels}")
        pixels = labels[0].numel()
        gen = torch.Generator().manual_seed(cfg.annotation_seed + 1)
        holdout = torch.rand(cfg.annotations, pixels, generator=gen) < cfg.holdout
        self.annotated = {"ws": ws, "labels": labels.to(self.device).flatten(1), "holdout": holdout.to(self.device),
                          "calls": torch.tensor(cfg.annotations, device=self.device)}  # fmt: skip

    def _ask_oracle(self, images: torch.Tensor) -> torch.Tensor | Exception:
        """The oracle's K label maps (on the CPU, to be broadcast), or the error that stopped it:
        an error on rank 0 must also reach the other ranks, which would otherwise wait for ever."""
        try:
            oracle = Oracle.load(self.config.oracle_run, str(self.device), budget=self.config.annotations)
            labels = oracle.segment(images)
        except Exception as err:  # noqa: BLE001 - raised on every rank by the caller
            return err
        K, asked = self.config.annotations, oracle.calls["segment"]
        if asked != K:
            return RuntimeError(f"the oracle was asked {asked} times, not K={K}")
        return labels.cpu()

    def _training_pixels(self) -> torch.Tensor:
        """``[K, P / K]`` random pixel indices of each image outside its held-out pixels."""
        K = self.config.annotations
        per_image = max(self.config.pixels // K, 2)
        weights = (~self.annotated["holdout"]).float()
        return torch.multinomial(weights, per_image, replacement=True)

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        G, interpreter = nets["G"], nets["interpreter"]
        self._annotate(G)
        pixels = self._training_pixels()
        with torch.no_grad():
            features, _ = pixel_features(G, self.annotated["ws"], pixels)
        target = self.annotated["labels"].gather(1, pixels).flatten()
        features = features.flatten(0, 1).to(next(interpreter.parameters()).dtype)
        order = torch.rand(len(interpreter.members), len(target), device=target.device).argsort(1)
        halves = order[:, : len(target) // 2]  # each member its own half of the pixels
        losses = [F.cross_entropy(m(features[i]), target[i]) for m, i in zip(interpreter.members, halves, strict=True)]
        loss = torch.stack(losses).mean()
        self.updates += 1
        out = {"loss": loss, "oracle_calls": self.annotated["calls"].float()}  # the job's annotations, logged
        if self.updates % self.config.validate_every == 0:
            out["validation_accuracy"] = loss.new_tensor(self._validate(G, interpreter))
        return out

    def _holdout(self, G: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of the held-out pixels (computed once)."""
        mask = self.annotated["holdout"]
        if self._holdout_features is None:
            with torch.no_grad():
                per_image = [pixel_features(G, self.annotated["ws"][i : i + 1], mask[i].nonzero()[:, 0][None])[0][0]
                             for i in range(len(mask))]  # fmt: skip
            self._holdout_features = torch.cat(per_image)
        return self._holdout_features, self.annotated["labels"][mask]

    @torch.no_grad()
    def _validate(self, G: nn.Module, interpreter: StyleInterpreter) -> float:
        """Each member's held-out pixel accuracy; keep its best weights. Returns the mean accuracy."""
        features, labels = self._holdout(G)
        was_training = interpreter.training
        interpreter.eval()
        accuracies = []
        for i, member in enumerate(interpreter.members):
            accuracy = (member(features.to(next(member.parameters()).dtype)).argmax(1) == labels).float().mean().item()
            accuracies.append(accuracy)
            if accuracy > self.best_accuracy[i]:
                self.best_accuracy[i] = accuracy
                self.best[i] = {k: v.detach().cpu().clone() for k, v in member.state_dict().items()}
        interpreter.train(was_training)
        return sum(accuracies) / len(accuracies)

    def selected(self, interpreter: StyleInterpreter) -> StyleInterpreter:
        """A copy of the interpreter with each member at its best held-out weights."""
        chosen = copy.deepcopy(interpreter).float().eval()
        for member, best in zip(chosen.members, self.best, strict=True):
            if best is not None:
                member.load_state_dict(best)
        return chosen

    @torch.no_grad()
    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        from renderloop.images import image_grid, save_png

        G = nets["G"]
        self._annotate(G)
        self._validate(G, nets["interpreter"])  # the last weights compete too
        interpreter = self.selected(nets["interpreter"])
        features, labels = self._holdout(G)
        logits = interpreter(features.float())
        vote = majority_vote(logits)
        counts = confusion(vote, labels, self.classes)
        report = {
            "annotations": self.config.annotations,
            "oracle_calls": int(self.annotated["calls"]),
            "validation_pixels": int(len(labels)),
            "member_validation_accuracy": [round(a, 4) for a in self.best_accuracy],
            "ensemble_validation_accuracy": float((vote == labels).float().mean()),
            "ensemble_validation_miou": mean_iou(counts, scored_classes(counts), background=True),
        }
        out = Path(out_dir)
        save_interpreter(interpreter, out / "interpreter.pt", {"generator": str(self.config.generator),
                         "network": self.config.network, "truncation_psi": self.config.truncation_psi,
                         "truncation_cutoff": self.config.truncation_cutoff})  # fmt: skip
        images = ((G.synthesis(self.annotated["ws"], noise_mode="const").float() + 1) / 2).clamp(0, 1).cpu()
        H, W = images.shape[2:]
        annotations = colour_labels(self.annotated["labels"].view(-1, H, W))
        save_png(image_grid(torch.cat([images, annotations]), columns=len(images)), out / "annotations.png")
        self._generated_figure(out / "interpreter.pt", out / "generated.png")
        report |= self._fresh_scores(out / "interpreter.pt")
        (out / "datasetgan_eval.json").write_text(json.dumps(report, indent=2) + "\n")
        return {k: v for k, v in report.items() if not isinstance(v, list)}

    def _source(self, interpreter: Path, batch_size: int):
        from renderloop.datasets.datasetgan import DatasetGANSource, DatasetGANSourceConfig

        config = DatasetGANSourceConfig(checkpoint=self.config.generator, network=self.config.network,
                                        interpreter=str(interpreter), batch_size=batch_size, drop_share=0.0,
                                        truncation_psi=self.config.truncation_psi,
                                        truncation_cutoff=self.config.truncation_cutoff)  # fmt: skip
        return DatasetGANSource(config, self.device)

    def _fresh_scores(self, interpreter: Path) -> dict[str, float]:
        """The interpreter's labels of ``fresh_samples`` new GAN samples against the oracle's:
        pixel accuracy and dataset-level mIoU, parts only and with the background."""
        n = self.config.fresh_samples
        if not n:
            return {}
        batch = self._source(interpreter, n).generate(self.config.annotation_seed, 1)  # not the figure's batch
        oracle = Oracle.load(self.config.oracle_run, str(self.device))
        truth = oracle.segment(batch["rgb"])
        counts = confusion(batch["seg"].flatten(), truth.flatten(), self.classes)
        scored = scored_classes(counts)
        return {"fresh_samples": n, "fresh_oracle_calls": oracle.calls["segment"],
                "fresh_pixel_accuracy": float((batch["seg"] == truth).float().mean()),
                "fresh_miou": mean_iou(counts, scored, background=False),
                "fresh_miou_with_background": mean_iou(counts, scored, background=True)}  # fmt: skip

    def _generated_figure(self, interpreter: Path, path: Path, pool: int = 40) -> None:
        """New samples labelled by the interpreter: the 8 least uncertain of a pool (kept) above
        its most uncertain tenth (what the source's filter drops), each over its labels."""
        from renderloop.images import image_grid, save_png

        batch = self._source(interpreter, pool).generate(self.config.annotation_seed, 0)
        order = batch["uncertainty"].argsort().cpu()
        dropped = max(1, pool // 10)
        chosen = torch.cat([order[:8], order[-dropped:]])
        rgb, labels = batch["rgb"][chosen].cpu(), colour_labels(batch["seg"][chosen])
        save_png(image_grid(torch.cat([rgb, labels]), columns=len(chosen)), path)

    def state_dict(self) -> dict[str, Any]:
        annotated = {k: v.cpu() for k, v in self.annotated.items()}
        return {"annotated": annotated, "best": self.best, "best_accuracy": self.best_accuracy, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.annotated = {k: v.to(self.device) for k, v in state["annotated"].items()}
        self.best, self.best_accuracy, self.updates = state["best"], state["best_accuracy"], state["updates"]
        self._holdout_features = None
