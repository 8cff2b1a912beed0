"""Shard writing: chunks (or samples) → a tar under a temporary name → fsync → rename → ledger entry.

A shard is visible to readers only through its ledger entry, which is written after the
complete file has its final name. A producer killed mid-shard leaves only a ``*.tmp`` file, one
killed between the rename and the entry a shard nobody lists; the next writer of its id removes
both. One writer at a time per producer id: it holds the id's lease (``ProducerLease``), and its
temporary names carry its pid and a random token, so two writers never share a file.

A shard holds either chunks (format version 2, ``write_chunk``: the live path) or per-sample
records (version 1, ``write``: an export for people and third-party tools), never both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .chunks import FORMAT_VERSION, Chunk, chunk_members
from .ledger import CHECKSUMS, Ledger, LedgerEntry, ProducerBusyError, new_hasher, parse_shard_name
from .schema import encode_sample
from .tar import TarStream

__all__ = ["ShardWriter"]

log = logging.getLogger(__name__)


class _Hashing:
    """A write-only file wrapper that counts bytes and hashes them on the way through."""

    def __init__(self, f, algorithm: str) -> None:
        self.f, self.hasher, self.size = f, new_hasher(algorithm), 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Write samples into shards of ``samples_per_shard`` and publish each one in the ledger.

    The first shard (or ``acquire()``) takes the producer id's lease on the stream and clears what
    an earlier writer of the id left unpublished; ``release()`` gives the lease back (so does the
    writer's end, and on local storage the end of its process).

    Args:
        ledger: the stream's ledger (its storage receives the shards).
        producer: id of this producer; shard names are ``<producer>-<index>.tar``.
        samples_per_shard: samples per shard (the last one may be shorter, see ``close``).
        checksum: the hash its ledger entries record (``xxh3_128``; ``sha256`` for tools that
            only know that).
    """

    def __init__(self, ledger: Ledger, producer: str, samples_per_shard: int, *, checksum: str = "xxh3_128") -> None:
        if samples_per_shard < 1:
            raise ValueError(f"ShardWriter(): samples_per_shard must be >= 1; got {samples_per_shard}")
        if checksum not in CHECKSUMS:
            raise ValueError(f"ShardWriter(): checksum must be one of {sorted(CHECKSUMS)}; got {checksum!r}")
        if not producer or "-" in producer or "/" in producer or "." in producer:
            raise ValueError(f"ShardWriter(): producer id must be non-empty without '-', '/' or '.'; got {producer!r}")
        self.ledger, self.producer, self.samples_per_shard = ledger, producer, samples_per_shard
        self.checksum = checksum
        self.storage = ledger.storage
        self.index: int | None = None  # set under the lease
        self._lease = None
        self._open = None
        self.published: list[LedgerEntry] = []

    def acquire(self) -> None:
        """Take the producer id's lease, then remove what an earlier writer of the id left behind.

        Raises:
            ProducerBusyError: another writer holds the lease (this one included: one run at a time).
        """
        if self._lease is not None:
            raise ProducerBusyError(
                f"stream {self.storage.url(self.ledger.stream)}: producer {self.producer} is already being written "
                "by this writer; run it once at a time"
            )
        lease = self.ledger.lease(self.producer)
        try:
            # The index counts leftovers before they are removed: no shard name is ever reused.
            self.index = self.ledger.next_index(self.producer)
            self._remove_leftovers()
        except BaseException:
            lease.release()
            raise
        self._lease = lease

    def release(self) -> None:
        """Drop a shard still in progress and give the lease back."""
        self.abort()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _remove_leftovers(self) -> None:
        """Remove this id's temporary shards (killed mid-shard) and its shards no ledger file lists
        (killed between rename and entry). Other ids' files, and shards a ledger file lists, even
        unreadably, are never touched."""
        claimed = self.ledger.claimed()
        for name in self.storage.list(self.ledger.rel("shards")):
            owner = parse_shard_name(name)
            if name.startswith(f"{self.producer}-") and name.endswith(".tmp"):
                self.storage.remove(self.ledger.rel("shards", name))
            elif owner and owner[0] == self.producer and name.endswith(".tar") and name not in claimed:
                log.warning(
                    "stream %s: removing shard %s: an earlier writer of %s renamed it but stopped before "
                    "its ledger entry",
                    self.ledger.stream,
                    name,
                    self.producer,
                )
                self.storage.remove(self.ledger.rel("shards", name))

    def _start(self, format: int) -> None:
        if self._lease is None:
            self.acquire()
        name = f"{self.producer}-{self.index:06d}.tar"
        tmp = self.ledger.rel("shards", f"{name.removesuffix('.tar')}.{os.getpid()}_{uuid.uuid4().hex[:8]}.tar.tmp")
        raw = self.storage.open_write(tmp)
        hashing = _Hashing(raw, self.checksum)
        self._open = {
            "name": name,
            "tmp": tmp,
            "raw": raw,
            "hash": hashing,
            "tar": TarStream(hashing),
            "format": format,
            "count": 0,
            "seeds": [],
        }

    def _ready(self, format: int) -> dict:
        """The shard in progress, started if needed; a shard holds one format only."""
        if self._open is None:
            self._start(format)
        elif self._open["format"] != format:
            kinds = {1: "per-sample records", FORMAT_VERSION: "chunks"}
            raise ValueError(
                f"ShardWriter(): shard {self._open['name']} holds {kinds[self._open['format']]}; "
                f"close it before writing {kinds[format]}"
            )
        return self._open

    @property
    def in_progress(self) -> bool:
        """True while a shard has been started and not yet published."""
        return self._open is not None

    @property
    def pending(self) -> int:
        """Samples in the shard in progress (0 if none)."""
        return self._open["count"] if self._open is not None else 0

    def write(self, sample: Mapping[str, Any], seed: int) -> LedgerEntry | None:
        """Encode and append one sample as a per-sample record (format version 1); returns the
        ledger entry if this completed a shard."""
        encoded = encode_sample(sample)
        s = self._ready(1)
        key = encoded.pop("__key__")
        for name, data in encoded.items():
            s["tar"].add(f"{key}.{name}", [data])
        return self._added(1, [seed])

    def write_chunk(self, chunk: Chunk) -> LedgerEntry | None:
        """Append a chunk (format version 2; its arrays are written without a copy); returns the
        ledger entry if this completed a shard. A chunk never straddles two shards.

        Raises:
            ValueError: the chunk does not fit in the shard's remaining ``samples_per_shard``.
        """
        members = chunk_members(chunk)
        s = self._ready(FORMAT_VERSION)
        if s["count"] + chunk.count > self.samples_per_shard:
            raise ValueError(
                f"ShardWriter(): a chunk of {chunk.count} samples does not fit in shard {s['name']} "
                f"({s['count']} of {self.samples_per_shard}); make samples_per_shard a multiple of the chunk size"
            )
        for name, parts in members:
            s["tar"].add(name, parts)
        return self._added(chunk.count, chunk.seeds)

    def _added(self, count: int, seeds) -> LedgerEntry | None:
        s = self._open
        s["count"] += count
        s["seeds"] += [int(min(seeds)), int(max(seeds))] if len(seeds) else []
        return self._publish() if s["count"] >= self.samples_per_shard else None

    def _publish(self) -> LedgerEntry:
        s = self._open  # still open until its entry is written: a failure before that leaves it to ``abort``
        s["tar"].close()  # writes the end-of-archive blocks through the hashing wrapper
        self.storage.sync_close(s["raw"])
        self.storage.rename(s["tmp"], self.ledger.rel("shards", s["name"]))
        digest = s["hash"].hasher.hexdigest()
        s["entry"] = LedgerEntry(
            shard=s["name"],
            count=s["count"],
            bytes=s["hash"].size,
            sha256=digest if self.checksum == "sha256" else None,
            producer=self.producer,
            index=self.index,
            seeds=(min(s["seeds"]), max(s["seeds"])),
            published_at=time.time(),
            hash=self.checksum,
            digest=digest,
            format=s["format"],
        )
        self.ledger.publish(s["entry"])
        self._open = None
        return self._published(s["entry"])

    def _published(self, entry: LedgerEntry) -> LedgerEntry:
        self.index += 1
        self.published.append(entry)
        return entry

    def close(self) -> LedgerEntry | None:
        """Publish the partly filled shard, if any."""
        return self._publish() if self._open is not None and self._open["count"] else None

    def abort(self) -> bool:
        """Drop the shard in progress (after an error): close it and remove its file.

        Returns True when the shard is surely unpublished, so its samples may be written again;
        False when its ledger entry was written after all or cannot be ruled out. Best effort:
        storage that refused a write may refuse this too; a file left behind is never listed by
        readers and is removed when this producer id starts again.
        """
        s, self._open = self._open, None
        if s is None:
            return True
        if "entry" in s:  # renamed; its ledger entry failed
            return self._drop_renamed(s["entry"])
        s["tar"].closed = True  # no end-of-archive blocks: the file is dropped
        with contextlib.suppress(Exception):
            s["raw"].close()
        with contextlib.suppress(Exception):
            self.storage.remove(s["tmp"])
        return True

    def _drop_renamed(self, entry: LedgerEntry) -> bool:
        try:
            if self.storage.exists(self.ledger.rel("ledger", entry.ledger_name)):
                self._published(entry)
                return False
            self.storage.remove(self.ledger.rel("shards", entry.shard))
            return True
        except Exception:  # noqa: BLE001 - unknown: keep the name and the samples unused
            self.index += 1
            return False
