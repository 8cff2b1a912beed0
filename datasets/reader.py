"""Streaming reader: an ``IterableDataset`` that follows a stream's ledger while it grows.

Shards are split across ranks and dataloader workers round-robin by each producer's shard index
(stable no matter in which order producers publish), so every published sample is read exactly
once per epoch across all of them, and the split stays balanced. Each shard's checksum is
verified before decoding; a truncated or corrupt shard, like an unreadable ledger file, is
skipped, logged and counted, and reading goes on. A second ledger entry for a shard already
listed is ignored (``Ledger.entries``) and counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from renderloop.metrics import MetricsSink

from .ledger import Ledger, LedgerEntry, parse_shard_name
from .schema import decode_sample
from .storage import Storage

__all__ = ["ReaderStats", "ShardStream", "shard_slot", "iter_tar_samples", "check_shard"]

log = logging.getLogger(__name__)


@dataclass
class ReaderStats:
    """Counters of one reader (one rank × worker)."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    skipped_shards: int = 0
    """Corrupt or truncated shards and unreadable ledger files passed over (their samples are lost)."""
    skipped: list[str] = field(default_factory=list)
    """Their names: shard names, and ``ledger/<file>`` for ledger files."""
    duplicates: int = 0
    """Ledger entries ignored because another entry lists the same shard (nothing lost)."""


def shard_slot(entry: LedgerEntry, slots: int) -> int:
    """The (rank, worker) slot that reads a shard: round-robin over each producer's shard indices,
    offset per producer, so the split is balanced and independent of publish order."""
    return _slot(entry.producer, entry.index, slots)


def _slot(producer: str, index: int, slots: int) -> int:
    return (index + zlib.crc32(producer.encode())) % slots


def _ledger_file_slot(name: str, slots: int) -> int:
    """The slot that accounts for an unreadable ledger file: that of the shard its name stands for
    (slot 0 for other names), so the readers of a stream count it once between them."""
    parsed = parse_shard_name(name)
    return _slot(*parsed, slots) if parsed else 0


