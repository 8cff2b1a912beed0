"""The shard ledger: one small JSON per published shard, the only thing readers list.

Layout of a stream ``<root>/<stream>/``::

    shards/<producer>-<index>.tar      complete shards (written as ``*.tmp``, then renamed)
    ledger/<producer>-<index>.json     one entry per published shard, written after its rename
    consumers/<consumer>.json          how many shards each reader has consumed (backpressure)
    producers/<producer>.json          the producer's next unreserved batch index
    CLOSED                             written when generation is finished (followers stop)
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass

from .storage import Storage

__all__ = ["LedgerEntry", "Ledger"]


@dataclass(frozen=True)
class LedgerEntry:
    """A published shard."""

    shard: str
    """Shard file name under ``shards/``."""
    count: int
    """Samples in the shard."""
    bytes: int
    """Shard size."""
    sha256: str
    """Hex digest of the shard file."""
    producer: str
    """Producer id."""
    index: int
    """The producer's shard counter (never reused, also across restarts)."""
    seeds: tuple[int, int]
    """First and last batch index in the shard (with the producer's seed they fix every sample)."""
    published_at: float
    """Unix time of publication."""


class Ledger:
    """Publish, list and account for the shards of one stream."""

    def __init__(self, storage: Storage, stream: str) -> None:
        if not stream or "/" in stream or stream.startswith("."):
            raise ValueError(f"Ledger(): stream must be a plain folder name; got {stream!r}")
        self.storage, self.stream = storage, stream
        self._cache: dict[str, LedgerEntry] = {}

    def rel(self, *parts: str) -> str:
        return "/".join((self.stream, *parts))

    def publish(self, entry: LedgerEntry) -> None:
        self.storage.write_atomic(
            self.rel("ledger", entry.shard.removesuffix(".tar") + ".json"), json.dumps(asdict(entry)).encode()
        )

    def entries(self) -> list[LedgerEntry]:
        """All published shards, oldest first (new ones are read once and cached)."""
        for name in self.storage.list(self.rel("ledger")):
            if name.endswith(".json") and name not in self._cache:
                raw = json.loads(self.storage.read_bytes(self.rel("ledger", name)))
                raw["seeds"] = tuple(raw["seeds"])
                self._cache[name] = LedgerEntry(**raw)
        return sorted(self._cache.values(), key=lambda e: (e.published_at, e.shard))

    def next_index(self, producer: str) -> int:
        """The next shard index for ``producer``: one past everything it has published or left behind."""
        used = [e.index for e in self.entries() if e.producer == producer]
        prefix = f"{producer}-"
        for name in self.storage.list(self.rel("shards")):
            if name.startswith(prefix):
                with contextlib.suppress(ValueError):
                    used.append(int(name[len(prefix) :].split(".")[0]))
        return max(used, default=-1) + 1

    def record_consumed(self, consumer: str, shards: int) -> None:
        """Record that ``consumer`` has consumed ``shards`` shards in total."""
        self.storage.write_atomic(
            self.rel("consumers", f"{consumer}.json"), json.dumps({"shards": shards, "at": time.time()}).encode()
        )

    def consumed(self) -> int:
        """Shards consumed, summed over consumers (each shard goes to one consumer per epoch)."""
        total = 0
        for name in self.storage.list(self.rel("consumers")):
            if name.endswith(".json"):
                total += json.loads(self.storage.read_bytes(self.rel("consumers", name)))["shards"]
        return total

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
