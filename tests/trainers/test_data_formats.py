"""The trainer's batches from chunked (version 2), per-sample (version 1) and mixed streams: a
resumed ``StreamBatches`` continues the uninterrupted sequence, and training resumed from a
checkpoint logs the same losses on each kind of stream."""

from __future__ import annotations

import json

import pytest
import torch

from renderloop.cluster.launch import train_worker
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.sources import build_source, source_config
from renderloop.datasets.storage import Storage
from renderloop.trainers.config import DataConfig
from renderloop.trainers.data import StreamBatches, to_device
from tests.datasets.helpers import tiny_producer
from tests.trainers.helpers import debug_config

RECORDS = {"chunk": ["chunk"], "sample": ["sample"], "mixed": ["sample", "chunk"]}


def _stream(root: str, kind: str) -> None:
    """48 samples in shards of 8 (batches of 4), of one format or first per-sample then chunks."""
    runs = RECORDS[kind]
    for record in runs:
        tiny_producer(root, record=record).run(48 // len(runs))
    Ledger(Storage(root), "s").close()


def _batches(root: str, workers: int, consumed: int, count: int) -> list[dict]:
    config = DataConfig(batch_size=4, num_workers=workers, shuffle_buffer=10)
    data = StreamBatches(root, "s", config, fields=None, seed=5, consumer="t", rank=0, world_size=1, consumed=consumed)
    try:
        return [to_device(data.next()[0], torch.device("cpu"), torch.float32) for _ in range(count)]
    finally:
        data.close()


@pytest.mark.parametrize("kind", list(RECORDS))
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_hands_out_the_batches_an_uninterrupted_one_would(tmp_path, kind, workers):
    _stream(str(tmp_path), kind)
    whole = _batches(str(tmp_path), workers, 0, 17)  # past the end of the first epoch (12 batches)
    resumed = _batches(str(tmp_path), workers, 5, 12)
    assert [b["key"] for b in resumed] == [b["key"] for b in whole[5:]]
    for a, b in zip(whole[5:], resumed, strict=True):
        for key in ("rgb", "mask", "depth", "normal", "seg", "kp2d"):
            assert torch.equal(a[key], b[key]), key
    first_epoch = [k for b in whole[:12] for k in b["key"]]
    assert len(set(first_epoch)) == 48  # each sample once per epoch
    batch = whole[0]
    assert batch["rgb"].shape == (4, 3, 16, 16) and batch["rgb"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 16, 16) and batch["seg"].dtype == torch.int64
    assert batch["normal"].shape == (4, 3, 16, 16) and batch["cam"]["K"].shape == (4, 3, 3)


def _make_streams(cfg, record: str, samples: int = 64) -> None:
    storage = Storage(cfg.storage.root)
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        ledger = Ledger(storage, cfg.stream(role))
        source = build_source(name, scfg)
        Producer(source, ledger, "p0", samples_per_shard=cfg.samples_per_shard, seed=3, record=record).run(samples)
        ledger.close()


def _losses(run_dir) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss/")} for r in rows}


# tests/trainers/test_engine.py resumes on the producers' default (chunks); these pin each format.
@pytest.mark.parametrize(("record", "stop"), [("sample", 3), ("chunk", 4)])
def test_resume_reproduces_the_uninterrupted_loss_curve_on_each_format(tmp_path, record, stop):
    data, extra = tmp_path / "data", ["engine.data.num_workers=2", "engine.max_steps=6", "engine.checkpoint_every=3"]
    _make_streams(debug_config(data, tmp_path / "run"), record)
    train_worker(debug_config(data, tmp_path / "whole", *extra))
    part = debug_config(data, tmp_path / "part", *extra)
    part.engine.max_steps = stop
    train_worker(part)
    part.engine.max_steps = 6
    train_worker(part)
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "part")
    assert sorted(b) == list(range(6))
    for step in range(6):
        assert a[step].keys() == b[step].keys()
        for key in a[step]:
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-7), (step, key)
