"""A producer: runs a source into a stream (batches → samples → shards → ledger), with backpressure.

The same class runs in a thread (local mode) and inside a Ray actor (``cluster/producers.py``).
After a restart it continues from the ledger: the next shard index is one past everything this
producer id has published or left behind, and batch indices (which, with the producer's seed,
fix every sample) come from a forward-only counter in the ledger, so no shard name or seed is
ever reused, whatever the batch or shard size of earlier runs. Within one producer object, a shard
that fails is dropped and its batches are generated again by the next ``run``: a retry leaves
no gap in the seeds and repeats none.

Each batch becomes one chunk (``record="chunk"``, shard format version 2): image fields are
quantized on the source's device and the batch reaches the host in one copy (``chunking``).
``record="sample"`` writes per-sample records with PNG images (version 1), an export format for
people and third-party tools.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from renderloop.metrics import MetricsSink
from renderloop.seeding import derive_seed

from .chunking import HostCopy, chunk_from_columns, columns_of, quantize_batch, rows_of
from .chunks import no_cyclic_gc
from .ledger import Ledger
from .schema import FIELDS
from .shards import ShardWriter
from .storage import StorageError

__all__ = ["RECORDS", "ProducerStats", "Producer", "producer_seed"]

RECORDS = ("chunk", "sample")


@dataclass
class ProducerStats:
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    paused_seconds: float = 0.0


def producer_seed(seed: int, producer: str) -> int:
    """A producer's own seed: distinct producers of one run never share sample seeds."""
    return derive_seed(seed, producer)


