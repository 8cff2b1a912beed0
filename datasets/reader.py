"""Streaming reader: an ``IterableDataset`` that follows a stream's ledger while it grows.

Shards are split across ranks and dataloader workers round-robin by each producer's shard index
(stable no matter in which order producers publish), so every published sample is read exactly
once per epoch across all of them, and the split stays balanced. Each shard's checksum is
verified, and every chunk of it checked against its header, before any of its samples is used; a
truncated or corrupt shard, like an unreadable ledger file, is skipped, logged and counted, and
reading goes on. A second ledger entry for a shard already listed is ignored (``Ledger.entries``)
and counted. A shard in a format this reader does not know stops it with an error naming it.

Both shard formats read the same way: a shard becomes units (its chunks, or its per-sample
records) whose samples are shuffled as rows, before anything is decoded. The reader yields
decoded samples, or with ``batch_size`` host batches assembled from the chunks' arrays
(``host_batch.HostBatch``, decoded on the device by ``host_batch.decode_batch``).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import tarfile
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from renderloop.metrics import MetricsSink

from .batches import assemble, read_units
from .chunks import HEADER, ShardFormatError, parse_chunk
from .ledger import SHARD_FORMATS, Ledger, LedgerEntry, parse_shard_name, verify
from .storage import Storage
from .tar import tar_records

__all__ = ["ReaderStats", "ShardStream", "ShardFormatError", "shard_slot", "iter_tar_samples", "check_shard"]

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


def iter_tar_samples(data: bytes) -> Iterator[Mapping[str, bytes]]:
    """Per-sample records (``__key__`` + field bytes, as ``schema.encode_sample`` makes them) of a
    WebDataset tar held in memory, of either format: a chunk's samples are encoded on access."""
    for key, record in tar_records(data):
        if HEADER in record:
            chunk = parse_chunk(key, record)
            yield from (chunk.export(i) for i in range(chunk.count))
        else:
            yield {"__key__": key, **{k: bytes(v) for k, v in record.items()}}


def _unread(entries: list[LedgerEntry], done: set[str], slot: int, slots: int) -> list[LedgerEntry]:
    return [e for e in entries if e.shard not in done and shard_slot(e, slots) == slot]


def _check_format(entry: LedgerEntry) -> None:
    if entry.format not in SHARD_FORMATS:
        raise ShardFormatError(
            f"shard {entry.shard}: its ledger entry says format version {entry.format}; this reader reads "
            f"{sorted(SHARD_FORMATS)}: update renderloop to read it"
        )


