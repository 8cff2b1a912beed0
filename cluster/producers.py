"""Producer actors on Ray: each builds its source once (model loaded, renderer compiled) and runs
a ``Producer`` into the stream. A killed actor is restarted by Ray (``max_restarts``) and its
``run_until`` call retried: the new ``Producer`` continues from the ledger, so no partial shard
becomes visible and no shard name or seed is reused."""

from __future__ import annotations

from typing import Any

import ray

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.sources import build_source
from renderloop.datasets.storage import Storage
from renderloop.metrics import RaySink

from .config import ClusterConfig

__all__ = ["ProducerActor", "ProducerPool", "producer_error"]


def producer_error(err: BaseException) -> BaseException:
    """The producer's own exception inside Ray's ``RayTaskError`` (one line instead of a traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


@ray.remote
class ProducerActor:
    """One producer; its constructor does the heavy, once-per-actor work."""

    def __init__(
        self, source_name: str, source_config: Any, root: str, stream: str, producer: str, options: dict[str, Any]
    ) -> None:
        import torch

        device = options.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if options.get("threads"):
            torch.set_num_threads(options["threads"])
        labels = {"role": "producer", **options.get("labels", {})}
        metrics = RaySink(**labels)
        if ray.get_runtime_context().was_current_actor_reconstructed:
            metrics.inc("renderloop_producer_restarts_total", source=source_name, producer=producer)
        source = build_source(source_name, source_config, device)
        if hasattr(source, "warmup"):
            source.warmup()
        self.producer = Producer(
            source,
            Ledger(Storage(root), stream),
            producer,
            samples_per_shard=options["samples_per_shard"],
            seed=options.get("seed", 0),
            max_backlog_shards=options.get("max_backlog_shards", 0),
            fields=options.get("fields"),
            metrics=metrics,
        )

    def pid(self) -> int:
        import os

        return os.getpid()

    def run_until(self, total: int) -> dict[str, float]:
        stats = self.producer.run_until(total)
        return dict(vars(stats))

    def published(self) -> int:
        return self.producer.published_samples()


class ProducerPool:
    """``producers`` actors (default ``cluster.producers``) with the resources and restarts of ``cluster``."""

    def __init__(
        self,
        cluster: ClusterConfig,
        source_name: str,
        source_config: Any,
        root: str,
        stream: str,
        options: dict[str, Any],
        producers: int | None = None,
    ) -> None:
        self.ids = [f"p{i}" for i in range(cluster.producers if producers is None else producers)]
        self.calls: list[ray.ObjectRef] = []
        self.actors = [
            ProducerActor.options(
                num_cpus=cluster.num_cpus_per_producer,
                num_gpus=cluster.num_gpus_per_producer,
                max_restarts=cluster.max_restarts,
                max_task_retries=-1,  # a method call interrupted by a restart is retried
            ).remote(source_name, source_config, root, stream, pid, options)
            for pid in self.ids
        ]

    def run_until(self, totals: list[int]) -> list[ray.ObjectRef]:
        """Start every actor; each runs until its producer id has published ``totals[i]`` samples."""
        self.calls = [actor.run_until.remote(total) for actor, total in zip(self.actors, totals, strict=True)]
        return self.calls

    def failure(self) -> BaseException | None:
        """The error of the first ``run_until`` call that failed for good (restarts exhausted, storage
        refused writes), unwrapped from Ray's task error; None while all run or finished."""
        done, _ = ray.wait(self.calls, num_returns=len(self.calls), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - returned to the caller
                return producer_error(err)
        return None

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
