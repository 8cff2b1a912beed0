"""What a training run reports: console progress, a JSONL log, TensorBoard, Prometheus metrics.

Only the engine reports. Every rank exports its Prometheus metrics; rank 0 alone writes the
console, the JSONL log (``<run_dir>/train_log.jsonl``) and TensorBoard (``<run_dir>/tb``). A run
that starts at step S first sets aside the log lines of steps >= S (those a resume redoes; all
of an earlier run's for a fresh start), so the log holds each step once.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from renderloop.images import image_grid
from renderloop.metrics import MetricsSink

__all__ = ["StepTimes", "Reporter"]


class StepTimes:
    """Seconds of one engine step, split: data wait, forward, backward, optimizer."""

    PARTS = ("data_wait", "forward", "backward", "optimizer")

    def __init__(self) -> None:
        self.parts = dict.fromkeys(self.PARTS, 0.0)
        self.start = time.perf_counter()
        self.total = 0.0

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] += seconds

    def stop(self) -> None:
        self.total = time.perf_counter() - self.start


def _empty_window() -> dict[str, float]:
    """A log window's counters: steps, samples and the seconds of each step part."""
    return {"steps": 0, "samples": 0, **dict.fromkeys(StepTimes.PARTS, 0.0)}


def _window_means(losses: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Each loss's mean over the window, read from the device in one transfer."""
    if not losses:
        return {}
    means = torch.stack([torch.stack(v).float().mean() for v in losses.values()])
    return dict(zip(losses, means.tolist(), strict=True))


def _set_aside_from(log: Path, step: int) -> None:
    """Move the lines of ``log`` for steps >= ``step`` to ``train_log.replaced.jsonl`` beside it.

    A resumed run redoes the steps after its checkpoint; without this the log would hold them
    twice. The replaced lines are kept for comparison (an exact resume logs the same losses).
    """
    if not log.exists():
        return
    kept, replaced = [], []
    for line in log.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            logged = None  # a line cut short by a killed process
        (kept if isinstance(logged, int) and logged < step else replaced).append(line)
    if not replaced:
        return
    with open(log.with_suffix(".replaced.jsonl"), "a", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in replaced)
    tmp = log.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, log)


class Reporter:
    def __init__(
        self,
        run_dir: Path,
        *,
        method: str,
        rank: int,
        metrics: MetricsSink,
        log_every: int,
        tensorboard: bool,
        progress: bool,
        start_step: int,
        max_steps: int,
        status: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.status = status
        self.method, self.rank, self.metrics, self.log_every = method, str(rank), metrics, max(log_every, 1)
        self.main = rank == 0
        self._losses: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._window = _empty_window()
        self._window_start = time.perf_counter()
        self._windows = 0  # since this process started: its first window holds start-up and compilation
        self._tb = self._bar = self._log = None
        if not self.main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _set_aside_from(run_dir / "train_log.jsonl", start_step)
        self._log = open(run_dir / "train_log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events of steps this run redoes, as the JSONL log drops them.
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=start_step, unit="step", desc=f"train {method}")

    def step(
        self, step: int, losses: dict[str, torch.Tensor], times: StepTimes, samples: int
    ) -> dict[str, float] | None:
        """Record one step; every ``log_every`` steps, write and return the window's summary."""
        labels = {"method": self.method, "rank": self.rank}
        self.metrics.inc("renderloop_trainer_steps_total", **labels)
        self.metrics.inc("renderloop_trainer_samples_total", samples, **labels)
        self.metrics.observe("renderloop_trainer_step_seconds", times.total, **labels)
        self.metrics.observe("renderloop_trainer_data_wait_seconds", times.parts["data_wait"], **labels)
        for key, value in losses.items():
            self._losses[key].append(value)
        w = self._window
        w["steps"] += 1
        w["samples"] += samples
        for part, seconds in times.parts.items():
            w[part] += seconds
        if self._bar is not None:
            self._bar.update(1)
        if (step + 1) % self.log_every:
            return None
        return self._flush(step)

    def _flush(self, step: int) -> dict[str, float]:
        labels = {"method": self.method, "rank": self.rank}
        w = self._window
        # Steps do not wait for the device; reading the losses does, once per window. The window
        # lasts from the previous read to this one on the wall clock, so the device's work and
        # whatever ran between steps (checkpoints, image grids) count once, in the window they fall in.
        losses = _window_means(self._losses)
        now = time.perf_counter()
        seconds, self._window_start = max(now - self._window_start, 1e-9), now
        self._windows += 1
        summary = {
            "step": step,
            "time": time.time(),
            "window": self._windows,
            "samples_per_s": w["samples"] / seconds,
            "steps_per_s": w["steps"] / seconds,
            "step_seconds": seconds / w["steps"],
            "data_wait_fraction": w["data_wait"] / seconds,
            **{f"{part}_seconds": w[part] / w["steps"] for part in StepTimes.PARTS},
        }
        self.metrics.set("renderloop_trainer_samples_per_second", summary["samples_per_s"], **labels)
        self.metrics.set("renderloop_trainer_data_wait_fraction", summary["data_wait_fraction"], **labels)
        for key, value in losses.items():
            phase, _, name = key.partition("/")
            self.metrics.set("renderloop_loss", value, phase=phase, term=name, **labels)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            summary["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            for kind, value in (
                ("allocated", torch.cuda.memory_allocated()),
                ("reserved", torch.cuda.memory_reserved()),
                ("peak", torch.cuda.max_memory_allocated()),
            ):
                self.metrics.set("renderloop_gpu_memory_bytes", value, kind=kind, **labels)
        if self.main:
            data = self.status() if self.status is not None else {}
            record = {**summary, **{f"data/{k}": v for k, v in data.items()}}
            record.update({f"loss/{k}": v for k, v in losses.items()})
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
            if self._tb is not None:
                for key, value in record.items():
                    if key not in ("step", "time", "window"):
                        self._tb.add_scalar(key if key.startswith("loss/") else f"perf/{key}", value, step)
            if self._bar is not None:
                shown = {k.rpartition("/")[2] if k.count("/") else k: v for k, v in list(losses.items())[:4]}
                extra = {k: v for k, v in data.items() if "/" not in k}  # per-stream figures: the log only
                shown = {k: f"{v:.3g}" for k, v in {**extra, **shown}.items()}
                self._bar.set_postfix({"samples/s": f"{summary['samples_per_s']:.0f}", **shown})
        self._losses.clear()
        self._window = _empty_window()
        return {**summary, **losses}

    def images(self, step: int, grids: dict[str, torch.Tensor]) -> None:
        """Image grids ``name → [N, 3, H, W]`` in ``[0, 1]`` to TensorBoard."""
        if self._tb is None:
            return
        for name, images in grids.items():
            self._tb.add_image(f"images/{name}", image_grid(images).numpy(), step)

    def message(self, text: str) -> None:
        if self.main:
            (self._bar.write if self._bar is not None else print)(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._log is not None:
            self._log.close()
