"""SimGAN's digit experiment: does a classifier trained on refined printed digits read handwriting better?

Synthetic digits are printed from fonts (``font_digits``); the real ones are handwritten
(``real_digits``: MNIST-5k or UCI), split once into two class-stratified halves. SimGAN's
discriminator saw the unlabeled half; the labeled other half is the test set (``half`` swaps
them). The same classifier is trained for the same steps on synthetic images, on the same images
refined (labels unchanged), and on the labeled real half (the ceiling), each with several seeds,
and tested on the test half. The paper's tables report the share of the synthetic-to-real gap
that refinement closes, ``(err_syn − err_ref) / (err_syn − err_real)``; it is computed per
classifier seed (the rows share seeds) and summarized with its 95% interval.

A real-vs-refined classifier trained afterwards stands in for the paper's visual Turing test:
its held-out accuracy is 50% when refined digits cannot be told from handwritten ones; the
same classifier on real-vs-synthetic gives the starting point.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError
from renderloop.datasets.sources import build_source, source_config
from renderloop.images import image_grid, save_png
from renderloop.stats import mean_ci95

from .downstream import fit, predict

__all__ = ["DigitClassifier", "synthetic_digits", "real_digit_splits", "train_classifier", "error_rate",
           "gap_closed", "digits_experiment"]  # fmt: skip


class DigitClassifier(nn.Module):
    """``[B, 3, H, W]`` digit image → ``[B, classes]`` logits (a small LeNet-like CNN)."""

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.mean(1, keepdim=True)).mean((2, 3)))


def synthetic_digits(source_node, count: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` printed digits ``[N, 3, H, W]`` in [0, 1] and their labels ``[N]`` (CPU)."""
    name, cfg = source_config(source_node)
    if name != "font_digits":
        raise ConfigError("method.data.synthetic", f"the digit experiment needs font_digits; got {name!r}")
    source = build_source(name, cfg, device)
    images, labels = [], []
    for batch_index in range(math.ceil(count / cfg.batch_size)):
        batch = source.generate(seed, batch_index)
        images.append(batch["rgb"].float().cpu())
        labels.append(batch["label"].cpu())
    return torch.cat(images)[:count], torch.cat(labels)[:count]


def _as_images(gray: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(gray).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def real_digit_splits(source_node) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The real digits as SimGAN's stream sees them: ``unlabeled`` (the discriminator's half, here
    with its labels for the ceiling row) and ``test`` (the other half), each images and labels.

    Raises:
        ConfigError: a real stream that is not the unlabeled half of a ``real_digits`` dataset.
        RuntimeError: halves that share an image (the split is broken).
    """
    from renderloop.datasets.digits import load_real_digits, split_indices

    name, cfg = source_config(source_node)
    if name != "real_digits" or cfg.part != "unlabeled":
        raise ConfigError("method.data.real", f"the digit experiment needs real_digits with part=unlabeled; got {name}")
    unlabeled, test = split_indices(cfg.dataset, cfg.half)
    if set(unlabeled.tolist()) & set(test.tolist()):
        raise RuntimeError(f"real_digits {cfg.dataset}: the unlabeled and test halves share images")
    out = {}
    for part in ("unlabeled", "test"):
        images, labels, _ = load_real_digits(cfg.dataset, part, cfg.half, cfg.resolution)
        out[part] = (_as_images(images), torch.as_tensor(labels))
    return out


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Roll a batch by up to 2 pixels each way: handwriting is not centred exactly."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, (dy, dx), (2, 3))


def train_classifier(images, labels, *, steps: int, batch_size: int, lr: float, seed: int, device,
                     classes: int = 10, width: int = 32) -> DigitClassifier:  # fmt: skip
    """Fit a :class:`DigitClassifier` (cross-entropy, small shifts as augmentation)."""
    return fit(lambda: DigitClassifier(classes, width), images, labels, F.cross_entropy, steps=steps,
               batch_size=batch_size, lr=lr, seed=seed, device=device, augment=_shift)  # fmt: skip


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``labels`` whose arg-max logit is another class."""
    return (logits.argmax(-1) != labels).float().mean().item()


