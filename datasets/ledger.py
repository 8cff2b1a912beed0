"""The shard ledger: one small JSON per published shard, the only thing readers list.

Layout of a stream ``<root>/<stream>/``::

    shards/<producer>-<index>.tar      complete shards (written as ``*.tmp``, then renamed)
    ledger/<producer>-<index>.json     one entry per published shard, written after its rename
    consumers/<consumer>.json          how many shards each reader has consumed (backpressure)
    reads/<shard>.e<epoch>.<id>.json   a read receipt per shard read, where readers leave them (audits)
    producers/<producer>.json          the producer's next unreserved batch index
    producers/<producer>.lock          held by the one process writing under that id (local storage)
    CLOSED                             written when generation is finished (followers stop)

A ledger file that cannot be parsed, or a second entry for a shard already listed, is left out of
``entries()`` with a warning, so one damaged or copied file loses or doubles nothing else.

An entry names the hash of its shard: ``xxh3_128`` for shards written now (it hashes at memory
speed, where sha256 cost a producer as much as writing the file), ``sha256`` for older entries,
which keep their ``sha256`` field and stay verifiable. ``LedgerEntry.checksum`` answers for both.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, fields

import xxhash

from renderloop.errors import RenderloopError

from .storage import Storage

__all__ = [
    "CHECKSUMS",
    "SHARD_FORMATS",
    "LedgerEntry",
    "Ledger",
    "ProducerBusyError",
    "ProducerLease",
    "checksum",
    "new_hasher",
    "parse_entry",
    "parse_shard_name",
    "verify",
]

log = logging.getLogger(__name__)

CHECKSUMS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
"""Hash algorithms a ledger entry may name, each a constructor of a ``hashlib``-style hasher."""
SHARD_FORMATS = (1, 2)
"""Shard format versions: 1 per-sample records, 2 chunks (``datasets.chunks``)."""


def new_hasher(algorithm: str):
    """A fresh hasher (``update``, ``hexdigest``) for ``algorithm``, one of ``CHECKSUMS``."""
    if algorithm not in CHECKSUMS:
        raise ValueError(f"unknown checksum {algorithm!r}; known: {sorted(CHECKSUMS)}")
    return CHECKSUMS[algorithm]()


def checksum(data, algorithm: str) -> str:
    """Hex digest of ``data`` (bytes or a buffer) under ``algorithm``."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """A published shard."""

    shard: str
    """Shard file name under ``shards/``."""
    count: int
    """Samples in the shard."""
    bytes: int
    """Shard size."""
    sha256: str | None
    """Hex sha256 of the shard file in entries hashed with sha256 (older ones); None otherwise."""
    producer: str
    """Producer id."""
    index: int
    """The producer's shard counter (never reused, also across restarts)."""
    seeds: tuple[int, int]
    """First and last batch index in the shard (with the producer's seed they fix every sample)."""
    published_at: float
    """Unix time of publication."""
    hash: str = "sha256"
    """The algorithm of ``checksum`` (one of ``CHECKSUMS``; entries without the field are sha256)."""
    digest: str = ""
    """Hex digest of the shard file under ``hash`` (for sha256 entries, ``sha256`` again)."""
    format: int = 1
    """Shard format version (``SHARD_FORMATS``; entries without the field are version 1)."""

    @property
    def checksum(self) -> tuple[str, str]:
        """``(algorithm, hex digest)`` of the shard file, whichever hash the entry was written with."""
        return (self.hash, self.digest) if self.hash != "sha256" else ("sha256", self.sha256 or self.digest)

    @property
    def ledger_name(self) -> str:
        """The name its producer gives the entry's file under ``ledger/``."""
        return self.shard.removesuffix(".tar") + ".json"


_TYPES = {"shard": str, "count": int, "bytes": int, "producer": str, "index": int, "seeds": list}
_OPTIONAL = {"hash": str, "digest": str, "format": int}  # absent from entries written before them


