"""The trainer's view of its streams: resumable batch iterators, one per data role.

Each role (e.g. SimGAN's ``synthetic`` and ``real``) is a :class:`ShardStream` under a DataLoader.
Its workers assemble whole batches from the shards' chunks (slices and gathers of arrays still
in their stored encodings: uint8, float16), in shared memory; the loader copies each once into
pinned memory, and :func:`to_device` copies it to the device (``non_blocking``) and decodes it
there, into the floats a method reads (``datasets.encodings``). Per-sample (version 1) shards
take the same path.

The position that a checkpoint records is the number of batches consumed; a resumed loader makes
every worker skip exactly the samples it had batched, and hands out batches starting from the
worker whose turn it was, so the batches after a resume are the ones an uninterrupted run would
have seen (for a stream whose shards are all published).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from renderloop.datasets.host_batch import HostBatch, decode_batch
from renderloop.datasets.reader import ShardStream
from renderloop.errors import RenderloopError
from renderloop.metrics import MetricsSink

from .config import DataConfig


class StreamIdle(RenderloopError):
    """An open stream stopped growing for longer than ``engine.data.idle_timeout``."""


__all__ = ["StreamBatches", "collate", "to_device", "worker_skips"]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples as a trainer's batch; fields lose their extension (``rgb.png`` → ``rgb``)."""
    plain = [{k.partition(".")[0]: v for k, v in s.items() if not k.startswith("__")} for s in samples]
    batch = default_collate(plain)
    batch["key"] = [s["__key__"] for s in samples]
    return batch


def _with_worker(batch: HostBatch) -> tuple[int, HostBatch]:
    """The batch and the dataloader worker that made it (0 without workers)."""
    info = get_worker_info()
    return (info.id if info else 0), batch


def to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors to ``device``; floating tensors take the compute ``dtype``. A ``HostBatch`` is
    decoded on ``device`` (uint8 → float in [0, 1], normals → [-1, 1], float16 → float32, masks
    unpacked), so a method sees what ``collate`` of decoded samples would give it."""
    if isinstance(batch, HostBatch):
        return decode_batch(batch, device, dtype)
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    return batch


def worker_skips(consumed_batches: int, workers: int, batch_size: int) -> list[int]:
    """Samples each dataloader worker had batched after ``consumed_batches`` batches.

    The DataLoader takes batches from its workers in turn (batch i from worker i mod W).
    """
    workers = max(workers, 1)
    return [len(range(w, consumed_batches, workers)) * batch_size for w in range(workers)]


class StreamBatches:
    """Endless batches of one stream for this rank; ``consumed`` is its resumable position."""

    def __init__(
        self,
        root: str,
        stream: str,
        config: DataConfig,
        *,
        fields: list[str] | None,
        seed: int,
        consumer: str,
        rank: int,
        world_size: int,
        consumed: int = 0,
        metrics: MetricsSink | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.stream, self.consumed, self.config = stream, consumed, config
        reader = ShardStream(
            root,
            stream,
            rank=rank,
            world_size=world_size,
            follow=config.follow,
            epochs=0,
            shuffle_buffer=config.shuffle_buffer,
            seed=seed,
            idle_timeout=config.idle_timeout,
            consumer=consumer,
            fields=fields,
            metrics=metrics,
            skip=worker_skips(consumed, config.num_workers, config.batch_size),
            delete_consumed=config.delete_consumed,
            receipts=config.read_receipts,
            batch_size=config.batch_size,  # the workers assemble whole batches
        )
        self.loader = DataLoader(
            reader,
            batch_size=None,
            num_workers=config.num_workers,
            collate_fn=_with_worker,
            # A private generator: creating the iterator must not draw from the global RNG, or a
            # resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=config.num_workers > 0,
            pin_memory=pin_memory,
            prefetch_factor=4 if config.num_workers else None,
        )
        self._it: Iterator | None = None
        self._workers = max(config.num_workers, 1)
        self._held: list[deque] = [deque() for _ in range(self._workers)]

    def start(self) -> None:
        """Start the workers (they begin reading and decoding ahead)."""
        if self._it is None:
            self._it = iter(self.loader)

    def next(self) -> tuple[dict[str, Any], float]:
        """The next batch and the seconds spent waiting for it."""
        self.start()
        t0 = time.perf_counter()
        try:
            batch = self._in_turn()
        except StopIteration:
            raise StreamIdle(
                f"stream {self.stream!r} got no new shard within engine.data.idle_timeout "
                f"({self.config.idle_timeout} s) and is not closed: are its producers running? (a killed "
                "`renderloop generate` leaves its stream open; run it again to finish it)"
            ) from None
        self.consumed += 1
        return batch, time.perf_counter() - t0

    def _in_turn(self) -> dict[str, Any]:
        """The batch of the worker whose turn it is: batch i comes from worker i mod W.

        A new loader starts at worker 0 whatever ``consumed`` is; batches of workers whose turn
        has not come yet are held (at most W - 1), so the order continues the interrupted run's.
        """
        turn = self._held[self.consumed % self._workers]
        while not turn:
            worker, batch = next(self._it)
            self._held[worker].append(batch)
        return turn.popleft()

    def close(self) -> None:
        """Stop the dataloader workers (persistent workers outlive the iterator otherwise)."""
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it = None
        for held in self._held:
            held.clear()
