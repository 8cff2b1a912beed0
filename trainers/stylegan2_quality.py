"""``renderloop eval method=stylegan2``: how close a generator's images are to its data.

Feature distances (Fréchet, KID, precision/recall) on a fixed encoder — the oracle segmenter's
features when ``method.evaluation.oracle_run`` names a trained ``method=oracle`` run, else a seeded
random encoder — with the floor of two disjoint real sets beside them. On the simulator category,
with an oracle, also the share of samples the GAN methods can use (one object covering ≥10% of
the image, by the oracle's mask) and the total-variation distance between the oracle's azimuth
histograms (12 bins) of samples and renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from renderloop.config import ConfigError
from renderloop.datasets import category
from renderloop.datasets.sources import build_source, source_config

from .gan_quality import RandomEncoder, frechet_distance, histogram_tv, kernel_distance, one_object, precision_recall

__all__ = ["QualityConfig", "quality_report"]

REAL_SEED = 7_000_001
"""Seed of the evaluation's real images; training streams use the run's producer seeds."""


@dataclass
class QualityConfig:
    samples: int = 2048
    """Generated images scored, and the size of each of the two real sets."""
    batch_size: int = 64
    seed: int = 0
    oracle_run: str = ""
    """A ``method=oracle`` run directory: its segmenter encodes the images and judges masks and
    viewpoints. Empty: a seeded random encoder, and no mask or viewpoint scores."""
    kid_subsets: int = 10
    kid_subset_size: int = 1000
    nearest_k: int = 3

    def __post_init__(self) -> None:
        for key in ("samples", "batch_size", "kid_subsets", "kid_subset_size", "nearest_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")
        if self.samples <= self.nearest_k:
            raise ConfigError("method.evaluation.samples", f"must exceed nearest_k={self.nearest_k}")


def _real_images(source_node, count: int, offset: int, batch_size: int, device) -> torch.Tensor:
    """``count`` images ``[N, 3, H, W]`` in [0, 1] of the GAN's data source, from batch ``offset``
    on; simulator categories draw held-out (``test``) objects."""
    name, cfg = source_config(source_node)
    if name == "simulator" and cfg.category:
        cfg = category.held_out(cfg)
    cfg = replace(cfg, batch_size=batch_size) if hasattr(cfg, "batch_size") else cfg
    source = build_source(name, cfg, device)
    batches = range(offset, offset + math.ceil(count / batch_size))
    images = [source.generate(REAL_SEED, i)["rgb"].float().cpu() for i in batches]
    return torch.cat(images)[:count]


@torch.no_grad()
def _fakes(G, count: int, batch_size: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, count, batch_size):
        z = torch.randn(min(batch_size, count - start), G.z_dim, generator=gen).to(device)
        out.append(((G(z, noise_mode="const").float() + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def quality_report(G, source_node, ev: QualityConfig, device) -> dict:
    """The scores of one generator against its data source (see the module docstring)."""
    n = ev.samples
    real_a = _real_images(source_node, n, 0, ev.batch_size, device)
    real_b = _real_images(source_node, n, math.ceil(n / ev.batch_size), ev.batch_size, device)
    fake = _fakes(G, n, ev.batch_size, ev.seed, device)
    oracle = None
    if ev.oracle_run:
        from .oracle import Oracle

        oracle = Oracle.load(ev.oracle_run, device=str(device))
    encode = oracle.embed if oracle else RandomEncoder(seed=ev.seed).to(device)

    def features(images):
        return torch.cat([encode(images[i : i + ev.batch_size].to(device)).cpu() for i in range(0, n, ev.batch_size)])

    fa, fb, ff = features(real_a), features(real_b), features(fake)
    size = min(ev.kid_subset_size, n)
    kid, kid_std = kernel_distance(fa, ff, ev.kid_subsets, size, ev.seed)
    kid_floor, _ = kernel_distance(fa, fb, ev.kid_subsets, size, ev.seed)
    precision, recall = precision_recall(fa, ff, ev.nearest_k)
    report = {
        "encoder": "oracle segmenter" if oracle else f"random (seed {ev.seed})",
        "samples": n,
        "fd": frechet_distance(fa, ff),
        "fd_real_floor": frechet_distance(fa, fb),
        "kid": kid,
        "kid_std": kid_std,
        "kid_real_floor": kid_floor,
        "precision": precision,
        "recall": recall,
    }
    name, cfg = source_config(source_node)
    if oracle is not None and name == "simulator" and cfg.category:
        valid, azimuth = {}, {}
        for label, images in (("samples", fake), ("renders", real_a)):
            masks, angles = [], []
            for i in range(0, n, ev.batch_size):
                batch = images[i : i + ev.batch_size]
                masks.append(oracle.mask(batch).cpu())
                angles.append(oracle.viewpoint(batch)[0].cpu())
            valid[label] = float(one_object(torch.cat(masks)).float().mean())
            azimuth[label] = torch.cat(angles)
        report |= {
            "valid_mask_share": valid["samples"],
            "valid_mask_share_renders": valid["renders"],
            "azimuth_tv": histogram_tv(azimuth["samples"], azimuth["renders"], 12, 0.0, 2 * math.pi),
            "oracle_calls": dict(oracle.calls),
        }
    return report
