"""bench.commands: what a benchmark reads back from a run's training log."""

from __future__ import annotations

import json

from bench.commands import last_step, last_throughput, phase_throughput


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
