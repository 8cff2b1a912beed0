"""Checkpoint folders: one self-contained, checksummed folder per save, and a ``latest`` pointer.

A folder ``step00000100/`` holds every DeepSpeed engine under its own tag (the model's name:
weights, optimizer and LR-schedule state, ZeRO partitions per rank), one ``client-rank<r>.pt``
per rank with what DeepSpeed does not know (the step, RNG states, data positions, EMA weights
and the method's state) and, written last, ``manifest.json``: each file's size and sha256.

Ranks write into a hidden temporary folder; rank 0 adds the manifest, checks it, renames the
folder into place and only then moves ``latest``, so a process killed while saving leaves the
previous checkpoint as the newest. On resume a checkpoint whose files do not match its manifest
(flipped bits, a truncated copy, a lost file) or that is missing is reported and the newest
older complete one is used: ``keep`` > 1 keeps such fallbacks on disk. Ray Train runs use the
same folders as Ray checkpoints (``cluster/ray_train.py``); Ray keeps and restores them itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .distributed import Dist

__all__ = ["CheckpointStore", "MANIFEST", "damage", "step_tag", "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def _tag_step(name: str) -> int | None:
    match = re.fullmatch(r"step(\d+)", name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file under ``folder`` in its manifest (atomically)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": entries}, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


def damage(folder: Path, *, hashes: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None if it is.

    ``hashes=False`` checks presence and sizes only: right after the manifest was computed from
    the files, reading them again would check the page cache, not the storage.
    """
    if not folder.is_dir():
        return "the folder is missing"
    try:
        entries: dict[str, Any] = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written by an older version, or damaged)"
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, its manifest says {entry['bytes']}"
        if hashes and _sha256(path) != entry["sha256"]:
            return f"{name} fails its sha256 check"
    return None


def _from_main(dist: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every rank, so all ranks act on one decision."""
    if dist.world_size == 1 or not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _all_ranks(dist: Dist, *, ok: bool) -> bool:
    """Whether every rank is ``ok`` (a collective: every rank must call it)."""
    if dist.world_size == 1 or not torch.distributed.is_initialized():
        return ok
    flag = torch.tensor(float(ok), device=dist.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold the main thread's first SIGINT (Ctrl-C, or a producer watch's ``interrupt_main``) until
    the block is done, then hand it to the handler it was meant for; another one goes through at once.

    An interruption may land between any two bytecodes: one right after ``shutil.rmtree`` closes a
    directory's descriptor makes it close that number again (EBADF, or another thread's new file),
    and the OSError replaces the interruption."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # only the main thread runs handlers; SIG_DFL, SIG_IGN or a C handler are left alone
        return
    held: list = []

    def hold(signum, frame) -> None:
        held.append(frame)
        if len(held) > 1:  # again: a save that storage holds up can still be stopped
            previous(signum, frame)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if len(held) == 1:
            previous(signal.SIGINT, held[0])


class CheckpointStore:
    """Checkpoints under ``directory`` (shared by all ranks), keeping the newest ``keep``."""

    only_this_run = False
    """Whether ``latest`` can only be this run's own (a restart after a failure), so restoring it is
    right even with ``engine.resume`` off. A run folder's store may hold an earlier run's."""

    def __init__(self, directory: str | Path, keep: int, dist: Dist) -> None:
        self.directory, self.keep, self.dist = Path(directory), keep, dist

    def latest(self) -> Path | None:
        """The newest complete checkpoint (rank 0 checks, every rank gets its answer), or None."""
        name = self._newest_complete() if self.dist.is_main else None
        name = _from_main(self.dist, name)
        return None if name is None else self.directory / name

    def release(self, path: Path) -> None:
        """Done restoring ``path``: the run's own checkpoints stay."""

    def _candidates(self) -> list[str]:
        """The folder ``latest`` names, then the older step folders, newest first."""
        pointer = self.directory / "latest"
        if not pointer.exists():
            return []  # a fresh run directory
        named = pointer.read_text().strip()
        newest = _tag_step(named)
        older = [
            (step, p.name)
            for p in self.directory.glob("step*")
            if (step := _tag_step(p.name)) is not None and p.name != named and (newest is None or step < newest)
        ]
        return [named] + [name for _, name in sorted(older, reverse=True)]

    def _newest_complete(self) -> str | None:
        damaged: list[str] = []
        for name in self._candidates():
            why = damage(self.directory / name)
            if why is None:
                for line in damaged:
                    log.warning("checkpoint %s; resuming from %s instead", line, name)
                return name
            damaged.append(f"{self.directory / name} is unusable: {why}")
        if damaged:
            log.warning("no complete checkpoint in %s (%s); the run starts from step 0",
                        self.directory, "; ".join(damaged))  # fmt: skip
        return None

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, float]) -> Path:
        """Call ``write(folder)`` on every rank, then (rank 0) checksum, check and publish it and prune.

        An interruption (Ctrl-C, a failed producer) waits until the save is done: see ``_interrupts_held``."""
        with _interrupts_held():
            return self._save(step, write)

    def _save(self, step: int, write: Callable[[Path], None]) -> Path:
        path = self.directory / step_tag(step)
        tmp = self.directory / f".{path.name}.partial"
        if self.dist.is_main:
            for stale in self.directory.glob(".step*.partial"):  # left by a save that was killed
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        try:
            write(tmp)
        except BaseException:
            _all_ranks(self.dist, ok=False)  # the others must not publish a folder missing our files
            raise
        if not _all_ranks(self.dist, ok=True):
            raise OSError(f"checkpoint {path}: another rank failed to write its part; nothing was published")
        error = self._publish(tmp, path) if self.dist.is_main else None
        error = _from_main(self.dist, error)  # every rank must hear of it, or the others wait for ever
        if error is not None:
            raise OSError(f"checkpoint {path} {error}")
        return path

    def _publish(self, tmp: Path, path: Path) -> str | None:
        """Place the checkpoint, then prune; what went wrong, if anything, and so where ``latest`` stands."""
        latest = self.directory / "latest"
        try:
            why = self._place(tmp, path)
        except OSError as err:
            why = f"could not be published: {err}"
        if why is not None:
            return f"{why}; {latest} still names the previous checkpoint, if there is one"
        try:
            self._prune(path)
        except OSError as err:  # latest was moved already: the new checkpoint is the one a resume takes
            return f"was saved and {latest} names it, but removing older checkpoints failed: {err}"
        return None

    def _place(self, tmp: Path, path: Path) -> str | None:
        """Manifest, check, rename into place and, last, move ``latest``; the failed check, if any."""
        write_manifest(tmp)
        if (why := damage(tmp, hashes=False)) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return f"failed its check after writing: {why}"
        shutil.rmtree(path, ignore_errors=True)  # a stale folder of an earlier run must not mix in
        tmp.rename(path)
        pointer = self.directory / f".latest.{os.getpid()}"
        pointer.write_text(path.name + "\n")
        os.replace(pointer, self.directory / "latest")
        return None

    def _prune(self, newest: Path) -> None:
        """Keep ``newest`` and the ``keep - 1`` most recently written others at earlier steps.

        Folders past ``newest``'s step go first: a damaged checkpoint that a resume fell back
        from, or a stale one of an earlier run in the same directory; the fallbacks stay.
        """
        step = _tag_step(newest.name)

        def order(p: Path) -> tuple[bool, float]:
            earlier = (s := _tag_step(p.name)) is not None and step is not None and s < step
            return earlier, p.stat().st_mtime

        others = sorted((p for p in self.directory.glob("step*") if p.is_dir() and p != newest), key=order)
        for old in others[: max(len(others) - (self.keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
