"""Producer actors on Ray: each builds its source once (model loaded, renderer compiled, warmed
up) and runs a ``Producer`` into the stream. A killed actor is restarted by Ray
(``max_restarts``) and its ``run_until`` call retried: the new ``Producer`` continues from the
ledger, so no partial shard becomes visible and no shard name or seed is reused."""

from __future__ import annotations

import os
import time

import ray

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage

from .config import ClusterConfig
from .producers import ProducerSpec, build_producer
from .ray_session import RaySink, connect, require_resources

__all__ = ["ProducerActor", "RayProducers", "producer_error"]


def producer_error(err: BaseException) -> BaseException:
    """The producer's own exception inside Ray's ``RayTaskError`` (one line instead of a traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


@ray.remote
class ProducerActor:
    """One producer; its constructor does the heavy, once-per-actor work."""

    def __init__(self, spec: ProducerSpec, producer: str) -> None:
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        metrics = RaySink(role="producer", **spec.labels)
        if ray.get_runtime_context().was_current_actor_reconstructed:
            metrics.inc("renderloop_producer_restarts_total", source=spec.source_name, producer=producer)
        self.producer = build_producer(spec, producer, metrics, warmup=True)

    def pid(self) -> int:
        return os.getpid()

    def run_until(self, total: int) -> dict[str, float]:
        return dict(vars(self.producer.run_until(total)))

    def published(self) -> int:
        return self.producer.published_samples()


class RayProducers:
    """One actor per id, with the resources and restarts of ``cluster`` (a ``ProducerGroup``)."""

    def __init__(self, spec: ProducerSpec, cluster: ClusterConfig, ids: list[str]) -> None:
        connect(cluster.address)
        require_resources({
            "CPU": ("cluster.num_cpus_per_producer", cluster.num_cpus_per_producer),
            "GPU": ("cluster.num_gpus_per_producer", cluster.num_gpus_per_producer),
        })  # fmt: skip
        self.spec, self.ids = spec, list(ids)
        self.calls: list[ray.ObjectRef] = []
        self._ledger = Ledger(Storage(spec.root), spec.stream)
        self._published_before = self._published()
        self._stopped = False
        self._error: BaseException | None = None
        self.actors = [
            ProducerActor.options(
                num_cpus=cluster.num_cpus_per_producer,
                num_gpus=cluster.num_gpus_per_producer,
                max_restarts=cluster.max_restarts,
                max_task_retries=-1,  # a method call interrupted by a restart is retried
            ).remote(spec, pid)
            for pid in self.ids
        ]

    def _published(self) -> int:
        return sum(e.count for e in self._ledger.entries() if e.producer in self.ids)

    @property
    def samples(self) -> int:
        """Samples this group's ids published since it started (read from the ledger)."""
        return self._published() - self._published_before

    def start(self, totals: list[int] | None = None) -> None:
        totals = totals or [1 << 62] * len(self.actors)  # until stopped; backpressure bounds the backlog
        self.calls = [actor.run_until.remote(total) for actor, total in zip(self.actors, totals, strict=True)]

    def alive(self) -> bool:
        _, pending = ray.wait(self.calls, num_returns=len(self.calls), timeout=0)
        return bool(pending)

    def failure(self) -> BaseException | None:
        """The error of the first ``run_until`` call that failed for good (restarts exhausted, storage
        refused writes), unwrapped from Ray's task error; None while all run or finished."""
        if self._error is None and not self._stopped:
            done, _ = ray.wait(self.calls, num_returns=len(self.calls), timeout=0)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as err:  # noqa: BLE001 - returned to the caller
                    self._error = producer_error(err)
                    break
        return self._error

    def stop(self) -> None:
        self.failure()  # an error before the stop is still reported by join()
        self._stopped = True
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped and self.alive() and self.failure() is None:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not self._stopped:
            self.stop()
        if self._error is not None:
            raise self._error
