"""ProducerWatch: a producer's error stops the training call in the main thread."""

from __future__ import annotations

import signal
import time

import pytest

from renderloop.cluster.watch import ProducerFailed, ProducerWatch


def _train_until_stopped(seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    raise AssertionError("the watch did not stop the training call")


def test_a_producer_error_stops_training_even_under_another_librarys_sigint_handler():
    """Ray Train installs its own SIGINT handler and leaves it after its run; the watch's
    interruption must still reach the training call as the producer's error."""
    foreign_calls = []

    def foreign(signum, frame):
        foreign_calls.append(signum)

    previous = signal.signal(signal.SIGINT, foreign)
    try:
        failing = ProducerWatch([lambda: OSError(28, "No space left on device")], interval=0.01)
        with pytest.raises(ProducerFailed, match="No space left"), failing:
            _train_until_stopped()
        assert foreign_calls == []
        assert signal.getsignal(signal.SIGINT) is foreign  # restored for whoever installed it
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_an_error_the_call_runs_to_its_end():
    before = signal.getsignal(signal.SIGINT)  # the default, or ignored under nohup
    with ProducerWatch([lambda: None], interval=0.01):
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before
