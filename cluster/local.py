"""Local producers (see ``producers.start_producers``): threads of this process, or processes of
their own (the same ``Producer`` the Ray actors run). Threads share the trainer's interpreter lock, so a producer busy
in Python slows every kernel launch of the training step; processes do not."""

from __future__ import annotations

import multiprocessing
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

from renderloop.config import ConfigError
from renderloop.datasets.producer import Producer
from renderloop.errors import RenderloopError
from renderloop.metrics import MetricsSink

from .producers import ProducerSpec, build_producer

__all__ = ["LocalProducers", "ProducerProcesses", "ProducerError", "local_producers"]


class LocalProducers:
    """Start ``len(producers)`` producer threads; each builds nothing twice and stops on ``stop()``."""

    def __init__(self, make_producer: Callable[[str], Producer], producer_ids: list[str]) -> None:
        self.ids = list(producer_ids)
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


class ProducerError(RenderloopError):
    """A producer process stopped with an error (its traceback went to the process's stderr)."""


class _QueueSink(MetricsSink):
    """A producer process's metrics, sent to the parent, which reports them in its own sink."""

    def __init__(self, events) -> None:
        self.events = events

    def inc(self, name, value=1.0, **labels):
        self.events.put(("inc", name, value, labels))

    def set(self, name, value, **labels):
        self.events.put(("set", name, value, labels))

    def observe(self, name, value, **labels):
        self.events.put(("observe", name, value, labels))


def _run_one(spec: ProducerSpec, producer: str, name: str, total: int | None, stop, events) -> None:
    """Build one producer's source and run it until ``total`` samples (None: until ``stop``),
    reporting to ``events`` under ``name``."""
    try:
        p = build_producer(spec, producer, _QueueSink(events))
        if total is None:
            p.run(None, stop)
        else:
            p.run_until(total, stop)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        traceback.print_exc(file=sys.stderr)
        if isinstance(err, ConfigError):  # rebuilt as one in the parent
            message = str(err).removeprefix(f"config error at {err.key}: ")
            events.put(("config_error", name, err.key, {"message": message}))
        else:
            events.put(("error", name, f"{type(err).__name__}: {err}", {}))
    finally:
        events.put(("exit", name, 0, {}))


def _produce(jobs: list[tuple[ProducerSpec, str, str, int | None]], stop, events) -> None:
    """A producer process: each job ``(spec, producer id, name, total)`` builds its source once and
    runs, in a thread of its own when the process holds several (one CUDA context for them all).

    Ctrl-C reaches the whole process group: the parent stops the producers through ``stop``. A
    parent that dies without doing so (SIGKILL, SIGTERM) stops them too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if jobs[0][0].threads:
        import torch

        torch.set_num_threads(jobs[0][0].threads)
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), stop.set()), daemon=True).start()
    threads = [threading.Thread(target=_run_one, args=(*job, stop, events), daemon=True) for job in jobs[1:]]
    for thread in threads:
        thread.start()
    _run_one(*jobs[0], stop, events)
    for thread in threads:
        thread.join()


def local_producers(
    spec: ProducerSpec, producer_ids: list[str], metrics: MetricsSink | None = None, processes: bool = False,
    pooled: bool = False,
) -> LocalProducers | ProducerProcesses:  # fmt: skip
    """The producers of one stream in local mode: threads of this process, or ``processes`` (one
    each, or one for them all if ``pooled``)."""
    if processes or pooled:
        return ProducerProcesses([(spec, pid) for pid in producer_ids], metrics, pooled=pooled)
    return LocalProducers(lambda pid: build_producer(spec, pid, metrics), producer_ids)


class ProducerProcesses:
    """Producer processes (spawned: each builds its sources, CUDA included): one per producer, or
    with ``pooled`` one for all of them, each a thread in it, so a GPU holds one producer context
    beside the trainer's rather than one per producer. ``jobs`` are ``(spec, producer id)``, of one
    stream or of several.

    The same interface as ``LocalProducers``. Their metrics are replayed into ``metrics`` by a
    thread of this process, which also counts the samples they generate."""

    def __init__(
        self, jobs: list[tuple[ProducerSpec, str]], metrics: MetricsSink | None = None, pooled: bool = False
    ) -> None:
        self.jobs, self.pooled, self.metrics = list(jobs), pooled, metrics or MetricsSink()
        self.names = [f"{pid} of stream {spec.stream}" for spec, pid in self.jobs]
        self._context = multiprocessing.get_context("spawn")
        self._stop, self._events = self._context.Event(), self._context.Queue()
        self._processes: list = []
        self._names_of: list[list[str]] = []  # the producers each process runs
        self._drain: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self.samples = 0

    def start(self, totals: list[int] | None = None) -> None:
        jobs = [(spec, pid, name, None if totals is None else totals[i])
                for i, ((spec, pid), name) in enumerate(zip(self.jobs, self.names, strict=True))]  # fmt: skip
        groups = [jobs] if self.pooled else [[job] for job in jobs]
        self._names_of = [[job[2] for job in group] for group in groups]
        self._processes = [
            self._context.Process(target=_produce, name=f"producer-{'+'.join(names)}", daemon=True,
                                  args=(group, self._stop, self._events))
            for group, names in zip(groups, self._names_of, strict=True)
        ]  # fmt: skip
        for process in self._processes:
            process.start()
        self._drain = threading.Thread(target=self._replay, name="producer-metrics", daemon=True)
        self._drain.start()

    def _replay(self) -> None:
        exited: set[str] = set()
        while len(exited) < len(self.names):
            try:
                self._handle(self._events.get(timeout=0.5), exited)
            except queue.Empty:
                for names, process in zip(self._names_of, self._processes, strict=True):
                    if not set(names) <= exited and not process.is_alive():
                        if process.exitcode:  # killed, or died before it could report
                            died = f"producer {', '.join(sorted(set(names) - exited))}'s process died"
                            self.errors.append(ProducerError(f"{died} (exit code {process.exitcode})"))
                        exited.update(names)
        while True:  # what a process sent just before it exited
            try:
                self._handle(self._events.get_nowait(), exited)
            except queue.Empty:
                return

    def _handle(self, message: tuple, exited: set[str]) -> None:
        kind, name, value, labels = message
        if kind == "exit":
            exited.add(name)
        elif kind == "config_error":
            self.errors.append(ConfigError(value, labels["message"]))
        elif kind == "error":
            self.errors.append(ProducerError(f"producer {name} failed: {value}"))
        else:
            if name == "renderloop_samples_generated_total":
                self.samples += int(value)
            try:
                getattr(self.metrics, kind)(name, value, **labels)
            except Exception as err:  # noqa: BLE001 - a metric lost must not stop the counting
                print(f"producer metrics: {name} not reported: {err}", file=sys.stderr)

    def alive(self) -> bool:
        """Whether a producer is still running (the thread reading their messages stops after the last)."""
        return self._drain is not None and self._drain.is_alive()

    def failure(self) -> BaseException | None:
        return self.errors[0] if self.errors else None

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the processes (at most ``timeout`` seconds in all; then they are terminated)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for process in self._processes:
            process.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
        if self._drain is not None:
            self._drain.join(5)
        if self.errors:
            raise self.errors[0]
