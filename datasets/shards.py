"""Shard writing: samples → a tar under a temporary name → fsync → rename → ledger entry.

A shard is visible to readers only through its ledger entry, which is written after the
complete file has its final name; a producer killed mid-shard leaves only a ``*.tmp`` file,
which its restart removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import webdataset

from .ledger import Ledger, LedgerEntry
from .schema import encode_sample

__all__ = ["ShardWriter"]


class _Hashing:
    """A write-only file wrapper that counts bytes and hashes them on the way through."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Write samples into shards of ``samples_per_shard`` and publish each one in the ledger.

    Args:
        ledger: the stream's ledger (its storage receives the shards).
        producer: id of this producer; shard names are ``<producer>-<index>.tar``.
        samples_per_shard: samples per shard (the last one may be shorter, see ``close``).
    """

    def __init__(self, ledger: Ledger, producer: str, samples_per_shard: int) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"ShardWriter(): samples_per_shard must be >= 1; got {samples_per_shard}")
        if not producer or "-" in producer or "/" in producer or "." in producer:
            raise ValueError(f"ShardWriter(): producer id must be non-empty without '-', '/' or '.'; got {producer!r}")
        self.ledger, self.producer, self.samples_per_shard = ledger, producer, samples_per_shard
        self.storage = ledger.storage
        # The index counts stale temporary shards too (before they are removed): never reuse a name.
        self.index = ledger.next_index(producer)
        self._remove_stale_tmp()
        self._open = None
        self.published: list[LedgerEntry] = []

    def _remove_stale_tmp(self) -> None:
        for name in self.storage.list(self.ledger.rel("shards")):
            if name.startswith(f"{self.producer}-") and name.endswith(".tmp"):
                self.storage.remove(self.ledger.rel("shards", name))

    def _start(self) -> None:
        name = f"{self.producer}-{self.index:06d}.tar"
        tmp = self.ledger.rel("shards", name + ".tmp")
        raw = self.storage.open_write(tmp)
        hashing = _Hashing(raw)
        self._open = {
            "name": name,
            "tmp": tmp,
            "raw": raw,
            "hash": hashing,
            # An integer mtime: a float one makes tarfile give every member its own PAX header.
            "tar": webdataset.TarWriter(hashing, encoder=False, mtime=0),
            "count": 0,
            "seeds": [],
        }

    @property
    def in_progress(self) -> bool:
        """True while a shard has been started and not yet published."""
        return self._open is not None

    def write(self, sample: Mapping[str, Any], seed: int) -> LedgerEntry | None:
        """Encode and append one sample; returns the ledger entry if this completed a shard."""
        if self._open is None:
            self._start()
        self._open["tar"].write(encode_sample(sample))
        self._open["count"] += 1
        self._open["seeds"].append(int(seed))
        if self._open["count"] >= self.samples_per_shard:
            return self._publish()
        return None

    def _publish(self) -> LedgerEntry:
        s = self._open  # still open until renamed: a failure before that leaves it to ``abort``
        s["tar"].tarstream.close()  # writes the end-of-archive blocks through the hashing wrapper
        self.storage.sync_close(s["raw"])
        final = self.ledger.rel("shards", s["name"])
        self.storage.rename(s["tmp"], final)
        self._open = None
        entry = LedgerEntry(
            shard=s["name"],
            count=s["count"],
            bytes=s["hash"].size,
            sha256=s["hash"].sha.hexdigest(),
            producer=self.producer,
            index=self.index,
            seeds=(min(s["seeds"]), max(s["seeds"])),
            published_at=time.time(),
        )
        self.ledger.publish(entry)
        self.index += 1
        self.published.append(entry)
        return entry

    def close(self) -> LedgerEntry | None:
        """Publish the partly filled shard, if any."""
        return self._publish() if self._open is not None and self._open["count"] else None

    def abort(self) -> None:
        """Drop the shard in progress (after a storage error): close it and remove its temporary file.

        Best effort: storage that refused a write may refuse this too; a ``*.tmp`` left behind is
        never listed by readers and is removed when this producer id starts again.
        """
        s, self._open = self._open, None
        if s is None:
            return
        tar = s["tar"].tarstream
        tar.closed = True  # no end-of-archive blocks: the file is dropped
        with contextlib.suppress(AttributeError):
            tar.fileobj.closed = True  # tarfile's stream wrapper would write them when collected
        with contextlib.suppress(Exception):
            s["raw"].close()
        with contextlib.suppress(Exception):
            self.storage.remove(s["tmp"])