def verify(data, entry: LedgerEntry) -> None:
    """Raise ``ValueError`` unless ``data`` hashes to the entry's checksum."""
    algorithm, digest = entry.checksum
    if checksum(data, algorithm) != digest:
        raise ValueError(f"checksum mismatch ({algorithm}; {len(data)} bytes, ledger says {entry.bytes})")


def parse_entry(data: bytes) -> LedgerEntry:
    """A ledger file's entry; raises ``ValueError`` saying what is wrong with it."""
    raw = json.loads(data)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object; got {type(raw).__name__}")
    if missing := sorted({f.name for f in fields(LedgerEntry)} - set(raw) - set(_OPTIONAL)):
        raise ValueError(f"missing {missing}")
    for key, kind in [*_TYPES.items(), *((k, t) for k, t in _OPTIONAL.items() if k in raw)]:
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise ValueError(f"{key} must be {kind.__name__}; got {raw[key]!r}")
    algorithm = raw.get("hash", "sha256")
    if algorithm not in CHECKSUMS:
        raise ValueError(f"hash must be one of {sorted(CHECKSUMS)}; got {algorithm!r}")
    if algorithm == "sha256" and not isinstance(raw["sha256"], str):
        raise ValueError(f"sha256 must be str; got {raw['sha256']!r}")
    if algorithm != "sha256" and (raw["sha256"] is not None or not raw.get("digest")):
        raise ValueError(f"a {algorithm} entry needs a digest and sha256 null; got {raw['sha256']!r}")
    if not isinstance(raw["published_at"], int | float):
        raise ValueError(f"published_at must be a number; got {raw['published_at']!r}")
    if len(raw["seeds"]) != 2 or not all(isinstance(s, int) for s in raw["seeds"]):
        raise ValueError(f"seeds must be two batch indices; got {raw['seeds']!r}")
    if "/" in raw["shard"] or raw["shard"].startswith("."):  # it names a file readers read and delete
        raise ValueError(f"shard must be a plain file name; got {raw['shard']!r}")
    return LedgerEntry(
        **{f.name: raw[f.name] for f in fields(LedgerEntry) if f.name in raw} | {"seeds": tuple(raw["seeds"])}
    )


class ProducerBusyError(RenderloopError):
    """Another process writes the stream under the same producer id."""


# Lock descriptors this process holds. A forked child (a dataloader worker) closes its copies, so
# a lease ends when its holder releases it, not when the last fork of the holder exits. _HELD_LOCK
# spans each descriptor's open and record, and its unrecord and close, and a fork waits for it:
# else a fork from another thread in between leaves the child an unrecorded copy that keeps the
# lease. It is held for an open or a close only (never across a flock), so a fork waits no longer;
# reentrant, so a finalizer or signal handler of the holding thread cannot deadlock on it.
_HELD: set[int] = set()
_HELD_LOCK = threading.RLock()


def _open_held(path: str) -> int:
    with _HELD_LOCK:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _HELD.add(fd)
    return fd


def _unlock(fd: int) -> None:
    """Close a held descriptor (dropping its flock); a no-op in a child, where it was closed at the fork."""
    with _HELD_LOCK:
        if fd in _HELD:
            _HELD.discard(fd)
            os.close(fd)


def _close_inherited() -> None:
    try:
        for fd in _HELD:
            with contextlib.suppress(OSError):
                os.close(fd)
        _HELD.clear()
    finally:
        _HELD_LOCK.release()


os.register_at_fork(before=_HELD_LOCK.acquire, after_in_parent=_HELD_LOCK.release, after_in_child=_close_inherited)


