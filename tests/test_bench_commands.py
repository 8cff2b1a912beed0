"""bench.commands: running the command line with a timeline in the log, and what a benchmark reads back
from a run's training log."""

from __future__ import annotations

import json
import os
import re

import pytest

from bench.commands import (
    claim,
    last_step,
    last_throughput,
    phase_throughput,
    renderloop,
    save_seconds,
    saved_seconds,
    saved_step,
    share_cpus,
)


def test_steps_throughput_and_phases_from_the_training_log(tmp_path):
    records = [
        {"step": 0, "samples_per_s": 10.0, "step_seconds": 0.4, "loss/albedo/loss": 1.0},
        {"step": 1, "samples_per_s": 30.0, "step_seconds": 0.2, "loss/albedo/loss": 0.9},
        {"step": 2, "samples_per_s": 20.0, "step_seconds": 0.3, "loss/albedo/loss": 0.8},
        {"step": 3, "samples_per_s": 5.0, "step_seconds": 0.8, "loss/albedo/loss": 0.7, "loss/shape/loss": 2.0},
        {"step": 4, "samples_per_s": 8.0, "step_seconds": 0.5, "loss/shape/loss": 1.5, "data/generated_per_s": 99.0},
    ]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert last_step(tmp_path) == 4
    assert last_throughput(tmp_path) == {"step": 4, "samples_per_s": 8.0, "data/generated_per_s": 99.0}
    phases = phase_throughput(tmp_path)  # step 3 ran both phases: neither counts it
    assert phases == {"albedo": {"logged_steps": 3, "samples_per_s": 20.0, "step_seconds": 0.3},
                      "shape": {"logged_steps": 1, "samples_per_s": 8.0, "step_seconds": 0.5}}  # fmt: skip
    assert last_step(tmp_path / "none") == 0 and last_throughput(tmp_path / "none") == {}


def test_each_command_leaves_its_start_and_end_in_the_log(tmp_path):
    log = tmp_path / "bench.log"
    with pytest.raises(SystemExit, match="renderloop nonsense failed"):
        renderloop("nonsense", f"run_dir={tmp_path / 'r'}", log=log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("bench ")]
    assert re.fullmatch(rf"bench \d\d:\d\d:\d\d start nonsense {tmp_path / 'r'}", lines[0])
    assert re.fullmatch(rf"bench \d\d:\d\d:\d\d end nonsense {tmp_path / 'r'} rc=[1-9]\d* \d+\.\d s", lines[1])


def test_a_run_folder_is_reused_only_under_the_settings_it_was_made_with(tmp_path):
    claim(tmp_path / "run", ["method=x", "engine.max_steps=10"])
    claim(tmp_path / "run", ["method=x", "engine.max_steps=10"])  # the same: reused
    with pytest.raises(SystemExit, match=r"other settings \(engine.max_steps=10, engine.max_steps=20\)"):
        claim(tmp_path / "run", ["method=x", "engine.max_steps=20"])
    claim(tmp_path / "other", ["method=x", "engine.max_steps=20"])  # another folder: its own


def test_commands_run_at_once_share_the_cores_unless_a_count_was_set(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    share_cpus(5)
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == "7"  # 16 // 5; the set one kept
    monkeypatch.delenv("OMP_NUM_THREADS")
    share_cpus(40)
    assert os.environ["OMP_NUM_THREADS"] == "1"  # never none


def test_a_run_continued_over_calls_adds_its_seconds_and_counts_its_checkpointed_steps(tmp_path):
    assert saved_step(tmp_path) == 0 and saved_seconds(tmp_path) == {}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step00001500\n")
    assert saved_step(tmp_path) == 1500
    save_seconds(tmp_path, {"train": 10.0})
    save_seconds(tmp_path, {"train": 5.0, "eval": 2.0})
    assert saved_seconds(tmp_path) == {"train": 15.0, "eval": 2.0}
