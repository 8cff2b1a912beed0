"""GANverse3D's view codes: circular statistics and bins with known answers, style swapping that
gives every content a code's first k styles, and the emulated annotator's kept codes and calls."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.trainers.view_codes import (
    annotate,
    azimuth_bin,
    circular_mean,
    circular_spread_deg,
    code_grid,
    label_codes,
    layer_sweep,
    swapped_azimuths,
)


class Annotator:
    """An oracle stand-in whose azimuth is a fixed function of the image, and whose mask is a
    centred square (one object, a quarter of the image) except for images brighter than
    ``broken_above``, where it is empty; counts its calls."""

    def __init__(self, broken_above: float = math.inf) -> None:
        self.calls = {"viewpoint": 0, "segment": 0}
        self.broken_above = broken_above

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["segment"] += len(images)
        h, w = images.shape[-2:]
        masks = torch.zeros(len(images), h, w, dtype=torch.bool)
        masks[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        masks[images.mean((1, 2, 3)) > self.broken_above] = False
        return masks

    def viewpoint(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls["viewpoint"] += len(images)
        azimuth = (images.mean((1, 2, 3)) * 40 * math.pi) % (2 * math.pi)
        return azimuth, torch.zeros_like(azimuth)


def _generator() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, channel_base=64, channel_max=16,
                                     mapping_layers=1)).eval()  # fmt: skip


def test_circular_statistics_and_bins():
    deg = torch.deg2rad
    mean = circular_mean(deg(torch.tensor([350.0, 10.0]))).item()
    assert min(mean, 2 * math.pi - mean) == pytest.approx(0.0, abs=1e-5)  # not 180°
    assert circular_spread_deg(deg(torch.tensor([42.0, 42.0, 42.0]))).item() == pytest.approx(0.0, abs=1e-2)
    assert circular_spread_deg(deg(torch.tensor([0.0, 90.0, 180.0, 270.0]))).item() > 100
    assert azimuth_bin(deg(torch.tensor([14.0, 16.0, 346.0, 344.0, 180.0]))).tolist() == [0, 1, 0, 11, 6]
    azimuths = deg(torch.tensor([[88.0, 92.0, 90.0], [0.0, 120.0, 240.0], [355.0, 5.0, 0.0]]))
    kept, labels = label_codes(azimuths, max_spread_deg=10.0)
    assert kept.tolist() == [True, False, True] and labels[[0, 2]].tolist() == [3, 0]


def test_all_styles_from_the_code_fix_the_view_and_fewer_let_the_content_move_it():
    G, oracle = _generator(), Annotator()
    gen = torch.Generator().manual_seed(1)
    codes, contents = G.mapping(torch.randn(3, 8, generator=gen)), G.mapping(torch.randn(5, 8, generator=gen))
    full = swapped_azimuths(G, oracle, G.num_ws, codes, contents)
    assert full.shape == (3, 5) and oracle.calls["viewpoint"] == 15
    assert circular_spread_deg(full, 1).max() < 0.1  # each code: the same image for every content
    partial = swapped_azimuths(G, oracle, 1, codes, contents)
    assert circular_spread_deg(partial, 1).mean() > 0.1  # the contents now show through
    sweep = layer_sweep(G, oracle, ks=(1, G.num_ws), codes=3, contents=4)
    assert sweep[G.num_ws]["code_spread_deg"] < 0.1 <= sweep[1]["code_spread_deg"]
    with pytest.raises(ValueError, match="k must be"):
        swapped_azimuths(G, oracle, 0, codes, contents)


def test_the_annotator_keeps_consistent_codes_and_labels_them_with_bins_only():
    G, oracle = _generator(), Annotator()
    codes, report = annotate(G, oracle, k=G.num_ws, candidates=6, samples_per_code=3, max_spread_deg=1.0)
    assert report["oracle_calls_by_kind"] == {"viewpoint": 18, "segment": 18} == oracle.calls
    assert report["oracle_calls"] == 36 and report["passed_over_broken"] == 0
    assert report["kept"] == 6 == len(codes)  # all styles from the code: every code is consistent
    for name, label in report["labels"].items():
        assert name.startswith(f"az{label * 30:03d}_") and 0 <= label < 12
        assert codes.stack([name]).shape == (1, G.num_ws, 8)
    grid = code_grid(G, codes, contents=2)
    assert grid.shape == (12, 3, 16, 16)  # six codes (rows) × two contents (columns)
    assert torch.equal(grid[0], grid[1]) and not torch.equal(grid[0], grid[2])  # all styles from the code
    _, strict = annotate(G, Annotator(), k=1, candidates=6, samples_per_code=3, max_spread_deg=1e-3)
    assert strict["kept"] < 6  # with one style from the code, the contents disagree


def test_the_annotator_passes_over_codes_whose_images_are_broken():
    G = _generator()
    everything, _ = annotate(G, Annotator(), k=G.num_ws, candidates=6, samples_per_code=3, max_spread_deg=1.0)
    brightness = code_grid(G, everything, contents=1).mean((1, 2, 3))  # all styles from the code: one image each
    threshold = brightness.median().item()
    expected = {name for name, b in zip(everything.names(), brightness.tolist(), strict=True) if b <= threshold}
    oracle = Annotator(broken_above=threshold)
    codes, report = annotate(G, oracle, k=G.num_ws, candidates=6, samples_per_code=3, max_spread_deg=1.0)
    assert set(codes.names()) == expected and 0 < len(expected) < 6
    assert report["passed_over_broken"] == 6 - len(expected) and report["kept"] == len(expected)
    unchecked, loose = annotate(G, Annotator(broken_above=threshold), k=G.num_ws, candidates=6, samples_per_code=3,
                                max_spread_deg=1.0, require_object=False)  # fmt: skip
    assert len(unchecked) == 6 and loose["oracle_calls_by_kind"] == {"viewpoint": 18, "segment": 0}


class TiltingAnnotator(Annotator):
    """Sees the i-th image of every call 0.1 rad higher and a little larger: each code's contents
    disagree in elevation (5.7° standard deviation over three) and in apparent size."""

    def viewpoint(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        azimuth, _ = super().viewpoint(images)
        return azimuth, 0.1 * torch.arange(len(images), dtype=azimuth.dtype)

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        masks = super().mask(images)
        for i in range(len(images)):
            masks[i, : i + 4] = True  # rows grow the object: its area share differs per content
        return masks


def test_the_annotator_reports_and_can_pass_over_codes_whose_elevation_or_size_varies():
    G = _generator()
    args = {"k": G.num_ws, "candidates": 6, "samples_per_code": 3, "max_spread_deg": 1.0}
    steady = annotate(G, Annotator(), **args)[1]
    assert steady["kept_elevation_spread_deg"] == {"mean": 0.0, "max": 0.0}
    assert steady["kept_size_spread"]["max"] == 0.0 and steady["passed_over_inconsistent"] == 0
    _, loose = annotate(G, TiltingAnnotator(), **args)
    assert loose["kept"] == 6 and loose["kept_elevation_spread_deg"]["mean"] == pytest.approx(5.73, abs=0.01)
    assert loose["kept_size_spread"]["mean"] > 0
    codes, strict = annotate(G, TiltingAnnotator(), **args, max_elevation_spread_deg=5.0)
    assert len(codes) == 0 and strict["passed_over_inconsistent"] == 6 and strict["kept_elevation_spread_deg"] is None
    assert annotate(G, TiltingAnnotator(), **args, max_size_spread=0.01)[1]["passed_over_inconsistent"] == 6
    with pytest.raises(ValueError, match="needs require_object"):
        annotate(G, Annotator(), **args, max_size_spread=0.1, require_object=False)
    sweep = layer_sweep(G, TiltingAnnotator(), ks=(G.num_ws,), codes=2, contents=3)
    assert sweep[G.num_ws]["code_elevation_spread_deg"] == pytest.approx(5.73, abs=0.01)
    assert sweep[G.num_ws]["content_elevation_spread_deg"] == 0  # the same index in every code's call
