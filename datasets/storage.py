"""Stream storage on any fsspec filesystem: a local path by default, or ``file://``, ``memory://``,
``s3://``, ``gs://`` ... URLs. Writes that readers may see are atomic: temporary name, flush
(and fsync on local disks), then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field

import fsspec

from renderloop.errors import RenderloopError

__all__ = ["Storage", "StorageConfig", "StorageError"]


class StorageError(RenderloopError):
    """Storage refused a write (full, read-only, gone); the writer stopped and published nothing partial."""


@dataclass
class StorageConfig:
    """Where a stream lives (Hydra group ``storage``)."""

    root: str = "data"
    """A local path or an fsspec URL."""
    stream: str = "simulator"
    """The stream's folder name under ``root``."""


@dataclass
class Storage:
    """A root folder on a filesystem; all paths below are relative to it, with ``/`` separators."""

    root: str
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    base: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fs, self.base = fsspec.core.url_to_fs(self.root)
        self.base = self.base.rstrip("/")

    @property
    def is_local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def url(self, rel: str) -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))  # other processes write here: no stale listings
        return self.fs.exists(self.path(rel))

    def list(self, rel: str) -> list[str]:
        """Names (not paths) in folder ``rel``, sorted; empty if it does not exist."""
        self.fs.invalidate_cache(self.path(rel))  # object stores cache listings; others write here
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in entries)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as f:
            return f.read()

    def open_write(self, rel: str):
        """A binary file for writing at ``rel`` (parents created)."""
        self.makedirs(rel.rsplit("/", 1)[0] if "/" in rel else "")
        return self.fs.open(self.path(rel), "wb")

    def sync_close(self, f) -> None:
        """Flush ``f`` to stable storage (fsync on local disks) and close it."""
        f.flush()
        if self.is_local and hasattr(f, "fileno"):
            with contextlib.suppress(OSError, ValueError):  # not every local file object has a descriptor
                os.fsync(f.fileno())
        f.close()

    def rename(self, src: str, dst: str) -> None:
        if self.is_local:
            os.replace(self.path(src), self.path(dst))  # atomic on one filesystem
        else:
            self.fs.mv(self.path(src), self.path(dst))

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel))

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` so readers see either nothing or all of it."""
        tmp = f"{rel}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            f = self.open_write(tmp)
            try:
                f.write(data)
            finally:
                self.sync_close(f)
            self.rename(tmp, rel)
        except OSError:
            with contextlib.suppress(OSError):
                self.remove(tmp)
            raise
