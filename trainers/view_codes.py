"""GANverse3D's view codes: which style layers set the viewpoint, and their labels, emulated.

The first k styles of a StyleGAN control the camera, the rest the object. ``layer_sweep`` measures
that for each k: sample view codes and contents, give every content each code's first k styles
(``swapped_azimuths``), and ask the oracle viewpoint regressor. Where k controls the view, one
code's images agree in azimuth across contents (small code spread) while one content's images
move with the code (large content spread).

``annotate`` emulates the paper's person, who picks a few consistent view codes and labels each
with one of 12 azimuth bins at elevation 0: the oracle looks at a few contents per candidate
code, codes whose azimuths agree within ``max_spread_deg`` are kept, and each is labelled with the
bin of its circular mean. A person would also pass over a code whose images are broken, so with
``require_object`` a code is kept only if the oracle segmenter sees one object (≥ 10% of the
image) in each of its samples. Only the coarse bins leave this module, never the oracle's angles
or masks; the oracle's calls are counted (its ``calls``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from renderloop.models.stylegan2.latents import ViewCodes, sample_ws

__all__ = ["AZIMUTH_BINS", "circular_mean", "circular_spread_deg", "azimuth_bin", "swapped_azimuths", "swapped_views",
           "layer_sweep", "label_codes", "annotate", "save_annotation", "code_grid"]  # fmt: skip

AZIMUTH_BINS = 12
"""The person's labels: azimuth bins of 30°, bin 0 centred on the front (azimuth 0)."""


