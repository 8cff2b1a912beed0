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
from typing import Any, NamedTuple

import torch

from renderloop.models.stylegan2.latents import ViewCodes, sample_ws

__all__ = ["AZIMUTH_BINS", "circular_mean", "circular_spread_deg", "azimuth_bin", "swapped_azimuths", "SwappedViews",
           "swapped_views",
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
    return swapped_views(G, oracle, k, codes, contents).azimuth


class SwappedViews(NamedTuple):
    """What the oracle sees in each code's (row) images of each content (column), ``[C, N]``."""

    azimuth: torch.Tensor
    elevation: torch.Tensor
    valid: torch.Tensor | None
    """One object covering ≥ 10% of the image (only asked for with ``objects``)."""
    size: torch.Tensor | None
    """The square root of the object's share of the image: its apparent size (with ``objects``)."""


@torch.no_grad()
def swapped_views(G, oracle, k: int, codes: torch.Tensor, contents: torch.Tensor,
                  objects: bool = False) -> SwappedViews:  # fmt: skip
    """The oracle's viewpoints of every content with each code's first ``k`` styles and, with
    ``objects``, its masks too (C × N more calls)."""
    if not 1 <= k <= G.num_ws:
        raise ValueError(f"k must be in [1, {G.num_ws}] (the generator's styles); got {k}")
    from .gan_quality import one_object

    azimuths, elevations, valid, sizes = [], [], [], []
    for code in codes:
        images = _swapped_images(G, k, code, contents)
        azimuth, elevation = oracle.viewpoint(images)
        azimuths.append(azimuth)
        elevations.append(elevation)
        if objects:
            masks = oracle.mask(images)
            valid.append(one_object(masks).cpu())
            sizes.append(masks.float().mean((1, 2)).sqrt().cpu())
    if not objects:
        return SwappedViews(torch.stack(azimuths), torch.stack(elevations), None, None)
    return SwappedViews(torch.stack(azimuths), torch.stack(elevations), torch.stack(valid), torch.stack(sizes))


def layer_sweep(G, oracle, ks=(2, 4, 6), codes: int = 8, contents: int = 16, psi: float = 0.7,
                seed: int = 0) -> dict[int, dict[str, float]]:  # fmt: skip
    """For each k: the mean azimuth spread of one code across contents (small: k sets the view)
    and of one content across codes (large: the view moves with the code); the same for elevation
    (standard deviations)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    code_ws = sample_ws(G, torch.randn(codes, G.z_dim, generator=gen).to(device), psi=psi)
    content_ws = sample_ws(G, torch.randn(contents, G.z_dim, generator=gen).to(device), psi=psi)
    report = {}
    for k in ks:
        seen = swapped_views(G, oracle, k, code_ws, content_ws)
        elevation = torch.rad2deg(seen.elevation)
        report[k] = {"code_spread_deg": float(circular_spread_deg(seen.azimuth, 1).mean()),
                     "content_spread_deg": float(circular_spread_deg(seen.azimuth, 0).mean()),
                     "code_elevation_spread_deg": float(elevation.std(1).mean()),
                     "content_elevation_spread_deg": float(elevation.std(0).mean())}  # fmt: skip
    return report


def label_codes(azimuths: torch.Tensor, max_spread_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, N]`` azimuths of each candidate code's samples → (kept ``[C]`` bool: its samples agree
    within ``max_spread_deg``, label ``[C]``: the bin of their circular mean)."""
    return circular_spread_deg(azimuths, 1) <= max_spread_deg, azimuth_bin(circular_mean(azimuths, 1))


@torch.no_grad()
def annotate(G, oracle, k: int, candidates: int = 32, samples_per_code: int = 4, max_spread_deg: float = 20.0,
             psi: float = 0.7, seed: int = 0, require_object: bool = True,
             max_elevation_spread_deg: float | None = None, max_size_spread: float | None = None,
             ) -> tuple[ViewCodes, dict[str, Any]]:  # fmt: skip
    """Consistent view codes named by their label (``az<degrees>_<n>``) and a report: each kept
    code's bin, the candidates looked at, how many were passed over for a broken sample, and the
    oracle's calls for them.

    A code's camera is one elevation and distance for every content it is drawn with, so a code
    whose contents' elevation or apparent size vary makes a network that learns from it explain
    the difference with the shape. The report gives the kept codes' spreads of both across contents
    (elevation in degrees, size as the standard deviation of its log); ``max_elevation_spread_deg``
    and ``max_size_spread`` (which needs ``require_object``) pass over codes above them."""
    if max_size_spread is not None and not require_object:
        raise ValueError("annotate(): max_size_spread needs require_object (the size comes from the masks)")
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    code_ws = sample_ws(G, torch.randn(candidates, G.z_dim, generator=gen).to(device), psi=psi)
    content_ws = sample_ws(G, torch.randn(samples_per_code, G.z_dim, generator=gen).to(device), psi=psi)
    before = dict(oracle.calls)
    seen = swapped_views(G, oracle, k, code_ws, content_ws, objects=require_object)
    kept, labels = label_codes(seen.azimuth, max_spread_deg)
    broken = (kept & ~seen.valid.all(1).to(kept.device)) if require_object else torch.zeros_like(kept)
    kept &= ~broken
    elevation_spread = torch.rad2deg(seen.elevation).std(1).to(kept.device)
    size_spread = seen.size.clamp_min(1e-3).log().std(1).to(kept.device) if require_object else None
    inconsistent = torch.zeros_like(kept)
    if max_elevation_spread_deg is not None:
        inconsistent |= elevation_spread > max_elevation_spread_deg
    if max_size_spread is not None:
        inconsistent |= size_spread > max_size_spread
    inconsistent &= kept
    kept &= ~inconsistent
    codes, bins = ViewCodes(k), {}
    for i in kept.nonzero()[:, 0].tolist():
        name = f"az{int(labels[i]) * 360 // AZIMUTH_BINS:03d}_{sum(b == int(labels[i]) for b in bins.values())}"
        codes.add(name, code_ws[i, :k].cpu())
        bins[name] = int(labels[i])
    calls = {kind: count - before.get(kind, 0) for kind, count in oracle.calls.items()}
    report = {"k": k, "candidates": candidates, "kept": len(bins), "passed_over_broken": int(broken.sum()),
              "passed_over_inconsistent": int(inconsistent.sum()), "labels": bins,
              "bins_covered": len(set(bins.values())), "oracle_calls": sum(calls.values()),
              "oracle_calls_by_kind": calls,
              "kept_elevation_spread_deg": _mean_and_max(elevation_spread[kept]),
              "kept_size_spread": _mean_and_max(size_spread[kept]) if size_spread is not None else None}  # fmt: skip
    return codes, report


def _mean_and_max(values: torch.Tensor) -> dict[str, float] | None:
    return {"mean": float(values.mean()), "max": float(values.max())} if len(values) else None


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