def gap_closed(err_synthetic: float, err_refined: float, err_real: float) -> float:
    """Share of the synthetic-to-real error gap that refinement closes (1: as good as real data,
    0: no better than raw synthetic, negative: worse)."""
    gap = err_synthetic - err_real
    if gap <= 0:
        return math.nan  # no gap to close
    return (err_synthetic - err_refined) / gap


def _real_vs(other: torch.Tensor, real: torch.Tensor, fit: dict, seed: int, device) -> float:
    """Held-out accuracy of a classifier telling ``real`` from ``other`` (half of each to train)."""
    n = min(len(other), len(real))
    gen = torch.Generator().manual_seed(seed)
    a, b = other[torch.randperm(len(other), generator=gen)[:n]], real[torch.randperm(len(real), generator=gen)[:n]]
    half = n // 2
    x_train, x_test = torch.cat([a[:half], b[:half]]), torch.cat([a[half:], b[half:]])
    y_train = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    y_test = torch.cat([torch.zeros(n - half, dtype=torch.long), torch.ones(n - half, dtype=torch.long)])
    model = train_classifier(x_train, y_train, **{**fit, "seed": seed}, classes=2)
    return 1 - error_rate(predict(model, x_test, device), y_test)


def digits_experiment(cfg, refiner: nn.Module, device: torch.device, out_dir: str | Path) -> dict[str, float]:
    """Classifiers on synthetic, refined and real digits, tested on the held-out real half; JSON and a figure."""
    ev = cfg.evaluation
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    synthetic_x, synthetic_y = synthetic_digits(cfg.data["synthetic"], ev.train_samples, ev.seed, device)
    real = real_digit_splits(cfg.data["real"])
    (real_x, real_y), (test_x, test_y) = real["unlabeled"], real["test"]
    refiner = refiner.to(device).eval()
    refined_x = predict(refiner, synthetic_x, device)

    fit = {"steps": ev.steps, "batch_size": ev.batch_size, "lr": ev.lr, "device": device, "width": ev.classifier_width}
    rows = {"synthetic": (synthetic_x, synthetic_y), "refined": (refined_x, synthetic_y), "real": (real_x, real_y)}
    errors: dict[str, list[float]] = {name: [] for name in rows}
    for k in range(ev.classifier_seeds):
        for name, (images, labels) in rows.items():
            model = train_classifier(images, labels, **fit, seed=ev.seed + k)
            errors[name].append(error_rate(predict(model, test_x, device), test_y))
    closed = [gap_closed(*(errors[n][k] for n in rows)) for k in range(ev.classifier_seeds)]

    results: dict[str, float] = {"test_images": len(test_x), "classifier_seeds": ev.classifier_seeds,
                                 "constant_error": 1 - torch.bincount(test_y).max().item() / len(test_y)}  # fmt: skip
    for name, values in errors.items():
        summary = mean_ci95(values)
        results[f"{name}_error"], results[f"{name}_error_ci95"] = summary.mean, summary.half_width
    summary = mean_ci95([c for c in closed if not math.isnan(c)] or [math.nan])
    results["gap_closed"], results["gap_closed_ci95"] = summary.mean, summary.half_width
    turing = {"refined": refined_x, "synthetic": synthetic_x}
    for name, images in turing.items():
        results[f"real_vs_{name}_accuracy"] = _real_vs(images, real_x, fit, ev.seed, device)

    k = min(ev.figure_rows, len(synthetic_x), len(test_x))
    spread = torch.linspace(0, len(test_x) - 1, k).long()  # the test half is in dataset order
    grid = torch.cat([synthetic_x[:k], refined_x[:k], test_x[spread]])
    save_png(image_grid(grid, columns=k), out_dir / "simgan_eval.png")
    (out_dir / "simgan_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
