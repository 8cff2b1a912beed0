"""Local mode: producers as threads of this process, the same ``Producer`` the Ray actors run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer

__all__ = ["LocalProducers", "GenerationStatus"]


class LocalProducers:
    """Start ``len(producers)`` producer threads; each builds nothing twice and stops on ``stop()``."""

    def __init__(self, make_producer: Callable[[str], Producer], producer_ids: list[str]) -> None:
        self.producers = [make_producer(pid) for pid in producer_ids]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, totals: list[int] | None = None) -> None:
        """Run each producer until it has published ``totals[i]`` samples (None: until ``stop``)."""
        for i, producer in enumerate(self.producers):

            def work(p=producer, total=None if totals is None else totals[i]):
                try:
                    p.run(None, self._stop) if total is None else p.run_until(total, self._stop)
                except BaseException as err:  # noqa: BLE001 - reported by join()
                    self.errors.append(err)

            thread = threading.Thread(target=work, name=f"producer-{producer.producer}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def samples(self) -> int:
        return sum(p.stats.samples for p in self.producers)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def failure(self) -> BaseException | None:
        """The first error a producer thread stopped with, if any."""
        return self.errors[0] if self.errors else None

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
        if self.errors:
            raise self.errors[0]


class GenerationStatus:
    """Progress-bar fields of a local run: samples generated per second since the last call, and
    the largest backlog (published, unconsumed shards) over the streams."""

    def __init__(self, pools: list[LocalProducers], ledgers: list[Ledger]) -> None:
        self.pools, self.ledgers = pools, ledgers
        self._last = (time.monotonic(), 0)

    def __call__(self) -> dict[str, str]:
        now, samples = time.monotonic(), sum(pool.samples for pool in self.pools)
        rate = (samples - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, samples)
        return {"generated/s": f"{rate:.0f}", "backlog": str(max(ledger.backlog() for ledger in self.ledgers))}
