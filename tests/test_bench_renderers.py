"""bench.renderers: variants of a setting timed in rounds of rotated order, and speed ratios
taken round by round against a reference backend."""

from __future__ import annotations

import pytest
import torch

from bench.renderers import bench_variants, round_ratios


def test_every_variant_is_timed_once_per_round():
    variants = [dict(mode=mode, soft=False, compile_=False) for mode in ("fwd", "fwd+bwd")]
    rows = bench_variants(2, 16, 1280, variants, device=torch.device("cpu"), iters=1, rounds=3)
    assert [r["mode"] for r in rows] == ["fwd", "fwd+bwd"]
    for r in rows:
        assert len(r["round_seconds"]) == 3 and all(s > 0 for s in r["round_seconds"])
        median = sorted(r["round_seconds"])[1]
        assert r["images_per_s"] == pytest.approx(2 / median) and 0 < r["coverage"] < 1


def _row(backend: str, seconds: list[float], mode: str = "fwd+bwd") -> dict:
    return {"backend": backend, "batch": 64, "resolution": 256, "faces": 5120, "mode": mode, "soft_mask": False,
            "compile": True, "zbuffer": backend, "launch": "", "round_seconds": seconds}  # fmt: skip


def test_ratios_are_taken_round_by_round_against_the_reference():
    rows = [_row("nvdiffrast", [1.0, 2.0, 1.0]), _row("torch", [0.5, 2.0, 1.25]), _row("torch", [9.0] * 3, "fwd")]
    (ratio,) = round_ratios(rows, "nvdiffrast")  # the forward row has no reference of its mode
    assert ratio["backend"] == "torch" and ratio["reference"] == "nvdiffrast"
    assert (ratio["low"], ratio["median"], ratio["high"]) == (0.8, 1.0, 2.0)  # 1/1.25, 2/2, 1/0.5
    assert round_ratios(rows, "pytorch3d") == []
