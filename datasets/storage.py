"""Stream storage on any fsspec filesystem: a local path by default, or ``file://``, ``memory://``,
``s3://``, ``gs://`` ... URLs. Writes that readers may see are atomic: temporary name, flush
(and fsync on local disks), then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from renderloop.config import ConfigError
from renderloop.errors import InputError, RenderloopError

__all__ = ["Storage", "StorageConfig", "StorageError", "check_root", "check_stream"]


class StorageError(RenderloopError):
    """Storage refused a write (full, read-only, gone); the writer stopped and published nothing partial."""


@dataclass
class StorageConfig:
    """Where a stream lives (Hydra group ``storage``)."""

    root: str = "data"
    """A local path or an fsspec URL."""
    stream: str = "simulator"
    """The stream's folder name under ``root`` (for a method: the prefix of ``<stream>-<role>``)."""
    record: str = "chunk"
    """How producers write: ``chunk`` (one record per batch, for training) or ``sample`` (one per
    sample with PNG images, for people and third-party tools); readers take both."""

    def __post_init__(self) -> None:
        check_root("storage.root", self.root)
        check_stream("storage.stream", self.stream)
        if self.record not in ("chunk", "sample"):
            raise ConfigError("storage.record", f"must be chunk or sample; got {self.record!r}")


def _filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``fsspec.core.url_to_fs(root)``, with an ``InputError`` that names the root when fsspec
    cannot open it (its own error says only "Protocol not known")."""
    try:
        return fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as err:
        raise InputError(f"storage root {root!r} {_unusable(err)}") from None


def _unusable(err: Exception) -> str:
    """Why fsspec cannot open a root, and what to give instead."""
    if isinstance(err, ImportError):  # a known protocol whose implementation is not installed
        return f"needs a package that is not installed ({err})"
    return f"is no fsspec location ({err}); give a local path or a URL such as memory://, s3://, gs://"


def check_root(key: str, root: str) -> None:
    """Refuse a storage root that cannot hold streams: empty, a protocol fsspec cannot open, or a
    local path with a file where a folder must be (checked before anything is written)."""
    if not root:
        raise ConfigError(key, "needs a local path or an fsspec URL; got ''")
    try:
        fs, base = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as err:
        raise ConfigError(key, f"{_unusable(err)}; got {root!r}") from None
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols:
        where = Path(base)
        while not where.exists() and where != where.parent:  # the folders still to make must not be blocked
            where = where.parent
        if not where.is_dir():
            raise ConfigError(key, f"must be a folder, but {where} is a file; got {root!r}")


def check_stream(key: str, stream: str) -> None:
    """Refuse a stream name that is not one plain folder name (empty, nested, or leaving the root)."""
    if not stream or "/" in stream or "\\" in stream or stream.startswith("."):
        raise ConfigError(key, f"must be a plain folder name (no '/', not starting with '.'); got {stream!r}")


@dataclass
class Storage:
    """A root folder on a filesystem; all paths below are relative to it, with ``/`` separators."""

    root: str
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    base: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fs, self.base = _filesystem(self.root)
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

    def write_atomic(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` so readers see either nothing or all of it; ``durable``: on stable
        storage before it is renamed (a crash of the machine, not only of the process, keeps it)."""
        tmp = f"{rel}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            f = self.open_write(tmp)
            try:
                f.write(data)
            finally:
                if durable:
                    self.sync_close(f)
                else:
                    f.close()
            self.rename(tmp, rel)
        except OSError:
            with contextlib.suppress(OSError):
                self.remove(tmp)
            raise
