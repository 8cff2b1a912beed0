"""Faults on CPU: storage that fills up stops producers with a clear error and no partial shard
(in a producer, a live local run and Ray producer actors), and a killed producer actor is
restarted by Ray with the restart counted in Ray's metrics."""

from __future__ import annotations

import errno
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from renderloop.cli import main
from renderloop.cluster.config import ClusterConfig
from renderloop.cluster.producers import ProducerSpec
from renderloop.cluster.ray_producers import RayProducers
from renderloop.datasets.ledger import Ledger, verify
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.storage import Storage, StorageError
from tests.cluster.quota_fs import QUOTA_ENV, QuotaFileSystem, register
from tests.datasets.helpers import TINY, tiny_producer

DEBUG = ["method=simgan_debug", "engine=debug", "samples_per_shard=8", "device=cpu"]


@pytest.fixture
def quota(monkeypatch):
    """``quota://`` storage whose writes fail with ENOSPC after ``set(n)`` bytes (this process)."""
    register()
    QuotaFileSystem.written = 0

    def set_quota(n: int) -> None:
        monkeypatch.setenv(QUOTA_ENV, str(n))

    return set_quota


def _assert_published_shards_intact(root: str, stream: str, killed_peers: bool = False) -> int:
    """Every ledger entry names a complete shard with its checksum; no temporary shard is left
    (except, with ``killed_peers``, those of producers killed mid-shard: never listed, removed
    when their id starts again)."""
    storage = Storage(root)
    ledger = Ledger(storage, stream)
    entries = ledger.entries()
    for entry in entries:
        data = storage.read_bytes(ledger.rel("shards", entry.shard))
        assert len(data) == entry.bytes
        verify(data, entry)  # raises on a mismatch
    if not killed_peers:
        assert not [n for n in storage.list(ledger.rel("shards")) if n.endswith(".tmp")]
    reader = ShardStream(root, stream, follow=False)
    assert len(list(reader)) == sum(e.count for e in entries) and reader.stats.skipped_shards == 0
    return len(entries)


def test_full_storage_stops_a_producer_and_publishes_nothing_partial(tmp_path, quota):
    root = f"quota://{tmp_path}"
    quota(450_000)  # shards of 8 tiny samples are ~100 kB: a few fit, then the disk is full
    producer = tiny_producer(root, per_shard=8)
    with pytest.raises(StorageError, match="No space left on device.*no partial shard"):
        producer.run(400)
    published = _assert_published_shards_intact(root, "s")
    assert 1 <= published < 50

    quota(1 << 40)  # space freed: a new producer continues after the published shards
    more = tiny_producer(root, per_shard=8)
    more.run(16)
    assert _assert_published_shards_intact(root, "s") == published + 2


