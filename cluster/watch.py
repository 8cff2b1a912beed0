"""Producer health during ``renderloop run``: when a producer stops for good (storage full or
read-only, restarts exhausted, a broken source), the trainer stops with that error instead of
waiting for shards that will never come."""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Callable, Sequence

from renderloop.errors import RenderloopError

__all__ = ["ProducerFailed", "ProducerWatch"]


class ProducerFailed(RenderloopError):
    """A producer of a live run stopped; the run was stopped with it."""


class ProducerWatch:
    """Poll ``checks`` (each returns a producer's error or None) in a thread; on the first error,
    interrupt the main thread, which ``stopped()`` turns into ``ProducerFailed``.

    Use as a context manager around the training call::

        with ProducerWatch([pool.failure for pool in pools]) as watch:
            train(...)
    """

    def __init__(self, checks: Sequence[Callable[[], BaseException | None]], interval: float = 0.5) -> None:
        self.checks, self.interval = list(checks), interval
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="producer-watch", daemon=True)
        self._handler = None  # the SIGINT handler replaced for the duration (main thread only)

    def _poll(self) -> None:
        while not self._done.wait(self.interval):
            for check in self.checks:
                if (error := check()) is not None:
                    self.error = error
                    _thread.interrupt_main()
                    return

    def __enter__(self) -> ProducerWatch:
        # The interruption is a simulated SIGINT: it must raise KeyboardInterrupt, not run a
        # handler another library left installed (Ray Train's, after a Ray run in this process).
        if threading.current_thread() is threading.main_thread():
            self._handler = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        self._done.set()
        self._thread.join()
        if self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
        if self.error is not None and (kind is None or issubclass(kind, KeyboardInterrupt)):
            raise ProducerFailed(f"a producer stopped, so the run stopped: {self.error}") from self.error
        return False
