"""Local mode: producer threads report their rate and the backlog for the progress bar; producer
processes publish, forward their metrics, and report failures and deaths."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter

import pytest
import torch

from renderloop.cluster.local import LocalProducers, ProducerError, ProducerProcesses, local_producers
from renderloop.cluster.producers import GenerationStatus, ProducerSpec
from renderloop.config import ConfigError
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage
from renderloop.metrics import MetricsSink
from tests.datasets.helpers import TINY, tiny_producer


class RecordingSink(MetricsSink):
    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def inc(self, name, value=1.0, **labels):
        self.counts[name, tuple(sorted(labels.items()))] += value

    def total(self, name: str, **labels: str) -> float:
        return sum(v for (n, got), v in self.counts.items() if n == name and set(labels.items()) <= set(got))


def test_generation_status_reports_rate_and_backlog(tmp_path):
    pool = LocalProducers(lambda pid: tiny_producer(str(tmp_path), producer=pid), ["p0", "p1"])
    status = GenerationStatus([pool], [Ledger(Storage(str(tmp_path)), "s")])
    pool.start([16, 16])
    pool.join(60)
    assert pool.failure() is None
    first = status()
    assert first["generated_per_s"] > 0 and first["backlog"] == first["backlog/s"] == 4  # 4 shards of 8, none read
    Ledger(Storage(str(tmp_path)), "s").record_consumed("reader", 3)
    assert status() == {"generated_per_s": 0, "backlog": 1, "backlog/s": 1}
    assert GenerationStatus([], [])() == {"generated_per_s": 0, "backlog": 0}  # a run that reads no stream


def _spec(root, source_config=TINY) -> ProducerSpec:
    return ProducerSpec("simulator", source_config, str(root), "s", "cpu", samples_per_shard=8)


def test_producer_processes_publish_and_report_their_metrics(tmp_path):
    sink = RecordingSink()
    pool = local_producers(_spec(tmp_path), ["p0", "p1"], sink, processes=True)
    pool.start([16, 8])
    pool.join(120)
    assert pool.failure() is None and not pool.alive() and pool.samples == 24
    entries = Ledger(Storage(str(tmp_path)), "s").entries()
    assert sorted((e.producer, e.count) for e in entries) == [("p0", 8), ("p0", 8), ("p1", 8)]
    assert sink.total("renderloop_samples_generated_total") == 24
    assert sink.total("renderloop_samples_generated_total", source="simulator", producer="p0") == 16
    assert sink.total("renderloop_shards_published_total", producer="p1") == 1


def test_pooled_producers_run_several_streams_in_one_process(tmp_path):
    sink = RecordingSink()
    a, b = _spec(tmp_path), dataclasses.replace(_spec(tmp_path), stream="t")
    pool = ProducerProcesses([(a, "p0"), (b, "p0"), (b, "p1")], sink, pooled=True)
    pool.start([16, 8, 8])
    pool.join(120)
    assert pool.failure() is None and not pool.alive() and pool.samples == 32
    assert len(pool._processes) == 1
    storage = Storage(str(tmp_path))
    assert sorted((e.producer, e.count) for e in Ledger(storage, "s").entries()) == [("p0", 8), ("p0", 8)]
    assert sorted((e.producer, e.count) for e in Ledger(storage, "t").entries()) == [("p0", 8), ("p1", 8)]
    assert sink.total("renderloop_samples_generated_total") == 32


def test_a_failing_pooled_producer_is_reported_with_its_stream(tmp_path):
    mesh = tmp_path / "missing.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    bad = dataclasses.replace(TINY, shapes=["mesh"], mesh_paths=[str(mesh)])  # valid when checked
    mesh.unlink()
    good, broken = _spec(tmp_path), dataclasses.replace(_spec(tmp_path, bad), stream="t")
    pool = ProducerProcesses([(good, "p0"), (broken, "p0")], pooled=True)
    pool.start([8, 8])
    with pytest.raises(ProducerError, match="producer p0 of stream t failed: .*missing.obj"):
        pool.join(120)
    assert [e.count for e in Ledger(Storage(str(tmp_path)), "s").entries()] == [8]  # the other stream ran


def test_a_live_run_with_pooled_producers_trains(tmp_path):
    from renderloop.cli import main

    args = ["method=simgan_debug", "engine=debug", "samples_per_shard=8", "device=cpu", "engine.max_steps=6",
            f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
            "cluster.local_producers=pooled"]  # fmt: skip
    assert main(["run", *args]) == 0
    assert (tmp_path / "run" / "train_log.jsonl").read_text().count("\n") >= 1


def test_producer_processes_stop_while_waiting_for_room(tmp_path):
    spec = dataclasses.replace(_spec(tmp_path), max_backlog_shards=1)
    pool = local_producers(spec, ["p0"], processes=True)
    pool.start()  # until stopped: after one shard it waits for a reader that never comes
    ledger = Ledger(Storage(str(tmp_path)), "s")
    deadline = time.monotonic() + 120
    while ledger.backlog() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert ledger.backlog() == 1 and pool.alive()
    pool.stop()
    started = time.monotonic()
    pool.join(60)
    assert time.monotonic() - started < 30 and not pool.alive() and pool.failure() is None


def test_a_failing_producer_process_is_reported(tmp_path):
    mesh = tmp_path / "missing.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    bad = dataclasses.replace(TINY, shapes=["mesh"], mesh_paths=[str(mesh)])  # valid when checked
    mesh.unlink()  # gone by the time the producer process builds its source
    pool = local_producers(_spec(tmp_path, bad), ["p0"], processes=True)
    pool.start([8])
    with pytest.raises(ProducerError, match="producer p0 of stream s failed: .*missing.obj"):
        pool.join(120)


def test_a_bad_source_config_in_a_process_is_a_config_error(tmp_path):
    from renderloop.datasets.stylegan2 import StyleGAN2SourceConfig

    spec = ProducerSpec("stylegan2", StyleGAN2SourceConfig(checkpoint=str(tmp_path / "none.pt")), str(tmp_path), "s",
                        "cpu", samples_per_shard=16)  # fmt: skip
    pool = local_producers(spec, ["p0"], processes=True)
    pool.start([16])
    with pytest.raises(ConfigError, match="config error at source.checkpoint"):
        pool.join(120)


def test_a_killed_producer_process_is_reported(tmp_path):
    pool = local_producers(_spec(tmp_path), ["p0"], processes=True)
    pool.start()  # until stopped
    deadline = time.monotonic() + 120
    while pool.samples == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(pool._processes[0].pid, signal.SIGKILL)
    with pytest.raises(ProducerError, match="died"):
        pool.join(60)


@pytest.fixture
def captured_specs(monkeypatch):
    """The specs ``start_producers`` hands to local producers, which then run on the CPU anyway."""
    import renderloop.cluster.local as local_module

    specs, real = [], local_module.local_producers

    def capture(spec, ids, metrics=None, processes=False, pooled=False):
        specs.append((spec, processes))
        return real(dataclasses.replace(spec, device="cpu"), ids, metrics, processes, pooled)

    monkeypatch.setattr(local_module, "local_producers", capture)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only resolved here, never used
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return specs


def test_producer_device_and_threads_reach_the_producers_of_a_run(tmp_path, captured_specs):
    """``cluster.producer_device`` and ``producer_threads`` become each local producer's spec."""
    from renderloop.cluster.launch import start_run_producers
    from tests.trainers.helpers import debug_config

    overrides = ["cluster.producer_device=cuda:0", "cluster.producer_threads=1", "cluster.local_producers=threads"]
    groups = []
    start_run_producers(debug_config(tmp_path / "data", tmp_path / "run", *overrides), None, groups)
    for group in groups:
        group.stop()
        group.join(60)
    # The sources go to the GPU; threads or processes follow the configuration and the trainer's device.
    assert len(groups) == len(captured_specs) == 2
    assert all(spec.device == "cuda:0" and spec.threads == 1 and not procs for spec, procs in captured_specs)
    assert all(spec.fields == ("rgb.png",) for spec, _ in captured_specs)  # what SimGAN reads, no labels
    for bad in ("cluster.producer_device=gpu", "cluster.producer_threads=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            debug_config(tmp_path / "data", tmp_path / "run", bad)


def test_generate_starts_its_producers_as_a_run_does(tmp_path, captured_specs, capsys):
    """``renderloop generate`` honours the same producer settings as ``renderloop run``."""
    from renderloop.cli import main

    args = ["generate", "source=debug", f"storage.root={tmp_path}", "num_samples=16", "samples_per_shard=8",
            "cluster.producers=2", "cluster.producer_device=cuda:0", "cluster.producer_threads=1",
            "device=cpu"]  # fmt: skip
    assert main(args) == 0
    assert "16 samples" in capsys.readouterr().out
    ((spec, processes),) = captured_specs
    assert spec.device == "cuda:0" and spec.threads == 1 and not processes  # a CPU run: threads
    assert {e.producer for e in Ledger(Storage(str(tmp_path)), "simulator").entries()} == {"p0", "p1"}


def test_a_producer_process_with_one_thread_publishes(tmp_path):
    pool = local_producers(dataclasses.replace(_spec(tmp_path), threads=1), ["p0"], processes=True)
    pool.start([8])
    pool.join(120)
    assert pool.failure() is None and pool.samples == 8


def test_an_interrupted_generate_run_again_finishes_its_count(tmp_path, capsys):
    """Running an interrupted ``generate`` again reaches the count it was asked for, not that count
    again on top of what it had published; a finished stream gets ``num_samples`` more."""
    from renderloop.cli import main

    args = ["generate", "source=debug", f"storage.root={tmp_path}", "samples_per_shard=8", "device=cpu",
            "cluster.local_producers=threads"]  # fmt: skip
    assert main([*args, "num_samples=16"]) == 0
    ledger = Ledger(Storage(str(tmp_path)), "simulator")
    # A second generate of 32 more was killed after its targets were written: the stream is open.
    ledger.reopen()
    Storage(str(tmp_path)).write_atomic("simulator/generate.json", b'{"p0": 48}')
    assert main([*args, "num_samples=8"]) == 0
    assert "continuing an interrupted generate" in capsys.readouterr().out
    entries = ledger.entries()
    assert ledger.closed and sum(e.count for e in entries) == 48
    seeds = [s for e in entries for s in range(e.seeds[0], e.seeds[1] + 1)]
    assert len(seeds) == len(set(seeds))  # no batch generated twice
    assert main([*args, "num_samples=8"]) == 0  # closed: appends
    assert sum(e.count for e in ledger.entries()) == 56
