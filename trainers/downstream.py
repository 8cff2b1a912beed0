"""SimGAN's downstream experiment: does training on refined images transfer better to real ones?

The task is estimating the light direction (a unit vector in the camera frame, like gaze) from
one image. A small CNN is trained once on raw simulated images and once on the same images after
refinement (labels unchanged), then both are tested on labeled held-out real-like images; an
estimator trained on labeled real-like images gives the floor. Errors are angles in degrees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError
from renderloop.datasets.sources import build_source, source_config
from renderloop.images import image_grid, save_png

__all__ = [
    "LightEstimator",
    "angular_error_deg",
    "labeled_images",
    "fit",
    "predict",
    "train_estimator",
    "simgan_experiment",
]


class LightEstimator(nn.Module):
    """``[B, 3, H, W]`` image → ``[B, 3]`` unit light direction (camera frame)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
            layers += [nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x).mean((2, 3))), dim=-1)


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between unit vectors ``[N, 3]`` and ``[N, 3]``; ``[N]``."""
    cos = (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def labeled_images(source_node, count: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images ``[N, 3, H, W]`` and light directions ``[N, 3]`` from a simulator config node."""
    name, cfg = source_config(source_node)
    if name != "simulator":
        raise ConfigError("method.data", f"the light-direction experiment needs simulator sources; got {name!r}")
    source = build_source(name, cfg, device)
    images, lights = [], []
    for batch_index in range(math.ceil(count / cfg.batch_size)):
        batch = source.generate(seed, batch_index)
        images.append(batch["rgb"].cpu())
        lights.append(batch["light"].cpu())
    return torch.cat(images)[:count], torch.cat(lights)[:count]


def fit(
    make_model, images, targets, loss_fn, *, steps: int, batch_size: int, lr: float, seed: int, device, augment=None
) -> nn.Module:
    """Train ``make_model()`` on random batches of ``(images, targets)`` (Adam, cosine decay); the
    downstream models of every SimGAN experiment share it. ``augment(x, generator)`` may alter a
    batch; same seed → same run. The data moves to ``device`` once: on a GPU shared by several
    runs, a host gather and copy per step would dominate these small models."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = torch.device(device)
    images, targets = images.to(device), targets.to(device)
    model = make_model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen).to(device, non_blocking=True)
        x, y = images[idx], targets[idx]
        if augment is not None:
            x = augment(x, gen)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def train_estimator(images, lights, *, steps: int, batch_size: int, lr: float, seed: int, device) -> LightEstimator:
    """Fit a :class:`LightEstimator` with a 1 − cos loss."""

    def loss(pred, y):
        return (1 - (pred * y).sum(-1)).mean()

    return fit(
        LightEstimator, images, lights, loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device
    )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    """``model`` applied to ``images`` in batches on ``device``, gathered on the CPU."""
    return torch.cat([model(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def simgan_experiment(cfg, refiner: nn.Module, device: torch.device, out_dir: str | Path) -> dict[str, float]:
    """Train estimators on raw and refined simulated images, test on real-like; write a figure and JSON."""
    ev = cfg.evaluation
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_x, train_y = labeled_images(cfg.data["synthetic"], ev.train_samples, ev.seed, device)
    test_x, test_y = labeled_images(cfg.data["real"], ev.test_samples, ev.seed + 1, device)
    real_x, real_y = labeled_images(cfg.data["real"], ev.train_samples, ev.seed + 2, device)
    refiner = refiner.to(device).eval()
    refined_x = predict(refiner, train_x, device)

    fit = {"steps": ev.steps, "batch_size": ev.batch_size, "lr": ev.lr, "seed": ev.seed, "device": device}
    results: dict[str, float] = {}
    for name, images, labels in (
        ("synthetic", train_x, train_y),
        ("refined", refined_x, train_y),
        ("real", real_x, real_y),
    ):
        errors = angular_error_deg(predict(train_estimator(images, labels, **fit), test_x, device), test_y)
        results[f"{name}_mean_error_deg"] = errors.mean().item()
        results[f"{name}_median_error_deg"] = errors.median().item()
    results["refined_minus_synthetic_deg"] = results["refined_mean_error_deg"] - results["synthetic_mean_error_deg"]

    k = min(ev.figure_rows, len(train_x), len(test_x))
    rows = torch.cat([train_x[:k], refined_x[:k], test_x[:k]])
    save_png(image_grid(rows, columns=k), out_dir / "simgan_eval.png")
    (out_dir / "simgan_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
