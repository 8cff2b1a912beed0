"""Generating a stream once (``renderloop generate``): a source's samples as shards, by the same
producers a live run starts, to train on many times."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from renderloop.config import ConfigError
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.sources import source_config
from renderloop.datasets.storage import Storage, StorageConfig
from renderloop.metrics import PrometheusSink
from renderloop.ports import check_port

from .config import ClusterConfig
from .producers import ProducerSpec, producer_ids, start_producers

__all__ = ["GenerateConfig", "generate", "split"]


@dataclass
class GenerateConfig:
    source: Any = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    num_samples: int = 1024
    samples_per_shard: int = 256
    seed: int = 0
    device: str = "auto"
    max_backlog_shards: int = 0
    metrics_port: int = -1

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError("num_samples", f"must be >= 1; got {self.num_samples}")
        if self.samples_per_shard < 1:
            raise ConfigError("samples_per_shard", f"must be >= 1; got {self.samples_per_shard}")
        if self.max_backlog_shards < 0:
            raise ConfigError("max_backlog_shards", f"must be >= 0; got {self.max_backlog_shards}")
        check_port("metrics_port", self.metrics_port, off=-1)
        self.cluster.check_devices(self.device)


def split(total: int, parts: int) -> list[int]:
    """``total`` samples as ``parts`` near-equal shares."""
    return [total // parts + (i < total % parts) for i in range(parts)]


TARGETS = "generate.json"
"""Per stream: what each producer id of the last ``generate`` is to reach, so that running an
interrupted ``generate`` again finishes its count instead of adding ``num_samples`` again."""


def _totals(cfg: GenerateConfig, ledger: Ledger, already: dict[str, int]) -> dict[str, int]:
    """Samples each producer id is to have published when this ``generate`` ends: the unfinished
    targets of an interrupted one (its stream is still open), else ``num_samples`` more."""
    storage, target = ledger.storage, f"{cfg.storage.stream}/{TARGETS}"
    if not ledger.closed and ledger.entries() and storage.exists(target):
        recorded = json.loads(storage.read_bytes(target))
        if set(recorded) == set(already):
            left = sum(max(recorded[pid] - n, 0) for pid, n in already.items())
            print(f"continuing an interrupted generate of {cfg.storage.stream}: {left} samples to go")
            return {pid: max(recorded[pid], n) for pid, n in already.items()}
    shares = split(cfg.num_samples, len(already))
    totals = {pid: n + share for (pid, n), share in zip(already.items(), shares, strict=True)}
    storage.write_atomic(target, json.dumps(totals).encode())
    return totals


def generate(cfg: GenerateConfig) -> dict[str, float]:
    """Generate ``num_samples`` into the stream, show progress, close the stream, return a summary."""
    name, scfg = source_config(cfg.source)
    if cfg.samples_per_shard % scfg.batch_size:
        raise ConfigError(
            "samples_per_shard",
            f"must be a multiple of source.batch_size={scfg.batch_size}; got {cfg.samples_per_shard}",
        )
    storage = Storage(cfg.storage.root)
    ledger = Ledger(storage, cfg.storage.stream)
    ids = producer_ids(cfg.cluster.producers)
    already = {pid: sum(e.count for e in ledger.entries() if e.producer == pid) for pid in ids}
    totals = _totals(cfg, ledger, already)
    ledger.reopen()  # appending: live followers must not stop at an old CLOSED mark
    metrics = PrometheusSink()
    if cfg.metrics_port >= 0:
        print(f"metrics on http://127.0.0.1:{metrics.serve(cfg.metrics_port)}/metrics")
    spec = ProducerSpec(
        name, scfg, cfg.storage.root, cfg.storage.stream, samples_per_shard=cfg.samples_per_shard,
        seed=cfg.seed, max_backlog_shards=cfg.max_backlog_shards, threads=cfg.cluster.producer_threads,
        record=cfg.storage.record,
    )  # fmt: skip

    goal = sum(totals.values()) - sum(already.values())

    def produced() -> int:
        return sum(e.count for e in ledger.entries() if e.producer in already) - sum(already.values())

    start = time.monotonic()
    group = start_producers(spec, cfg.cluster, cfg.device, len(ids), metrics, [totals[pid] for pid in ids])
    bar = tqdm(total=goal, unit="sample", desc=f"generate {name} → {cfg.storage.stream}")
    try:
        while group.alive() and group.failure() is None:
            time.sleep(0.2)
            bar.update(produced() - bar.n)
    finally:
        group.stop()
        group.join(120)  # raises the first producer error
    done = produced()
    bar.update(done - bar.n)
    bar.close()
    if done < goal:
        raise RuntimeError(f"generate: only {done} of {goal} samples were published; stream left open")
    ledger.close()
    metrics.close()
    seconds = time.monotonic() - start
    entries = ledger.entries()
    return {
        "samples": done,
        "seconds": seconds,
        "samples_per_s": done / max(seconds, 1e-9),
        "shards": len(entries),
        "bytes": sum(e.bytes for e in entries),
        "stream": storage.url(cfg.storage.stream),
    }
