"""The reporter: a log window's loss means, read from the device only when the window closes, and
its rates over the window's wall-clock time."""

from __future__ import annotations

import json
import time

import pytest
import torch

from renderloop.metrics import MetricsSink
from renderloop.trainers.reporting import Reporter, StepTimes


def _reporter(run_dir, log_every: int) -> Reporter:
    return Reporter(run_dir, method="m", rank=0, metrics=MetricsSink(), log_every=log_every, tensorboard=False,
                    progress=False, start_step=0, max_steps=10)  # fmt: skip


def _times() -> StepTimes:
    times = StepTimes()
    times.stop()
    return times


def test_steps_inside_a_window_never_read_a_loss(tmp_path):
    reporter = _reporter(tmp_path, log_every=100)
    unreadable = torch.empty((), device="meta")  # any read of its value raises
    for step in range(3):
        assert reporter.step(step, {"G/loss": unreadable}, _times(), samples=4) is None
    reporter.close()


def test_a_window_logs_the_mean_of_its_steps(tmp_path):
    reporter = _reporter(tmp_path, log_every=2)
    assert reporter.step(0, {"G/loss": torch.tensor(1.0), "D/loss": torch.tensor(4.0)}, _times(), 4) is None
    summary = reporter.step(1, {"G/loss": torch.tensor(3.0), "D/loss": torch.tensor(2.0)}, _times(), 4)
    reporter.close()
    assert summary["G/loss"] == pytest.approx(2.0) and summary["D/loss"] == pytest.approx(3.0)
    (row,) = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert row["step"] == 1 and row["loss/G/loss"] == pytest.approx(2.0)


def test_a_window_lasts_on_the_wall_clock_including_work_between_steps(tmp_path):
    reporter = _reporter(tmp_path, log_every=2)
    reporter.step(0, {}, _times(), samples=4)
    time.sleep(0.2)  # e.g. a checkpoint written between steps, or the device finishing queued work
    summary = reporter.step(1, {}, _times(), samples=4)
    reporter.close()
    assert summary["step_seconds"] >= 0.1 and summary["samples_per_s"] <= 8 / 0.2