class Producer:
    """Generate batches from ``source`` and publish them as shards of ``samples_per_shard``.

    Args:
        source: a built source (see ``datasets.sources``).
        ledger: the stream to publish into.
        producer: id, unique within the stream (letters, digits and underscores). While ``run``
            writes, it holds the id's lease on the stream: a second writer of the id, in this
            process or another, gets ``ProducerBusyError`` before writing anything. On storage
            other than a local path (object stores) there is no lease, and distinct ids are the
            only guard.
        samples_per_shard: a multiple of the source's batch size.
        seed: run seed, mixed with the producer id.
        max_backlog_shards: pause while more published shards than this are unconsumed (0: no bound).
        fields: write only these schema fields (and ``meta.json``), e.g. those the stream's trainer
            reads; None writes every field the source makes.
        metrics: where to report.
        record: ``chunk`` (one record per batch, for training) or ``sample`` (one per sample,
            PNG images: an export).
        checksum: the hash the ledger entries record (``xxh3_128``, or ``sha256``).
    """

    def __init__(
        self,
        source,
        ledger: Ledger,
        producer: str,
        *,
        samples_per_shard: int,
        seed: int = 0,
        max_backlog_shards: int = 0,
        poll_seconds: float = 0.2,
        fields: Sequence[str] | None = None,
        metrics: MetricsSink | None = None,
        record: str = "chunk",
        checksum: str = "xxh3_128",
    ) -> None:
        if record not in RECORDS:
            raise ValueError(f"Producer(): record must be one of {RECORDS}; got {record!r}")
        batch = source.config.batch_size
        if samples_per_shard % batch:
            raise ValueError(
                f"Producer(): samples_per_shard ({samples_per_shard}) must be a multiple of the batch size ({batch})"
            )
        unknown = set(fields or ()) - set(FIELDS)
        if unknown:
            raise ValueError(f"Producer(): unknown fields {sorted(unknown)}; known fields: {sorted(FIELDS)}")
        self.source, self.ledger, self.producer = source, ledger, producer
        self.writer = ShardWriter(ledger, producer, samples_per_shard, checksum=checksum)
        self.record = record
        self._copy = HostCopy()
        self.batches_per_shard = samples_per_shard // batch
        self.seed = producer_seed(seed, producer)
        self.max_backlog, self.poll_seconds = max_backlog_shards, poll_seconds
        self._kept = None if fields is None else {"__key__", "meta.json", *fields}
        self.metrics = metrics or MetricsSink()
        self.stats = ProducerStats()
        self.labels = {"source": source.name, "producer": producer}
        self._group_base = (zlib.crc32(producer.encode()) & 0xFFFFF) << 40
        # Batch indices reserved in the ledger and not yet used: [_next_batch, _reserved_end).
        self._next_batch = self._reserved_end = 0
        self._shard_first: int | None = None  # first batch of the shard begun and not yet published

    def _wait_for_room(self, stop: threading.Event | None) -> None:
        if not self.max_backlog:
            return
        start = time.monotonic()
        while (backlog := self.ledger.backlog()) >= self.max_backlog and not (stop and stop.is_set()):
            self.metrics.set("renderloop_backlog_shards", backlog, stream=self.ledger.stream)
            time.sleep(self.poll_seconds)
        paused = time.monotonic() - start
        self.stats.paused_seconds += paused
        self.metrics.inc("renderloop_producer_paused_seconds_total", paused, **self.labels)

    def published_samples(self) -> int:
        """Samples this producer id has published in the stream, restarts included."""
        return sum(e.count for e in self.ledger.entries() if e.producer == self.producer)

    def run_until(self, total: int, stop: threading.Event | None = None) -> ProducerStats:
        """Produce until this producer id has published ``total`` samples (idempotent across restarts)."""
        return self.run(max(total - self.published_samples(), 0), stop)

    def run(self, num_samples: int | None = None, stop: threading.Event | None = None) -> ProducerStats:
        """Produce until ``num_samples`` more samples are published (None: until ``stop`` is set).

        Raises ``ProducerBusyError`` before writing anything if another writer holds this id, and
        ``StorageError`` when storage refuses a write (full, read-only). On any error the shard in
        progress is dropped, so nothing partial is ever published, and the next ``run`` starts
        again at its first batch.
        """
        self.writer.acquire()
        try:
            return self._run(num_samples, stop)
        except OSError as err:
            self._drop_shard()
            self.metrics.inc("renderloop_producer_errors_total", **self.labels)
            raise StorageError(
                f"producer {self.producer} of stream {self.ledger.storage.url(self.ledger.stream)} stopped: "
                f"storage refused a write ({err}); no partial shard was published"
            ) from err
        except BaseException:
            self._drop_shard()
            raise
        finally:
            self.writer.release()

    def _drop_shard(self) -> None:
        """Drop the shard begun; if it is surely unpublished, rewind to its first batch."""
        unpublished = self.writer.pending
        if self.writer.abort() and self._shard_first is not None:
            self._next_batch = self._shard_first
            self.stats.samples -= unpublished
        self._shard_first = None

    def _reserve_shard(self) -> None:
        """Have a whole shard's batch indices reserved from ``_next_batch`` on.

        Indices reserved earlier and never published (a dropped shard, the rest of a run that
        stopped mid-shard) come first, so the seeds go on without a gap."""
        if self._reserved_end - self._next_batch >= self.batches_per_shard:
            return
        first = self.ledger.reserve_batches(self.producer, self.batches_per_shard)
        if first != self._reserved_end:  # the first reservation (the lease keeps others off the counter)
            self._next_batch = first
        self._reserved_end = first + self.batches_per_shard

    def _run(self, num_samples: int | None, stop: threading.Event | None) -> ProducerStats:
        batch_size = self.source.config.batch_size
        target = None if num_samples is None else self.stats.samples + num_samples
        start = time.monotonic()
        while (target is None or self.stats.samples < target) and not (stop and stop.is_set()):
            if self._shard_first is None:  # a new shard starts: respect the backlog bound, reserve batches
                self._wait_for_room(stop)
                if stop and stop.is_set():
                    break
                self._reserve_shard()
                self._shard_first = self._next_batch
            batch_index = self._next_batch
            self._next_batch += 1
            n = batch_size if target is None else min(batch_size, target - self.stats.samples)
            with no_cyclic_gc():  # a batch makes many small containers: see chunks.no_cyclic_gc
                self._produce(batch_index, n)
            self.metrics.inc("renderloop_samples_generated_total", n, **self.labels)
        entry = self.writer.close()
        if entry is not None:
            self._published(entry)
        self._shard_first = None
        self.stats.seconds += time.monotonic() - start
        return self.stats

    def _produce(self, batch_index: int, n: int) -> None:
        """Generate batch ``batch_index`` and write its first ``n`` samples."""
        t0 = time.perf_counter()
        batch = self.source.generate(self.seed, batch_index)
        # The batch index and the producer seed fix every sample; the ledger records batch ranges.
        B = self.source.config.batch_size
        seeds = [batch_index] * B
        keys = [f"{self.producer}_{batch_index:09d}_{i:04d}" for i in range(B)]
        stored, widths = {}, {}
        if self.record == "chunk":
            kept = None if self._kept is None else set(self._kept)
            stored, widths, batch = quantize_batch(batch, kept, self._copy)
        columns = self._columns(batch, seeds, keys, batch_index)
        if self.record == "chunk":
            chunk = chunk_from_columns(f"{self.producer}_{batch_index:09d}", columns, seeds, stored, widths)
        self.metrics.observe("renderloop_producer_batch_seconds", time.perf_counter() - t0, **self.labels)
        if self.record == "chunk":
            self._written(self.writer.write_chunk(chunk.head(n) if n < chunk.count else chunk), n)
            return
        columns = {k: rows_of(v, B) if isinstance(v, Mapping) else v for k, v in columns.items()}
        for i in range(n):
            sample = {name: column[i] for name, column in columns.items()}
            self._written(self.writer.write(sample, seeds[i]), 1)

    def _columns(self, batch, seeds: list[int], keys: list[str], batch_index: int) -> dict[str, Any]:
        """The batch's schema fields as columns (field → ``[B, ...]`` values), each sample's
        ``meta.json`` stamped with this producer, group ids made unique across producers, and
        only the kept fields.

        A source with ``to_columns(batch, seeds, keys)`` hands them over column by column (it
        returns ``__key__`` and each field as a ``[B, ...]`` tensor, or a list of B values, or for
        JSON fields a dict of ``[B, ...]`` columns); others go through ``to_samples``.
        """
        B = len(keys)
        if hasattr(self.source, "to_columns"):
            columns = dict(self.source.to_columns(batch, seeds, keys))
        else:
            columns = columns_of(self.source.to_samples(batch, seeds, keys))
        stamp = {"producer": self.producer, "producer_seed": self.seed, "batch": batch_index}
        meta = rows_of(columns.get("meta.json", [{}] * B), B)
        columns["meta.json"] = [{**m, **stamp, "index": i} for i, m in enumerate(meta)]
        if "group.txt" in columns:  # group ids unique across the producers of a stream
            groups = columns["group.txt"]
            groups = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
            columns["group.txt"] = (groups.astype(np.int64) | self._group_base).tolist()
        if self._kept is not None:
            if missing := self._kept - set(columns):
                raise ValueError(
                    f"producer {self.producer}: source {self.source.name} makes no {sorted(missing)} "
                    f"for stream {self.ledger.stream}; it makes {sorted(columns)}"
                )
            columns = {k: v for k, v in columns.items() if k in self._kept}
        return columns

    def _written(self, entry, samples: int) -> None:
        """Count samples just written; ``entry``: the shard they completed, if any."""
        self.stats.samples += samples
        if entry is not None:
            self._published(entry)

    def _published(self, entry) -> None:
        self._shard_first = None
        if self.max_backlog:
            self.metrics.set("renderloop_backlog_shards", self.ledger.backlog(), stream=self.ledger.stream)
        self.stats.shards += 1
        self.stats.bytes += entry.bytes
        self.metrics.inc("renderloop_shards_published_total", **self.labels)
        self.metrics.inc("renderloop_bytes_written_total", entry.bytes, **self.labels)
