"""Small streams for data-spine tests."""

from __future__ import annotations

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.datasets.storage import Storage

TINY = SimulatorConfig(resolution=16, batch_size=4, num_keypoints=3)


def tiny_producer(root: str, stream: str = "s", producer: str = "p0", per_shard: int = 8, **kw) -> Producer:
    return Producer(Simulator(TINY), Ledger(Storage(root), stream), producer, samples_per_shard=per_shard, **kw)