def check_shard(data: bytes, entry: LedgerEntry) -> list[Mapping[str, bytes]]:
    """The per-sample records of a shard's bytes (see ``iter_tar_samples``), once they match the
    ledger's checksum.

    Raises:
        ValueError: checksum mismatch or a malformed chunk; tarfile.TarError: a damaged tar;
        ShardFormatError: a format version this reader does not know.
    """
    _check_format(entry)
    verify(data, entry)
    return list(iter_tar_samples(data))


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Decoded samples (or host batches) of a stream, for this rank and dataloader worker.

    Args:
        root: storage root (path or fsspec URL); stream: stream folder name.
        rank, world_size: default from ``torch.distributed`` or ``RANK``/``WORLD_SIZE``.
        follow: keep polling the ledger for new shards until the stream is closed (live training);
            otherwise read what is published now.
        epochs: passes over a finished stream (``follow=False``); 0 repeats forever.
        shuffle_buffer: samples held for shuffling (0 keeps shard order). Whole chunks enter the
            buffer and their samples leave it one by one, so a buffer larger than a chunk mixes
            chunks (and producers) as well as the samples within them.
        seed: shuffling seed (mixed with epoch and slot).
        poll_seconds: ledger polling interval while following.
        idle_timeout: stop following after this many seconds without a new shard (None: wait).
        consumer: consumer group: each reader records, under ``<consumer>-r<rank>-w<worker>``, how
            many shards its live (first) pass has read; producers' backpressure sums the files.
        fields: keep only these fields (plus ``__key__``); None keeps all.
        metrics: where to report samples, shards, bytes and skipped shards.
        skip: samples to pass over at the start, per dataloader worker (index = worker id; the
            main process is worker 0): a trainer's resume position. Skipped samples are shuffled
            like the others but never decoded or copied, so a resumed reader continues the same sequence.
        delete_consumed: remove each shard file once the live pass has read it (its ledger entry
            stays), so a long live run keeps only its backlog on disk. A resumed reader passes
            over deleted shards and counts their samples as skipped: it continues after them
            without repeats, but not in exactly the uninterrupted order. For streams read once.
        batch_size: yield ``host_batch.HostBatch`` es of this many samples (in shuffled order; an
            incomplete last one is dropped) instead of decoded samples.
        receipts: leave a receipt per shard read (``Ledger.record_read``), so an audit can prove
            that no shard was read twice in one pass, across ranks, workers and restarts.
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
        batch_size: int | None = None,
        receipts: bool = False,
    ) -> None:
        super().__init__()
        if epochs < 0 or shuffle_buffer < 0 or poll_seconds <= 0:
            raise ValueError("ShardStream(): epochs and shuffle_buffer must be >= 0 and poll_seconds > 0")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"ShardStream(): batch_size must be >= 1 or None; got {batch_size}")
        self.root, self.stream = root, stream
        self.rank, self.world_size = rank, world_size
        self.follow, self.epochs, self.shuffle_buffer, self.seed = follow, epochs, shuffle_buffer, seed
        self.poll_seconds, self.idle_timeout, self.consumer = poll_seconds, idle_timeout, consumer
        self.fields = set(fields) if fields else None
        self.stats = ReaderStats()
        self.metrics = metrics or MetricsSink()
        self.skip = tuple(skip)
        self.delete_consumed = delete_consumed
        self.batch_size = batch_size
        self.receipts = receipts
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

    def _read_shard(self, storage: Storage, ledger: Ledger, entry: LedgerEntry, epoch: int) -> list | None:
        """The units of a shard (its chunks, or its per-sample records), or None if it is corrupt."""
        rel = ledger.rel("shards", entry.shard)
        if self.delete_consumed and not storage.exists(rel):  # read and deleted before a restart
            self._deleted_samples += entry.count
            return None
        _check_format(entry)
        try:
            data = storage.read_bytes(rel)
            verify(data, entry)
            units = read_units(data, entry.shard, self.fields)
        except ShardFormatError:
            raise
        except (OSError, ValueError, tarfile.TarError) as err:
            self._skip(entry.shard)
            log.warning("skipping shard %s of stream %s: %s", entry.shard, self.stream, err)
            return None
        self.stats.shards += 1
        self.stats.bytes += len(data)
        if self.receipts:
            self._leave_receipt(ledger, entry.shard, epoch)
        labels = {"stream": self.stream, "consumer": self._consumer}
        self.metrics.inc("renderloop_shards_consumed_total", **labels)
        self.metrics.inc("renderloop_bytes_read_total", len(data), **labels)
        self.metrics.inc("renderloop_samples_consumed_total", sum(u.count for u in units), **labels)
        return units

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

    def _leave_receipt(self, ledger: Ledger, shard: str, epoch: int) -> None:
        """A read receipt for audits; storage refusing it only warns, as for the consumed records."""
        try:
            ledger.record_read(shard, epoch, self._consumer)
        except OSError as err:
            log.warning("stream %s: could not leave a read receipt for %s (%s)", self.stream, shard, err)

    def _delete(self, storage: Storage, ledger: Ledger, entry: LedgerEntry) -> None:
        try:
            storage.remove(ledger.rel("shards", entry.shard))
        except OSError as err:
            log.warning("stream %s: could not delete consumed shard %s (%s)", self.stream, entry.shard, err)

    def _epoch(self, storage: Storage, ledger: Ledger, slot: int, slots: int, consumer: str, epoch: int):
        """The units of this slot's shards in one pass, in ledger order."""
        done: set[str] = set()
        counted: set[str] = set()  # ledger files accounted for
        last_new = time.monotonic()
        while True:
            fresh = _unread(self._listed(ledger, slot, slots, counted), done, slot, slots)
            for entry in fresh:
                done.add(entry.shard)
                units = self._read_shard(storage, ledger, entry, epoch)
                if epoch == 0 and self.delete_consumed:
                    self._delete(storage, ledger, entry)
                if units is not None:
                    yield from units
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

    def chunks(self) -> Iterator[Any]:
        """This reader's shards, unit by unit (``chunks.Chunk`` s, whose arrays are read-only views
        of the shard's bytes, or the ``batches.SampleRecords`` of a per-sample shard), in ledger
        order: no shuffling, no skipping, no decoding."""
        slot, slots, consumer = self._slot()
        self._consumer = consumer
        storage = Storage(self.root)
        ledger = Ledger(storage, self.stream)
        for epoch in range(self.epochs) if self.epochs else itertools.count():
            yield from self._epoch(storage, ledger, slot, slots, consumer, epoch)

    def __iter__(self) -> Iterator[Any]:
        if self.batch_size is not None:
            yield from self._batches()
            return
        for unit, row in self._rows():
            yield unit.sample(row)

    def _batches(self) -> Iterator[Any]:
        shared = get_worker_info() is not None  # a worker's batches cross to the main process
        items: list[tuple[Any, int]] = []
        for item in self._rows():
            items.append(item)
            if len(items) == self.batch_size:
                yield assemble(items, shared)
                items = []

    def _rows(self) -> Iterator[tuple[Any, int]]:
        """``(unit, row)`` of every sample to deliver: shuffled, the resume position skipped."""
        info = get_worker_info()
        worker = info.id if info else 0
        skip = self.skip[worker] if worker < len(self.skip) else 0
        for item in self._shuffled():
            if self._deleted_samples:  # they stand for skipped samples that were never yielded
                skip, self._deleted_samples = max(skip - self._deleted_samples, 0), 0
            if skip:
                skip -= 1
                continue
            yield item

    def _shuffled(self) -> Iterator[tuple[Any, int]]:
        slot, slots, consumer = self._slot()
        self._consumer = consumer
        storage = Storage(self.root)
        ledger = Ledger(storage, self.stream)
        epoch = 0
        while self.epochs == 0 or epoch < self.epochs:
            rng = random.Random(hash((self.seed, epoch, slot)))
            buffer: list[tuple[Any, int]] = []
            read = 0
            for unit in self._epoch(storage, ledger, slot, slots, consumer, epoch):
                read += unit.count
                self.stats.samples += unit.count
                for row in range(unit.count):
                    if self.shuffle_buffer <= 1:
                        yield unit, row
                        continue
                    buffer.append((unit, row))
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
