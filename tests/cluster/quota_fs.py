"""A local filesystem with a byte quota (``quota://`` URLs) for storage-full tests.

Writes count against ``RENDERLOOP_TEST_QUOTA_BYTES`` per process; once it is used up every write
raises ``OSError(ENOSPC)``, as a full disk does. ``register`` makes the protocol known to fsspec
(also usable as Ray's ``worker_process_setup_hook``).
"""

from __future__ import annotations

import errno
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

QUOTA_ENV = "RENDERLOOP_TEST_QUOTA_BYTES"


class _QuotaFile:
    def __init__(self, f, fs: QuotaFileSystem) -> None:
        self.f, self.fs = f, fs

    def write(self, data) -> int:
        if QuotaFileSystem.written + len(data) > int(os.environ.get(QUOTA_ENV, 1 << 62)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        QuotaFileSystem.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


class QuotaFileSystem(LocalFileSystem):
    protocol = "quota"
    written = 0  # bytes written by this process

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        f = super()._open(path, mode, block_size, **kwargs)
        return _QuotaFile(f, self) if "w" in mode or "a" in mode else f


def register() -> None:
    fsspec.register_implementation("quota", QuotaFileSystem, clobber=True)
