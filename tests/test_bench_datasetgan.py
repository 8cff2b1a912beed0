"""bench.datasetgan: rows over seeds with the oracle ceiling beside them, and one tiny run of every
row end to end on a stand-in gate folder."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bench.datasetgan as bench_datasetgan
from bench.datasetgan import predictions_figure, rows_for, summarize
from tests.trainers.helpers import gan_method_assets


def test_rows_summarize_over_seeds_beside_the_oracle():
    per_seed = {s: {"datasetgan_k4": {"miou": 0.1 * (s + 1), "miou_with_background": 0.5, "constant/miou": 0.02}}
                for s in range(3)}  # fmt: skip
    rows = summarize(per_seed, {"miou": 0.9, "miou_with_background": 0.95})
    mean, half, n = rows["datasetgan_k4"]["miou"]
    assert (mean, n) == (pytest.approx(0.2), 3) and half == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)
    assert rows["oracle"]["miou"][0] == 0.9 and rows["oracle"]["miou"][2] == 1
    assert rows["constant"]["miou"][0] == 0.02 and rows["constant"]["miou"][2] == 1  # scored once


def test_rows_picks_the_runs_and_trains_the_ablations_interpreter_alone(tmp_path, monkeypatch):
    """An ablation K outside ``--ks`` gets its interpreter and its ablation rows, no K rows; without
    the transfer row no pretext runs."""
    started = []

    def fake_interpreter(args, k, seed, work):
        started.append(f"interpreter-k{k}")
        (tmp_path / f"k{k}").mkdir(exist_ok=True)
        (tmp_path / f"k{k}" / "datasetgan_eval.json").write_text(json.dumps({"oracle_calls": k}))
        return tmp_path / f"k{k}" / "interpreter.pt"

    def fake_segmenter(args, row, seed, work, data, closed_samples=0, steps=0):
        started.append(row)
        return {"miou": 0.5}

    monkeypatch.setattr(bench_datasetgan, "interpreter", fake_interpreter)
    monkeypatch.setattr(bench_datasetgan, "segmenter", fake_segmenter)
    args = argparse.Namespace(generator="g.pt", resolution=16, ks=[4, 8], ablation_k=16, rows_parallel=2,
                              rows=["datasetgan", "k_labeled", "no_filter"], pretext_steps=0)  # fmt: skip
    rows, pretext, interpreted = rows_for(args, 0, tmp_path)
    assert set(rows) == {"datasetgan_k4", "datasetgan_k8", "k_labeled_k4", "k_labeled_k8", "no_filter_k16"}
    assert pretext == {} and "pretext" not in started and set(interpreted) == {4, 8, 16}
    assert sorted(r for r in started if r.startswith("interpreter")) == ["interpreter-k16", "interpreter-k4",
                                                                          "interpreter-k8"]  # fmt: skip


def test_predictions_figure_keeps_the_inputs_and_truth_once_then_each_rows_predictions(tmp_path):
    """Each row's evaluation figure is three lines (inputs, truth, its prediction) of the same test
    renders; the figure keeps the first two once and stacks every row's third line."""
    from renderloop.images import image_grid, save_png

    inputs, truth = torch.full((4, 3, 6, 6), 0.2), torch.full((4, 3, 6, 6), 0.4)
    figures = {}
    for i, name in enumerate(["a", "b", "c"]):
        predicted = torch.full((4, 3, 6, 6), 0.6 + 0.1 * i)
        figures[name] = save_png(image_grid(torch.cat([inputs, truth, predicted]), columns=4), tmp_path / f"{name}.png")
    figures["missing"] = tmp_path / "none.png"
    drawn = predictions_figure(figures, tmp_path / "all.png")
    image = np.asarray(Image.open(tmp_path / "all.png"))
    assert drawn == ["a", "b", "c"] and image.shape == (2 + 5 * 8, 2 + 4 * 8, 3)
    line_values = [image[2 + 8 * line + 3, 5, 0] for line in range(5)]  # one pixel inside each line's first image
    assert line_values == [round(255 * v) for v in (0.2, 0.4, 0.6, 0.7, 0.8)]


def test_every_row_runs_end_to_end(tmp_path):
    gate = tmp_path / "gate"
    assets = gan_method_assets(gate)
    (gate / "gan" / "eval").mkdir(parents=True)
    (gate / "gan" / "eval" / "generator.pt").write_bytes((gate / "generator.pt").read_bytes())
    assert assets["oracle"] == str(gate / "oracle")
    # two reader slots, as on a GPU: closed sets must come in enough shards
    tiny_seg = ["engine=debug", "method.width=8", "method.levels=2", "method.evaluation.samples=4",
                "method.evaluation.folds=2", "method.evaluation.batch_size=4", "method.data.labeled.batch_size=2",
                "samples_per_shard=2", "engine.data.num_workers=2"]  # fmt: skip
    tiny_interp = ["engine=debug", "method.members=2", "method.pixels=64", "method.validate_every=1"]
    out = tmp_path / "dg.json"
    done = subprocess.run([sys.executable, "-m", "bench.datasetgan", "--gate", str(gate), "--resolution", "16",
                           "--ks", "2", "--ablation-k", "2", "--seeds", "0", "--parallel", "1", "--rows-parallel", "3",
                           "--interpreter-steps", "2", "--segmenter-steps", "2", "--work", str(tmp_path / "w"),
                           "--out", str(out), "--interpreter-set", *tiny_interp, "--segmenter-set", *tiny_seg],
                          capture_output=True, text=True)  # fmt: skip
    log = tmp_path / "w" / "bench.log"
    assert done.returncode == 0, done.stderr[-2000:] + (log.read_text()[-3000:] if log.exists() else "")
    report = json.loads(out.read_text())
    rows, trained = report["rows"], report["per_seed"]["0"]["datasetgan_k2"]
    assert trained["train/step"] == 1 and trained["train/samples_per_s"] > 0 and report["wall_seconds"] > 0
    assert trained["seconds/train"] > 0 and trained["seconds/eval"] > 0
    assert report["interpreters"]["0"]["2"]["oracle_calls"] == 2 and "fresh_miou" in report["interpreters"]["0"]["2"]
    assert report["per_seed"]["0"]["k_labeled_k2"]["seconds/generate"] > 0
    networks = {"datasetgan_k2", "k_labeled_k2", "transfer_k2", "one_member_k2", "no_filter_k2", "oracle"}
    assert set(rows) == networks | {"constant"}  # the trivial row beside the networks
    assert all(0 <= row["miou"][0] <= 1 for row in rows.values())
    assert set(report["predictions_figure"]["rows"]) == networks and out.with_suffix(".png").exists()
    assert all(0 <= row["selected/miou"][0] <= 1 for name, row in rows.items() if name not in ("oracle", "constant"))
