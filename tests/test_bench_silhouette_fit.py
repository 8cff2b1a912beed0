"""bench/silhouette_fit.py: the IoU it reports, and a short fit on the CPU."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import silhouette_fit
from renderloop.renderers.meshes import icosphere


def test_iou_pools_the_views():
    a = torch.zeros(2, 4, 4)
    b = torch.zeros(2, 4, 4)
    a[0, :2], b[0, :1] = 1, 1  # 8 and 4 pixels, 4 shared
    a[1, 0, 0] = 1  # 1 pixel only in a
    assert silhouette_fit.iou(a, b) == pytest.approx(4 / 9)
    assert silhouette_fit.iou(b, b) == 1.0 and silhouette_fit.iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)) == 0.0


def test_the_soft_silhouette_and_antialiasing_fit_the_target_and_the_hard_mask_cannot():
    args = argparse.Namespace(res=32, steps=30, lr=0.03)
    device = torch.device("cpu")
    mesh = icosphere(2)
    silhouettes = silhouette_fit.Silhouettes(mesh.faces, args.res, 1.0, device)
    assert not silhouettes.available("nvdiffrast") and silhouettes.available("soft")
    R, t, K = silhouette_fit.scene(4, args.res, device)
    soft, smooth, hard = (
        silhouette_fit.fit(m, 1, args, device, silhouettes, mesh.verts, R, t, K) for m in ("soft", "antialias", "hard")
    )
    assert soft["iou_start"] == smooth["iou_start"] == hard["iou_start"] < 0.8  # one target and start for all
    for moved in (soft, smooth):
        assert moved["iou_end"] > moved["iou_start"] + 0.1
        assert moved["param_error_end"] < moved["param_error_start"]
    assert hard["iou_end"] == hard["iou_start"] and hard["param_error_end"] == hard["param_error_start"]
    summary = silhouette_fit.summarize([soft, hard, dict(soft, seed=2, iou_end=soft["iou_end"] - 0.1)])
    assert summary["soft"]["iou_end"][0] == pytest.approx(soft["iou_end"] - 0.05)
    assert summary["soft"]["iou_end"][2] == 2 and summary["hard"]["iou_end"][2] == 1