def circular_mean(angles: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean direction of ``angles`` (radians) along ``dim``, in [0, 2π)."""
    return torch.atan2(angles.sin().mean(dim), angles.cos().mean(dim)) % (2 * math.pi)


def circular_spread_deg(angles: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Circular standard deviation ``sqrt(-2 ln R)`` of ``angles`` (radians) along ``dim``, in degrees;
    0 when they all agree."""
    length = torch.stack([angles.sin().mean(dim), angles.cos().mean(dim)]).norm(dim=0).clamp(1e-12, 1.0)
    return torch.rad2deg((-2 * length.log()).clamp_min(0).sqrt())


def azimuth_bin(angles: torch.Tensor) -> torch.Tensor:
    """The 30° bin of each azimuth (radians): bin b covers ``[30b - 15°, 30b + 15°)``."""
    width = 2 * math.pi / AZIMUTH_BINS
    return torch.floor((angles % (2 * math.pi) + width / 2) / width).long() % AZIMUTH_BINS


def _swapped_images(G, k: int, code: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] of every content ``ws [N, num_ws, w_dim]`` with the first ``k`` styles of ``code``."""
    ws = contents.clone()
    ws[:, :k] = code[:k]
    return ((G.synthesis(ws, noise_mode="const").float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def swapped_azimuths(G, oracle, k: int, codes: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
    """``[C, N]`` oracle azimuths of every content ``ws [N, num_ws, w_dim]`` given the first ``k``
    styles of every code ``ws [C, num_ws, w_dim]`` (C × N oracle calls)."""
    return swapped_views(G, oracle, k, codes, contents)[0]


@torch.no_grad()
def swapped_views(G, oracle, k: int, codes: torch.Tensor, contents: torch.Tensor,
                  objects: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``swapped_azimuths`` and, with ``objects``, ``[C, N]`` whether the oracle segmenter sees one
    object covering ≥ 10% of each image (C × N more calls)."""
    if not 1 <= k <= G.num_ws:
        raise ValueError(f"k must be in [1, {G.num_ws}] (the generator's styles); got {k}")
    from .gan_quality import one_object

    azimuths, valid = [], []
    for code in codes:
        images = _swapped_images(G, k, code, contents)
        azimuths.append(oracle.viewpoint(images)[0])
        if objects:
            valid.append(one_object(oracle.mask(images)).cpu())
    return torch.stack(azimuths), (torch.stack(valid) if objects else None)


def layer_sweep(G, oracle, ks=(2, 4, 6), codes: int = 8, contents: int = 16, psi: float = 0.7,
                seed: int = 0) -> dict[int, dict[str, float]]:  # fmt: skip
    """For each k: the mean azimuth spread of one code across contents (small: k sets the view)
    and of one content across codes (large: the view moves with the code)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    code_ws = sample_ws(G, torch.randn(codes, G.z_dim, generator=gen).to(device), psi=psi)
    content_ws = sample_ws(G, torch.randn(contents, G.z_dim, generator=gen).to(device), psi=psi)
    report = {}
    for k in ks:
        azimuths = swapped_azimuths(G, oracle, k, code_ws, content_ws)
        report[k] = {"code_spread_deg": float(circular_spread_deg(azimuths, 1).mean()),
                     "content_spread_deg": float(circular_spread_deg(azimuths, 0).mean())}  # fmt: skip
    return report


def label_codes(azimuths: torch.Tensor, max_spread_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, N]`` azimuths of each candidate code's samples → (kept ``[C]`` bool: its samples agree
    within ``max_spread_deg``, label ``[C]``: the bin of their circular mean)."""
    return circular_spread_deg(azimuths, 1) <= max_spread_deg, azimuth_bin(circular_mean(azimuths, 1))


@torch.no_grad()
def annotate(G, oracle, k: int, candidates: int = 32, samples_per_code: int = 4, max_spread_deg: float = 20.0,
             psi: float = 0.7, seed: int = 0, require_object: bool = True
             ) -> tuple[ViewCodes, dict[str, Any]]:  # fmt: skip
    """Consistent view codes named by their label (``az<degrees>_<n>``) and a report: each kept
    code's bin, the candidates looked at, how many were passed over for a broken sample, and the
    oracle's calls for them."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    code_ws = sample_ws(G, torch.randn(candidates, G.z_dim, generator=gen).to(device), psi=psi)
    content_ws = sample_ws(G, torch.randn(samples_per_code, G.z_dim, generator=gen).to(device), psi=psi)
    before = dict(oracle.calls)
    azimuths, valid = swapped_views(G, oracle, k, code_ws, content_ws, objects=require_object)
    kept, labels = label_codes(azimuths, max_spread_deg)
    broken = (kept & ~valid.all(1).to(kept.device)) if require_object else torch.zeros_like(kept)
    kept &= ~broken
    codes, bins = ViewCodes(k), {}
    for i in kept.nonzero()[:, 0].tolist():
        name = f"az{int(labels[i]) * 360 // AZIMUTH_BINS:03d}_{sum(b == int(labels[i]) for b in bins.values())}"
        codes.add(name, code_ws[i, :k].cpu())
        bins[name] = int(labels[i])
    calls = {kind: count - before.get(kind, 0) for kind, count in oracle.calls.items()}
    report = {"k": k, "candidates": candidates, "kept": len(bins), "passed_over_broken": int(broken.sum()),
              "labels": bins, "bins_covered": len(set(bins.values())), "oracle_calls": sum(calls.values()),
              "oracle_calls_by_kind": calls}  # fmt: skip
    return codes, report


def save_annotation(codes: ViewCodes, report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """``view_codes.pt`` (for ``source=stylegan2``'s ``view_codes``) and ``view_labels.json`` (each
    code's azimuth bin, for ``method=ganverse3d``'s ``view_labels``) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codes.save(folder / "view_codes.pt")
    (folder / "view_labels.json").write_text(json.dumps(report["labels"], indent=2) + "\n")
    return folder / "view_codes.pt", folder / "view_labels.json"


@torch.no_grad()
def code_grid(G, codes: ViewCodes, contents: int = 4, psi: float = 0.7, seed: int = 1) -> torch.Tensor:
    """Images ``[len(codes) × contents, 3, H, W]`` in [0, 1]: every code (a row) given to the same
    contents (the columns), for checking the labels by eye."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    ws = sample_ws(G, torch.randn(contents, G.z_dim, generator=gen).to(device), psi=psi)
    return torch.cat([_swapped_images(G, codes.view_layers, code, ws) for code in codes.stack().to(device)]).cpu()
