"""Ray producer actors (CPU): a 2-actor pool feeds a reader in the driver; a killed actor is
restarted and finishes without partial shards or reused names and seeds; Ray Data reads a chunk
shard."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import ray
import torch

from renderloop.cluster.config import ClusterConfig
from renderloop.cluster.producers import ProducerSpec
from renderloop.cluster.ray_producers import RayProducers
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.storage import Storage
from tests.datasets.helpers import TINY, tiny_producer


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _pool(root: str, max_restarts: int = 2) -> RayProducers:
    cluster = ClusterConfig(mode="ray", producers=2, num_cpus_per_producer=0.5, max_restarts=max_restarts)
    spec = ProducerSpec("simulator", TINY, root, "s", "cpu", samples_per_shard=8, seed=1)
    return RayProducers(spec, cluster, ["p0", "p1"])


def test_two_actor_pool_feeds_a_reader(local_ray, tmp_path):
    root = str(tmp_path)
    pool = _pool(root)
    pool.start([32, 32])
    refs = pool.calls
    reader = ShardStream(root, "s", follow=True, poll_seconds=0.05, idle_timeout=60)
    got = []
    for sample in reader:
        got.append(sample["__key__"])
        if len(got) == 64:
            break
    stats = ray.get(refs)
    pool.join(60)
    assert [s["samples"] for s in stats] == [32, 32]
    assert len(set(got)) == 64 and {k.split("_")[0] for k in got} == {"p0", "p1"}


def test_killed_actor_restarts_and_continues(local_ray, tmp_path):
    root = str(tmp_path)
    pool = _pool(root)
    pool.start([48, 8])
    refs = pool.calls
    ledger = Ledger(Storage(root), "s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [e for e in ledger.entries() if e.producer == "p0"]:
        time.sleep(0.05)
    os.kill(ray.get(pool.actors[0].pid.remote()), signal.SIGKILL)
    ray.get(refs, timeout=120)  # the interrupted call is retried on the restarted actor
    entries = [e for e in Ledger(Storage(root), "s").entries() if e.producer == "p0"]
    assert sum(e.count for e in entries) >= 48
    names = [e.shard for e in entries]
    assert len(names) == len(set(names))
    seeds = [s for e in entries for s in range(e.seeds[0], e.seeds[1] + 1)]
    assert len(seeds) == len(set(seeds))
    samples = list(ShardStream(root, "s", follow=False))
    assert len(samples) == sum(e.count for e in Ledger(Storage(root), "s").entries())
    assert pool.samples == len(samples) and not pool.alive()
    pool.join(60)


def test_generate_command_on_ray(local_ray, tmp_path, capsys):
    from renderloop.cli import main

    args = ["generate", "source=debug", "cluster=ray", "cluster.producers=2", "cluster.num_cpus_per_producer=0.5"]
    assert main([*args, f"storage.root={tmp_path}", "num_samples=32", "samples_per_shard=8"]) == 0
    assert "32 samples" in capsys.readouterr().out
    ledger = Ledger(Storage(str(tmp_path)), "simulator")
    assert ledger.closed and sum(e.count for e in ledger.entries()) == 32
    assert {e.producer for e in ledger.entries()} == {"p0", "p1"}


def test_generate_on_ray_fails_loudly_when_producers_fail(local_ray, tmp_path):
    from renderloop.cli import main

    args = ["generate", "source=image_folder", f"source.path={tmp_path / 'missing'}", "source.batch_size=4"]
    args += ["cluster=ray", "cluster.producers=1", "cluster.num_cpus_per_producer=0.5", "cluster.max_restarts=0"]
    with pytest.raises(Exception, match="no such folder"):
        main([*args, f"storage.root={tmp_path}", "num_samples=8", "samples_per_shard=4"])
    assert not Ledger(Storage(str(tmp_path)), "image_folder").closed


def test_generate_refuses_resources_no_node_has(local_ray, tmp_path, capsys):
    """Ray would wait for ever to place a producer that needs a GPU on a cluster without one."""
    from renderloop.cli import main

    args = ["generate", "source=debug", "cluster=ray", "cluster.num_gpus_per_producer=1", "device=cpu"]
    assert main([*args, f"storage.root={tmp_path}", "num_samples=8", "samples_per_shard=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cluster.num_gpus_per_producer" in err[0] and "cluster has 0 " in err[0]
    assert not Ledger(Storage(str(tmp_path)), "simulator").entries()


def test_ray_data_reads_a_chunk_shard_as_one_row_per_chunk(local_ray, tmp_path):
    """The interop the design promises: Ray Data's ``read_webdataset`` on a chunk shard gives one
    row per chunk with ``[B, ...]`` columns, the samples the project's reader gives."""
    tiny_producer(str(tmp_path)).run(8)
    entry = Ledger(Storage(str(tmp_path)), "s").entries()[0]
    rows = ray.data.read_webdataset(str(tmp_path / "s" / "shards" / entry.shard)).take_all()
    samples = list(ShardStream(str(tmp_path), "s", follow=False))
    rgb = np.concatenate([row["rgb.npy"] for row in rows])
    assert len(rows) < len(samples) == len(rgb) == 8 and rgb.dtype == np.uint8
    for image, sample in zip(rgb, samples, strict=True):
        assert torch.equal(torch.from_numpy(image).permute(2, 0, 1).float() / 255, sample["rgb.png"])
