"""bench.ganverse3d: the view-code sweep and annotation, then rows A (every kept code in its pool)
and C end to end on a stand-in gate folder, summarized over seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

import bench.ganverse3d as bench
from bench.ganverse3d import pool_names, spread_codes, summarize
from tests.trainers.helpers import gan_method_assets


def test_rows_are_means_with_intervals_over_seeds():
    runs = {"A": [{"input_view_iou": v, "novel_view_iou": v / 2, "chamfer": v / 10, "fscore@0.02": v,
                   "camera_error_deg": 10 * v, "mean_shape/chamfer": 0.02, "steps": 9} for v in (0.5, 0.6, 0.7)],
            "C": [{"input_view_iou": v, "chamfer": 0.1, "fscore@0.02": 0.3} for v in (0.4, 0.6)]}  # fmt: skip
    rows = summarize(runs)
    assert rows["A"]["input_view_iou"][0] == pytest.approx(0.6) and rows["A"]["novel_view_iou"][2] == 3
    assert rows["A"]["chamfer"][0] == pytest.approx(0.06) and rows["A"]["camera_error_deg"][0] == pytest.approx(6)
    assert set(rows["C"]) == {"input_view_iou", "chamfer", "fscore@0.02"}  # no GAN scores for C; no steps
    assert rows["mean_shape"] == {"chamfer": (0.02, pytest.approx(float("nan"), nan_ok=True), 1)}


def test_views_take_codes_of_distinct_spread_bins():
    labels = {"az000_0": 0, "az000_1": 0, "az090_0": 3, "az180_0": 6, "az210_0": 7, "az270_0": 9}
    assert spread_codes(labels, 2) == ["az000_0", "az180_0"]
    assert spread_codes(labels, 5) == ["az000_0", "az090_0", "az180_0", "az210_0", "az270_0"]
    with pytest.raises(SystemExit, match="5 azimuth bins"):
        spread_codes(labels, 6)
    # Bins 0°, 30°, 60°, 180°, 240°, 270°, 300° and four views: no choice has all gaps of 90°; the
    # best keeps every neighbour at least 60° away (spacing by index gave 0°, 60°, 240°, 270°).
    labels = {f"az{30 * b:03d}": b for b in (0, 1, 2, 6, 8, 9, 10)}
    assert spread_codes(labels, 4) == ["az000", "az060", "az180", "az270"]


def test_row_a_pools_every_kept_code_unless_told_to_spread():
    labels = {"az090_0": 3, "az000_0": 0, "az000_1": 0}
    assert pool_names(labels, 2, "all") == ["az000_0", "az000_1", "az090_0"]  # codes may share a bin
    assert pool_names(labels, 2, "spread") == ["az000_0", "az090_0"]
    with pytest.raises(SystemExit, match="kept 3 codes"):
        pool_names(labels, 4, "all")


def test_a_time_capped_training_is_scored_only_once_a_later_call_finishes_it(tmp_path, monkeypatch):
    calls = []

    def fake(command, *overrides, log):  # trains 3 steps a call; stands in for the command line
        calls.append((command, [o for o in overrides if o.startswith("engine.max")]))
        run = tmp_path / "A-s0"
        if command == "run":
            done = int(((run / "checkpoints" / "latest").read_text() if calls[1:] else "step0")[4:])
            (run / "checkpoints").mkdir(exist_ok=True)
            (run / "checkpoints" / "latest").write_text(f"step{min(done + 3, 5)}")
        else:
            (run / "eval").mkdir(exist_ok=True)
            (run / "eval" / "ganverse3d_eval.json").write_text('{"input_view_iou": 0.5}')
        return 1.0

    monkeypatch.setattr(bench, "renderloop", fake)
    args = SimpleNamespace(generator="g.pt", views=2, k=4, pool_names=["a", "b"], labels={}, resolution=16, oracle="o",
                           device="cpu", batch=4, set=[], steps=5, single_renders=4, train_minutes=0.5)  # fmt: skip
    assert bench.one_run(args, "A", 0, tmp_path, 2) is None  # 3 of 5 steps: not scored
    report = bench.one_run(args, "A", 0, tmp_path, 2)
    assert report["input_view_iou"] == 0.5 and report["seconds"] == {"train": 2.0, "eval": 1.0}
    assert [c for c, _ in calls] == ["run", "run", "eval"]
    assert calls[0][1] == ["engine.max_steps=5", "engine.max_minutes=0.5"] and calls[2][1] == []  # scoring: no cap


def test_view_codes_then_two_rows_end_to_end(tmp_path):
    gate = tmp_path / "gate"
    gan_method_assets(gate)
    (gate / "gan" / "eval").mkdir(parents=True)
    (gate / "gan" / "eval" / "generator.pt").write_bytes((gate / "generator.pt").read_bytes())
    tiny = ["engine=debug", "method.subdivisions=1", "method.texture_size=8", "method.width=8", "method.zdim=16",
            "method.warmup_steps=1", "method.min_area=0", "method.renders.subdivisions=2",
            "method.evaluation.samples=2", "method.evaluation.novel_views=1", "method.evaluation.batch_size=4",
            "method.evaluation.mean_shape_objects=4",
            "samples_per_shard=4"]  # fmt: skip
    out = tmp_path / "gv3d.json"
    done = subprocess.run([sys.executable, "-m", "bench.ganverse3d", "--gate", str(gate), "--resolution", "16",
                           "--ks", "1", "4", "--k", "4", "--sweep-codes", "2", "--sweep-contents", "2",
                           "--candidates", "4", "--samples-per-code", "2", "--max-spread-deg", "360", "--keep-broken",
                           "--views", "2", "--single-renders", "4", "--rows", "A", "C", "--seeds", "0",
                           "--parallel", "2", "--steps", "2", "--batch", "4", "--work", str(tmp_path / "w"),
                           "--out", str(out), "--set", *tiny], capture_output=True, text=True)  # fmt: skip
    log = tmp_path / "w" / "bench.log"
    assert done.returncode == 0, done.stderr[-2000:] + (log.read_text()[-3000:] if log.exists() else "")
    report = json.loads(out.read_text())
    assert report["view_codes"]["annotation"]["kept"] == 4 and report["view_codes"]["annotation"]["oracle_calls"] == 8
    assert set(report["view_codes"]["sweep"]) == {"1", "4"} and set(report["rows"]) == {"A", "C", "mean_shape"}
    assert (tmp_path / "w" / "annotation" / "view_codes.png").exists()
    assert report["view_pool"]["size"] == 4 and report["view_pool"]["views"] == 2
    (a_run,) = report["runs"]["A"]
    assert len(a_run["camera_azimuth_deg"]) == 4 and a_run["camera_names"] == report["view_pool"]["names"]
    assert 0 <= report["rows"]["C"]["input_view_iou"][0] <= 1
    # Both rows scored on the same held-out GAN groups at the oracle's viewpoints; only A has learned cameras.
    assert {"gan_oracle_camera_input_view_iou", "camera_error_deg"} <= set(report["rows"]["A"])
    assert "gan_oracle_camera_input_view_iou" in report["rows"]["C"] and "camera_error_deg" not in report["rows"]["C"]
    (c_run,) = report["runs"]["C"]
    assert c_run["steps"] == 2 and set(c_run["seconds"]) == {"generate", "train", "eval"}
    assert "mean_shape/chamfer" in a_run and "mean_shape/chamfer" not in c_run  # the constant row: scored once
