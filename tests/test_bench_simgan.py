"""bench.simgan: per-variant summaries over runs and each ablation against the paper's row."""

import json
import subprocess
from types import SimpleNamespace

import pytest

from bench import simgan
from bench.simgan import METRICS, compare, summarize


def _run(variant: str, seed: int, gap: float) -> dict:
    metrics = {m: 0.5 for m in METRICS} | {"gap_closed": gap, "refined_error": 0.5 - 0.4 * gap}
    return {"variant": variant, "seed": seed, "half": 0, "run_seconds": 60.0, **metrics}


def test_rows_summarize_their_own_runs_and_ablations_are_compared_with_simgan():
    runs = [_run("simgan", s, g) for s, g in enumerate((0.10, 0.20, 0.30))]
    runs += [_run("lambda_0", s, g) for s, g in enumerate((0.50, 0.60, 0.70))]
    runs += [_run("no_history", s, g) for s, g in enumerate((0.15, 0.20, 0.25))]
    rows = summarize(runs)
    mean, half, n = rows["simgan"]["gap_closed"]
    assert (mean, n) == (pytest.approx(0.2), 3) and half == pytest.approx(4.303 * 0.1 / 3**0.5)
    assert rows["lambda_0"]["minutes_per_run"] == 1.0
    comparisons = compare(runs)
    assert set(comparisons) == {"lambda_0", "no_history"}
    assert comparisons["lambda_0"]["gap_closed"]["difference"] == pytest.approx(0.4)
    assert comparisons["lambda_0"]["gap_closed"]["exceeds_interval"]
    assert not comparisons["no_history"]["gap_closed"]["exceeds_interval"]  # same mean
    assert comparisons["lambda_0"]["refined_error"]["difference"] == pytest.approx(-0.16)
    assert compare([r for r in runs if r["variant"] != "simgan"]) == {}


def test_a_finished_run_is_saved_and_a_second_call_reuses_it(tmp_path, monkeypatch):
    calls = []

    def fake_cli(command, **_):
        calls.append(command[3])  # python -m renderloop.cli <command> ...
        run_dir = next(a.split("=", 1)[1] for a in command if a.startswith("run_dir="))
        (simgan.Path(run_dir) / "eval").mkdir(parents=True, exist_ok=True)
        (simgan.Path(run_dir) / "eval" / "simgan_eval.json").write_text(json.dumps({"gap_closed": 0.25}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(simgan.subprocess, "run", fake_cli)
    args = SimpleNamespace(device="cpu", set=[])
    first = simgan.one_run("simgan", 3, 0, args, tmp_path)
    assert calls == ["run", "eval"] and first["gap_closed"] == 0.25 and first["seed"] == 3
    assert simgan.one_run("simgan", 3, 0, args, tmp_path) == first and calls == ["run", "eval"]


def test_the_report_holds_the_runs_so_far(tmp_path):
    runs = [_run("simgan", s, g) for s, g in enumerate((0.1, 0.2))] + [_run("lambda_0", 0, 0.3)]
    simgan._write_report(str(tmp_path / "out.json"), runs)
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["rows"]["simgan"]["gap_closed"][2] == 2 and len(report["runs"]) == 3
    assert report["comparisons"]["lambda_0"]["gap_closed"]["difference"] == pytest.approx(0.15)
