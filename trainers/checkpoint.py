"""Checkpoint folders: one self-contained folder per save, and a ``latest`` pointer.

A folder ``step00000100/`` holds every DeepSpeed engine under its own tag (the model's name:
weights, optimizer and LR-schedule state, ZeRO partitions per rank) and one ``client-rank<r>.pt``
per rank with what DeepSpeed does not know: the step, RNG states, data positions, EMA weights
and the method's state. The folder is complete before ``latest`` names it, so a process killed
while saving resumes from the previous one. Ray Train runs use the same folders as Ray
checkpoints (``cluster/ray_train.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .distributed import Dist

__all__ = ["CheckpointStore", "step_tag"]


def step_tag(step: int) -> str:
    return f"step{step:08d}"


class CheckpointStore:
    """Checkpoints under ``directory`` (shared by all ranks), keeping the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int, dist: Dist) -> None:
        self.directory, self.keep, self.dist = Path(directory), keep, dist

    def latest(self) -> Path | None:
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint pointer {pointer} names a missing folder {path}")
        return path

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, float]) -> Path:
        """Call ``write(folder)`` on every rank, then (rank 0) point ``latest`` at it and prune."""
        path = self.directory / step_tag(step)
        if self.dist.is_main:
            shutil.rmtree(path, ignore_errors=True)  # a stale folder of an earlier run must not mix in
            path.mkdir(parents=True)
        self.dist.barrier()
        write(path)
        self.dist.barrier()
        if self.dist.is_main:
            tmp = self.directory / f".latest.{os.getpid()}"
            tmp.write_text(path.name + "\n")
            os.replace(tmp, self.directory / "latest")
            others = sorted((p for p in self.directory.glob("step*") if p.is_dir() and p != path),
                            key=lambda p: p.stat().st_mtime)  # fmt: skip
            for old in others[: max(len(others) - (self.keep - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return path