class ProducerLease:
    """One process's exclusive right to write a stream under one producer id.

    On local storage (a local disk or a shared mount with working locks) it is an ``fcntl.flock``
    on ``producers/<producer>.lock``: the kernel drops it when its process dies, so a killed
    producer never leaves a stale lock behind. Object stores and other fsspec storage have no such
    lock: there the lease holds nothing, and only distinct producer ids keep writers apart.

    Raises:
        ProducerBusyError: another process (or another writer of this one) holds the lease.
    """

    def __init__(self, ledger: Ledger, producer: str) -> None:
        self.fd: int | None = None
        storage = ledger.storage
        if not storage.is_local:
            return
        storage.makedirs(ledger.rel("producers"))
        fd = _open_held(storage.path(ledger.rel("producers", f"{producer}.lock")))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            _unlock(fd)
            raise ProducerBusyError(
                f"stream {storage.url(ledger.stream)}: producer {producer} is already being written by another "
                f"process ({holder}); use another storage.stream (or storage.root), or wait for it to finish"
            ) from None
        except OSError as err:
            _unlock(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning(
                "stream %s: storage has no file locks (%s); a second writer of %s is not detected",
                ledger.stream,
                err,
                producer,
            )
            return
        self._finalizer = weakref.finalize(self, _unlock, fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)  # for the other's message
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self._finalizer()
            self.fd = None


class Ledger:
    """Publish, list and account for the shards of one stream."""

    def __init__(self, storage: Storage, stream: str) -> None:
        if not stream or "/" in stream or stream.startswith("."):
            raise ValueError(f"Ledger(): stream must be a plain folder name; got {stream!r}")
        self.storage, self.stream = storage, stream
        self._cache: dict[str, LedgerEntry] = {}
        self.unreadable: dict[str, str] = {}
        """Ledger files (names under ``ledger/``) that could not be parsed, and why."""
        self.duplicates: dict[str, LedgerEntry] = {}
        """Ledger files whose shard another file already lists (ignored)."""

    def rel(self, *parts: str) -> str:
        return "/".join((self.stream, *parts))

    def publish(self, entry: LedgerEntry) -> None:
        self.storage.write_atomic(self.rel("ledger", entry.ledger_name), json.dumps(asdict(entry)).encode())

    def entries(self) -> list[LedgerEntry]:
        """All published shards, oldest first, each once (new files are read once and cached).

        Unparseable files are skipped (``unreadable``); of several entries naming one shard (same
        file name or same checksum) the one under the shard's own name, else the first by file
        name, is kept and the others are ignored (``duplicates``). Both are logged once.
        """
        for name in self.storage.list(self.rel("ledger")):
            if name.endswith(".json") and name not in self._cache and name not in self.unreadable:
                self._load(name)
        return sorted(self._unique(), key=lambda e: (e.published_at, e.shard))

    def _load(self, name: str) -> None:
        try:
            data = self.storage.read_bytes(self.rel("ledger", name))
        except FileNotFoundError:
            return  # removed since the listing
        try:
            self._cache[name] = parse_entry(data)
        except ValueError as err:
            self.unreadable[name] = str(err)
            log.warning(
                "stream %s: skipping unreadable ledger file %s (%s); its shard is not read; rewrite or remove the file",
                self.stream,
                name,
                err,
            )

    def _unique(self) -> list[LedgerEntry]:
        kept: dict = {}  # shard name and checksum -> the ledger file kept for them
        unique = []
        for name in sorted(self._cache, key=lambda n: (n != self._cache[n].ledger_name, n)):
            entry = self._cache[name]
            first = kept.get(entry.shard) or kept.get(entry.checksum)
            if first is None:
                kept[entry.shard] = kept[entry.checksum] = name
                unique.append(entry)
            elif name not in self.duplicates:
                self.duplicates[name] = entry
                log.warning(
                    "stream %s: ignoring ledger file %s: it lists shard %s (%s %s…), as %s does; remove the copy",
                    self.stream,
                    name,
                    entry.shard,
                    entry.checksum[0],
                    entry.checksum[1][:12],
                    first,
                )
        return unique

    def claimed(self) -> set[str]:
        """Shard names some ledger file lists or may list: those of every parsed entry (duplicates
        included) and, for unreadable files, the shard their name stands for."""
        self.entries()
        return {e.shard for e in self._cache.values()} | {n.removesuffix(".json") + ".tar" for n in self.unreadable}

    def next_index(self, producer: str) -> int:
        """The next shard index for ``producer``: one past everything it has published or left behind."""
        used = [e.index for e in self.entries() if e.producer == producer]
        prefix = f"{producer}-"
        for name in self.storage.list(self.rel("shards")) + self.storage.list(self.rel("ledger")):
            if name.startswith(prefix):
                with contextlib.suppress(ValueError):
                    used.append(int(name[len(prefix) :].split(".")[0]))
        return max(used, default=-1) + 1

    def lease(self, producer: str) -> ProducerLease:
        """The exclusive right to write under ``producer`` (see ``ProducerLease``)."""
        return ProducerLease(self, producer)

    def record_consumed(self, consumer: str, shards: int) -> None:
        """Record that ``consumer`` has consumed ``shards`` shards in total.

        Not fsynced: the record only paces producers (``backlog``), a record lost with the machine
        understates consumption until the reader's next shard, and an fsync per shard took 15–18%
        of a loader's time while other writers kept the disk busy (BENCHMARKS.md, Live data)."""
        self.storage.write_atomic(
            self.rel("consumers", f"{consumer}.json"),
            json.dumps({"shards": shards, "at": time.time()}).encode(),
            durable=False,
        )

    def record_read(self, shard: str, epoch: int, consumer: str) -> None:
        """Leave a receipt for one read of ``shard`` in pass ``epoch``: a file of its own, so
        readers on any storage never write the same file, and a killed reader's receipts stay.
        Not fsynced, like the consumed records."""
        name = f"{shard.removesuffix('.tar')}.e{epoch}.{uuid.uuid4().hex[:12]}.json"
        self.storage.write_atomic(
            self.rel("reads", name), json.dumps({"consumer": consumer, "at": time.time()}).encode(), durable=False
        )

    def reads(self) -> Counter[tuple[str, int]]:
        """How often each ``(shard, epoch)`` was read, from the receipts readers left."""
        counts: Counter[tuple[str, int]] = Counter()
        for name in self.storage.list(self.rel("reads")):
            match = re.fullmatch(r"(.+)\.e(\d+)\.[0-9a-f]+\.json", name)
            if match:
                counts[match[1] + ".tar", int(match[2])] += 1
        return counts

    def consumed(self) -> int:
        """Shards consumed, summed over consumers (each shard goes to one consumer per epoch).

        An unreadable record counts as none consumed (its reader rewrites it after its next shard)."""
        total = 0
        for name in self.storage.list(self.rel("consumers")):
            if name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError):
                    total += self._consumed_by(name)
        return total

    def _consumed_by(self, name: str) -> int:
        data = self.storage.read_bytes(self.rel("consumers", name))
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            shards = json.loads(data).get("shards")
            if isinstance(shards, int):
                return shards
        log.warning("stream %s: unreadable consumer record %s; counted as none consumed", self.stream, name)
        return 0

    def backlog(self) -> int:
        """Published shards not yet consumed."""
        return max(len(self.entries()) - self.consumed(), 0)

    def close(self) -> None:
        """Mark the stream finished: followers stop once they have read every entry."""
        self.storage.write_atomic(self.rel("CLOSED"), b"")

    def reopen(self) -> None:
        """Remove the ``CLOSED`` mark before more samples are appended."""
        self.storage.remove(self.rel("CLOSED"))

    def reserve_batches(self, producer: str, count: int) -> int:
        """Reserve ``count`` batch indices for ``producer``; returns the first.

        The counter lives in ``producers/<producer>.json`` and only moves forward, so batches of a
        shard that was never published (a killed producer) are not generated again, and a run
        with another batch or shard size cannot land on indices already used.
        """
        rel = self.rel("producers", f"{producer}.json")
        first = json.loads(self.storage.read_bytes(rel))["next_batch"] if self.storage.exists(rel) else 0
        self.storage.write_atomic(rel, json.dumps({"next_batch": first + count}).encode())
        return first

    @property
    def closed(self) -> bool:
        return self.storage.exists(self.rel("CLOSED"))


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """``(producer, index)`` of a name a producer gives its files, ``<producer>-<index>.tar`` or
    ``<producer>-<index>.json``; None for any other name."""
    match = re.fullmatch(r"([^-/.]+)-(\d+)\.(tar|json)", name)
    return (match[1], int(match[2])) if match else None