class _Unsupported(Exception):
    """A tar feature the fast parser leaves to :mod:`tarfile` (base-256 sizes, GNU long names)."""


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        raise _Unsupported("base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _fast_tar_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    """``(name, content)`` of the regular files of a ustar/pax tar in memory.

    Python's :mod:`tarfile` spends most of a shard's read time building member objects; shards
    hold tens of thousands of small files, so this parses the 512-byte headers directly.
    """
    off, end_of_data, pax = 0, len(data), {}
    while off + 512 <= end_of_data:
        header = data[off : off + 512]
        if not header.strip(b"\0"):
            return  # end-of-archive blocks
        stored, unsigned = _octal(header[148:156]), sum(header[:148]) + 256 + sum(header[156:])
        if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in header):  # signed bytes
            raise tarfile.HeaderError(f"bad header checksum at byte {off}")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        start = off + 512
        if start + size > end_of_data:
            raise tarfile.ReadError(f"truncated member at byte {off}")
        off = start + (size + 511) // 512 * 512
        if kind == b"x":  # pax header of the next member: "<len> <key>=<value>\n" records
            body, pax = data[start : start + size], {}
            while body:
                length = int(body.split(b" ", 1)[0])
                if length <= 0:
                    raise tarfile.HeaderError(f"bad pax record at byte {off}")
                key, _, value = body[: length - 1].split(b" ", 1)[1].partition(b"=")
                pax[key.decode()] = value.decode()
                body = body[length:]
            continue
        if kind in (b"g", b"5"):
            pax = {} if kind == b"5" else pax
            continue
        if kind not in (b"0", b"\0"):
            raise _Unsupported(f"member type {kind!r}")
        name = header[:100].split(b"\0", 1)[0].decode()
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix (GNU keeps times here)
            name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
        name, pax = pax.get("path", name), {}
        yield name, data[start : start + size]
    if data[off:].strip(b"\0"):
        raise tarfile.ReadError(f"truncated header at byte {off}")


def _tar_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    try:
        files = list(_fast_tar_files(data))
    except _Unsupported:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            files = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    return iter(files)


def iter_tar_samples(data: bytes) -> Iterator[dict[str, bytes]]:
    """Raw samples (``__key__`` + field bytes) of a WebDataset tar held in memory."""
    current: dict[str, bytes] = {}
    for path, content in _tar_files(data):
        key, _, name = path.rpartition("/")[2].partition(".")
        if current and current["__key__"] != key:
            yield current
            current = {}
        current["__key__"] = key
        current[name] = content
    if current:
        yield current


def _unread(entries: list[LedgerEntry], done: set[str], slot: int, slots: int) -> list[LedgerEntry]:
    return [e for e in entries if e.shard not in done and shard_slot(e, slots) == slot]


def check_shard(data: bytes, entry: LedgerEntry) -> list[dict[str, bytes]]:
    """The raw samples of a shard's bytes, once they match the ledger's checksum.

    Raises:
        ValueError: checksum mismatch; tarfile.TarError: a damaged tar.
    """
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ValueError(f"checksum mismatch ({len(data)} bytes, ledger says {entry.bytes})")
    return list(iter_tar_samples(data))


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Decoded samples of a stream, for this rank and dataloader worker.

    Args:
        root: storage root (path or fsspec URL); stream: stream folder name.
        rank, world_size: default from ``torch.distributed`` or ``RANK``/``WORLD_SIZE``.
        follow: keep polling the ledger for new shards until the stream is closed (live training);
            otherwise read what is published now.
        epochs: passes over a finished stream (``follow=False``); 0 repeats forever.
        shuffle_buffer: samples held for shuffling (0 keeps shard order).
        seed: shuffling seed (mixed with epoch and slot).
        poll_seconds: ledger polling interval while following.
        idle_timeout: stop following after this many seconds without a new shard (None: wait).
        consumer: consumer group: each reader records, under ``<consumer>-r<rank>-w<worker>``, how
            many shards its live (first) pass has read; producers' backpressure sums the files.
        fields: keep only these fields (plus ``__key__``); None keeps all.
        metrics: where to report samples, shards, bytes and skipped shards.
        skip: samples to pass over at the start, per dataloader worker (index = worker id; the
            main process is worker 0): a trainer's resume position. Skipped samples are shuffled
            like the others but never decoded, so a resumed reader continues the same sequence.
        delete_consumed: remove each shard file once the live pass has read it (its ledger entry
            stays), so a long live run keeps only its backlog on disk. A resumed reader passes
            over deleted shards and counts their samples as skipped: it continues after them
            without repeats, but not in exactly the uninterrupted order. For streams read once.
    """

    def __init__(
        self,
        root: str,
        stream: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        follow: bool = True,
        epochs: int = 1,
        shuffle_buffer: int = 0,
        seed: int = 0,
        poll_seconds: float = 0.2,
        idle_timeout: float | None = None,
        consumer: str = "reader",
        fields: list[str] | None = None,
        metrics: MetricsSink | None = None,
        skip: tuple[int, ...] | list[int] = (),
        delete_consumed: bool = False,
    ) -> None:
        super().__init__()
        if epochs < 0 or shuffle_buffer < 0 or poll_seconds <= 0:
            raise ValueError("ShardStream(): epochs and shuffle_buffer must be >= 0 and poll_seconds > 0")
        self.root, self.stream = root, stream
        self.rank, self.world_size = rank, world_size
        self.follow, self.epochs, self.shuffle_buffer, self.seed = follow, epochs, shuffle_buffer, seed
        self.poll_seconds, self.idle_timeout, self.consumer = poll_seconds, idle_timeout, consumer
        self.fields = set(fields) if fields else None
        self.stats = ReaderStats()
        self.metrics = metrics or MetricsSink()
        self.skip = tuple(skip)
        self.delete_consumed = delete_consumed
        self._consumer = consumer
        self._deleted_samples = 0  # samples of deleted shards passed over, not yet set against skip

    def _slot(self) -> tuple[int, int, str]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            rank, world = _distributed()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        name = f"{self.consumer}-r{rank}-" + (f"w{worker}" if info else "main")
        return rank * workers + worker, world * workers, name

    def _read_shard(self, storage: Storage, ledger: Ledger, entry: LedgerEntry) -> list[dict[str, bytes]] | None:
        """The raw (undecoded) samples of a shard, or None if it is corrupt."""
        rel = ledger.rel("shards", entry.shard)
        if self.delete_consumed and not storage.exists(rel):  # read and deleted before a restart
            self._deleted_samples += entry.count
            return None
        try:
            data = storage.read_bytes(rel)
            raws = check_shard(data, entry)
        except (OSError, ValueError, tarfile.TarError) as err:
            self._skip(entry.shard)
            log.warning("skipping shard %s of stream %s: %s", entry.shard, self.stream, err)
            return None
        self.stats.shards += 1
        self.stats.bytes += len(data)
        labels = {"stream": self.stream, "consumer": self._consumer}
        self.metrics.inc("renderloop_shards_consumed_total", **labels)
        self.metrics.inc("renderloop_bytes_read_total", len(data), **labels)
        self.metrics.inc("renderloop_samples_consumed_total", len(raws), **labels)
        if self.fields is not None:
            raws = [{k: v for k, v in raw.items() if k == "__key__" or k in self.fields} for raw in raws]
        return [{**raw, "__shard__": entry.shard} for raw in raws]

    def _skip(self, name: str) -> None:
        """Count a shard (or ledger file) whose samples are lost to this reader."""
        self.stats.skipped_shards += 1
        self.stats.skipped.append(name)
        self.metrics.inc("renderloop_shards_skipped_total", stream=self.stream, consumer=self._consumer)

    def _listed(self, ledger: Ledger, slot: int, slots: int, counted: set[str]) -> list[LedgerEntry]:
        """The stream's entries; unreadable and duplicate ledger files of this slot are counted once
        per epoch (``Ledger`` logs them)."""
        entries = ledger.entries()
        for name in ledger.unreadable.keys() - counted:
            counted.add(name)
            if _ledger_file_slot(name, slots) == slot:
                self._skip(f"ledger/{name}")
        for name, entry in ledger.duplicates.items():
            if name not in counted:
                counted.add(name)
                self.stats.duplicates += shard_slot(entry, slots) == slot
        return entries

    def _record_consumed(self, ledger: Ledger, consumer: str, shards: int) -> None:
        """Account for what was read (backpressure); storage refusing the small record only warns:
        training goes on with what is published."""
        try:
            ledger.record_consumed(consumer, shards)
        except OSError as err:
            log.warning("stream %s: could not record consumed shards (%s); backpressure is stale", self.stream, err)

    def _delete(self, storage: Storage, ledger: Ledger, entry: LedgerEntry) -> None:
        try:
            storage.remove(ledger.rel("shards", entry.shard))
        except OSError as err:
            log.warning("stream %s: could not delete consumed shard %s (%s)", self.stream, entry.shard, err)

    def _epoch(self, storage: Storage, ledger: Ledger, slot: int, slots: int, consumer: str, epoch: int):
        done: set[str] = set()
        counted: set[str] = set()  # ledger files accounted for
        last_new = time.monotonic()
        while True:
            fresh = _unread(self._listed(ledger, slot, slots, counted), done, slot, slots)
            for entry in fresh:
                done.add(entry.shard)
                samples = self._read_shard(storage, ledger, entry)
                if epoch == 0 and self.delete_consumed:
                    self._delete(storage, ledger, entry)
                if samples is not None:
                    yield from samples
                if epoch == 0:  # the live pass is what backpressure accounts for
                    self._record_consumed(ledger, consumer, len(done))
            if fresh:
                last_new = time.monotonic()
            if not self.follow or epoch > 0:
                return
            if ledger.closed and not _unread(self._listed(ledger, slot, slots, counted), done, slot, slots):
                return
            if self.idle_timeout is not None and time.monotonic() - last_new > self.idle_timeout:
                log.warning("stream %s: no new shard for %.1f s; stopping", self.stream, self.idle_timeout)
                return
            time.sleep(self.poll_seconds)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for raw in self._raw_samples():
            yield decode_sample(raw, shard=raw["__shard__"])

    def _raw_samples(self) -> Iterator[dict[str, bytes]]:
        info = get_worker_info()
        worker = info.id if info else 0
        skip = self.skip[worker] if worker < len(self.skip) else 0
        for raw in self._shuffled():
            if self._deleted_samples:  # they stand for skipped samples that were never yielded
                skip, self._deleted_samples = max(skip - self._deleted_samples, 0), 0
            if skip:
                skip -= 1
                continue
            yield raw

    def _shuffled(self) -> Iterator[dict[str, bytes]]:
        slot, slots, consumer = self._slot()
        self._consumer = consumer
        storage = Storage(self.root)
        ledger = Ledger(storage, self.stream)
        epoch = 0
        while self.epochs == 0 or epoch < self.epochs:
            rng = random.Random(hash((self.seed, epoch, slot)))
            buffer: list[dict[str, Any]] = []
            read = 0
            for sample in self._epoch(storage, ledger, slot, slots, consumer, epoch):
                read += 1
                self.stats.samples += 1
                if self.shuffle_buffer <= 1:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
            if not read and self.epochs == 0:  # repeating an empty pass would spin for ever
                raise RuntimeError(
                    f"stream {self.stream!r}: reader slot {slot} of {slots} (ranks × dataloader workers) "
                    f"has no shards; the stream has {len(ledger.entries())}: use fewer ranks or workers"
                )
            epoch += 1