def test_a_shard_that_fails_to_close_is_dropped(tmp_path, monkeypatch):
    """Storage that refuses the shard's last write (end-of-archive blocks, fsync) leaves no
    temporary file and publishes nothing."""
    producer = tiny_producer(str(tmp_path), per_shard=8)
    sync_close = producer.writer.storage.sync_close

    def full_for_shards(f):
        if str(f.path).endswith(".tar.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        sync_close(f)

    monkeypatch.setattr(producer.writer.storage, "sync_close", full_for_shards)
    with pytest.raises(StorageError, match="no partial shard"):
        producer.run(8)
    storage = Storage(str(tmp_path))
    assert not Ledger(storage, "s").entries() and not storage.list("s/shards")


def test_full_storage_stops_a_live_run_with_a_clear_error(tmp_path, quota, capsys):
    root = f"quota://{tmp_path / 'data'}"
    quota(1_500_000)  # a few steps train, then the disk is full
    args = [*DEBUG, f"storage.root={root}", f"run_dir={tmp_path / 'run'}", "engine.max_steps=100000"]
    args.append("engine.data.delete_consumed=false")  # every published shard stays to be checked
    start = time.monotonic()
    assert main(["run", *args, "engine.data.idle_timeout=600"]) == 1
    assert time.monotonic() - start < 120  # stopped by the producers' error, not by the idle timeout
    err = capsys.readouterr().err
    assert "a producer stopped" in err and "No space left on device" in err
    for role in ("synthetic", "real"):
        _assert_published_shards_intact(root, f"simgan-{role}")


@pytest.fixture(scope="module")
def ray_with_quota():
    """A local Ray whose workers know ``quota://`` (with a quota) and report metrics every 0.5 s."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.cluster.quota_fs.register",
            "env_vars": {QUOTA_ENV: "450000", "PYTHONPATH": str(Path(__file__).parents[2])},
        },
        _system_config={"metrics_report_interval_ms": 500},
    )
    yield
    ray.shutdown()


def test_full_storage_stops_ray_producers_with_a_clear_error(ray_with_quota, tmp_path, capsys):
    register()
    args = ["generate", "source=debug", "cluster=ray", "cluster.producers=2", "cluster.num_cpus_per_producer=0.5"]
    rc = main([*args, f"storage.root=quota://{tmp_path}", "num_samples=4000", "samples_per_shard=8"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "no partial shard" in err and "Traceback" not in err
    assert not Ledger(Storage(str(tmp_path)), "simulator").closed
    _assert_published_shards_intact(str(tmp_path), "simulator", killed_peers=True)  # the first error kills all


def _scrape_ray_metrics(name: str, timeout: float = 90.0) -> list[str]:  # Ray exports slowly on a loaded machine
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        if lines:
            return lines
        time.sleep(0.5)
    return []


def test_killed_producer_actor_is_restarted_and_counted(ray_with_quota, tmp_path):
    cluster = ClusterConfig(mode="ray", producers=1, num_cpus_per_producer=0.5, max_restarts=2)
    spec = ProducerSpec("simulator", TINY, str(tmp_path), "s", "cpu", 8, seed=1, labels={"method": "test"})
    pool = RayProducers(spec, cluster, ["p0"])
    pool.start([64])
    refs = pool.calls
    ledger = Ledger(Storage(str(tmp_path)), "s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ledger.entries():
        time.sleep(0.05)
    os.kill(ray.get(pool.actors[0].pid.remote()), signal.SIGKILL)
    ray.get(refs, timeout=120)  # the interrupted call finishes on the restarted actor
    lines = _scrape_ray_metrics("ray_renderloop_producer_restarts_total")  # while the actor lives
    pool.join(60)
    assert sum(e.count for e in Ledger(Storage(str(tmp_path)), "s").entries()) >= 64
    _assert_published_shards_intact(str(tmp_path), "s")
    assert lines, "the restart counter never reached Ray's metrics agent"
    line = next(line for line in lines if 'producer="p0"' in line)
    assert 'role="producer"' in line and 'method="test"' in line and float(line.rsplit(" ", 1)[1]) >= 1


def test_train_on_a_stream_left_open_stops_waiting_and_says_so(tmp_path, caplog):
    """A killed ``generate`` leaves its stream open; ``train`` waits ``engine.data.idle_timeout``
    for a new shard, says so, then trains on what the stream holds (as on a closed stream)."""
    from renderloop.datasets.producer import Producer
    from renderloop.datasets.sources import build_source, source_config
    from tests.trainers.helpers import debug_config

    cfg = debug_config(tmp_path / "data", tmp_path / "run")
    for role, node in cfg.streams().items():  # 8 samples each, never closed
        name, scfg = source_config(node)
        Producer(build_source(name, scfg), Ledger(Storage(cfg.storage.root), cfg.stream(role)), "p0",
                 samples_per_shard=8, seed=3).run(8)  # fmt: skip
    args = ["train", "method=simgan_debug", "engine=debug", "engine.max_steps=50", "engine.data.idle_timeout=1",
            f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "device=cpu"]  # fmt: skip
    assert main(args) == 0
    said = caplog.text
    assert "simgan-synthetic: no new shard for 1.0 s" in said and "simgan-real: no new shard for 1.0 s" in said
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 50
