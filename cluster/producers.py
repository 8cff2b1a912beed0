"""Producers of one stream, wherever they run: threads or processes beside this process, or Ray
actors. :func:`start_producers` is the one way ``renderloop generate`` and ``renderloop run``
start them; every kind answers the same calls (:class:`ProducerGroup`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.sources import build_source
from renderloop.datasets.storage import Storage
from renderloop.devices import resolve_device
from renderloop.metrics import MetricsSink

from .config import ClusterConfig

__all__ = [
    "ProducerSpec", "ProducerGroup", "GenerationStatus", "build_producer", "producer_ids", "start_producers",
    "start_pooled_producers",
]  # fmt: skip


@dataclass(frozen=True)
class ProducerSpec:
    """What every producer of one stream builds and where it publishes (picklable: processes and
    Ray actors receive it)."""

    source_name: str
    source_config: Any
    root: str
    stream: str
    device: str = "auto"
    """Where the source runs; ``auto``: the producer's node's GPU if it has one, else its CPU."""
    samples_per_shard: int = 256
    seed: int = 0
    """The stream's seed; each producer derives its own from it and its id."""
    max_backlog_shards: int = 0
    threads: int = 0
    """Torch CPU threads of a producer process or actor (0: torch's default)."""
    fields: tuple[str, ...] | None = None
    """Schema fields to write (None: all the source makes); see ``Producer``."""
    record: str = "chunk"
    """``chunk`` or ``sample`` records; see ``Producer``."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra metric labels of Ray actors (e.g. the run's method)."""


class ProducerGroup(Protocol):
    """The producers of one stream, started together."""

    ids: list[str]

    @property
    def samples(self) -> int:
        """Samples generated so far by this group."""

    def start(self, totals: list[int] | None = None) -> None:
        """Run producer ``i`` until its id has published ``totals[i]`` samples (None: until ``stop``)."""

    def alive(self) -> bool:
        """Whether a producer is still running."""

    def failure(self) -> BaseException | None:
        """The first error a producer stopped with before ``stop()``, if any."""

    def stop(self) -> None:
        """Ask every producer to stop after its current shard (Ray actors are ended)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the producers to end; raise ``failure()`` if there was one."""


def producer_ids(count: int) -> list[str]:
    """The ids of a stream's ``count`` producers; each names its shards and seeds its samples."""
    return [f"p{i}" for i in range(count)]


def build_producer(
    spec: ProducerSpec, producer: str, metrics: MetricsSink | None = None, warmup: bool = False
) -> Producer:
    """Producer ``producer`` of ``spec``, its source built (model loaded, renderer compiled) on
    ``spec.device`` (``auto`` resolved here, on the producer's own node) and, with ``warmup``,
    run once on a throwaway batch."""
    source = build_source(spec.source_name, spec.source_config, str(resolve_device(spec.device)))
    if warmup and hasattr(source, "warmup"):
        source.warmup()
    return Producer(
        source, Ledger(Storage(spec.root), spec.stream), producer, samples_per_shard=spec.samples_per_shard,
        seed=spec.seed, max_backlog_shards=spec.max_backlog_shards, fields=spec.fields, metrics=metrics,
        record=spec.record,
    )  # fmt: skip


def start_producers(
    spec: ProducerSpec,
    cluster: ClusterConfig,
    run_device: str,
    count: int,
    metrics: MetricsSink | None = None,
    totals: list[int] | None = None,
) -> ProducerGroup:
    """Start ``count`` producers of ``spec`` as ``cluster`` says: Ray actors (``mode=ray``), or
    threads or processes of this process (``local_producers``), their sources on
    ``cluster.source_device(run_device)``. ``totals`` as in :meth:`ProducerGroup.start`."""
    device = cluster.source_device(run_device)
    ids = producer_ids(count)
    if cluster.mode == "ray":
        from .ray_producers import RayProducers

        group: ProducerGroup = RayProducers(replace(spec, device=device), cluster, ids)
    else:
        from .local import local_producers

        processes = cluster.producer_processes(resolve_device(run_device).type)  # as the trainer's device needs
        pooled = cluster.local_producers == "pooled"
        group = local_producers(replace(spec, device=str(resolve_device(device))), ids, metrics, processes, pooled)
    group.start(totals)
    return group


def start_pooled_producers(
    specs: list[tuple[ProducerSpec, int]], cluster: ClusterConfig, run_device: str, metrics: MetricsSink | None = None
) -> ProducerGroup:
    """Start the producers of several streams (``(spec, count)`` each) in one local process, their
    sources on ``cluster.source_device(run_device)``; they run until stopped."""
    from .local import ProducerProcesses

    device = str(resolve_device(cluster.source_device(run_device)))
    jobs = [(replace(spec, device=device), pid) for spec, count in specs for pid in producer_ids(count)]
    group = ProducerProcesses(jobs, metrics, pooled=True)
    group.start()
    return group


class GenerationStatus:
    """A run's data figures for each log window: samples generated per second since the last call,
    and the backlog (published, unconsumed shards) of each stream and the largest of them."""

    def __init__(self, groups: list[ProducerGroup], ledgers: list[Ledger]) -> None:
        self.groups, self.ledgers = groups, ledgers
        self._last = (time.monotonic(), 0)

    def __call__(self) -> dict[str, float]:
        now, samples = time.monotonic(), sum(group.samples for group in self.groups)
        rate = (samples - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, samples)
        backlogs = {f"backlog/{ledger.stream}": ledger.backlog() for ledger in self.ledgers}
        return {"generated_per_s": rate, "backlog": max(backlogs.values(), default=0), **backlogs}
