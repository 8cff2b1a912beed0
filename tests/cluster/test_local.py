"""Local debug mode: producer threads report their rate and the backlog for the progress bar."""

from __future__ import annotations

from renderloop.cluster.local import GenerationStatus, LocalProducers
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage
from tests.datasets.helpers import tiny_producer


def test_generation_status_reports_rate_and_backlog(tmp_path):
    pool = LocalProducers(lambda pid: tiny_producer(str(tmp_path), producer=pid), ["p0", "p1"])
    status = GenerationStatus([pool], [Ledger(Storage(str(tmp_path)), "s")])
    pool.start([16, 16])
    pool.join(60)
    assert pool.failure() is None
    first = status()
    assert float(first["generated/s"]) > 0 and first["backlog"] == "4"  # 4 shards of 8, none read
    Ledger(Storage(str(tmp_path)), "s").record_consumed("reader", 3)
    assert status() == {"generated/s": "0", "backlog": "1"}
