"""``renderloop generate``: run a source into a stream with local or Ray producers.

Imported by the CLI on demand (it needs the data and cluster packages).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from renderloop.cluster.config import ClusterConfig
from renderloop.config import ConfigError
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.sources import source_config
from renderloop.datasets.storage import Storage, StorageConfig
from renderloop.devices import resolve_device
from renderloop.metrics import PrometheusSink


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


def split(total: int, parts: int) -> list[int]:
    """``total`` samples as ``parts`` near-equal shares."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def run(cfg: GenerateConfig) -> dict[str, float]:
    """Generate ``num_samples`` into the stream, show progress, close the stream, return a summary."""
    name, scfg = source_config(cfg.source)
    if cfg.samples_per_shard % scfg.batch_size:
        raise ConfigError(
            "samples_per_shard",
            f"must be a multiple of source.batch_size={scfg.batch_size}; got {cfg.samples_per_shard}",
        )
    storage = Storage(cfg.storage.root)
    ledger = Ledger(storage, cfg.storage.stream)
    ledger.reopen()  # appending: live followers must not stop at an old CLOSED mark
    metrics = PrometheusSink()
    if cfg.metrics_port >= 0:
        print(f"metrics on http://127.0.0.1:{metrics.serve(cfg.metrics_port)}/metrics")
    ids = [f"p{i}" for i in range(cfg.cluster.producers)]
    already = {pid: sum(e.count for e in ledger.entries() if e.producer == pid) for pid in ids}
    totals = [already[pid] + n for pid, n in zip(ids, split(cfg.num_samples, len(ids)), strict=True)]
    options = {
        "samples_per_shard": cfg.samples_per_shard,
        "seed": cfg.seed,
        "max_backlog_shards": cfg.max_backlog_shards,
        "device": cfg.device,
    }
    start = time.monotonic()
    bar = tqdm(total=cfg.num_samples, unit="sample", desc=f"generate {name} → {cfg.storage.stream}")
    if cfg.cluster.mode == "local":
        from renderloop.cluster.local import ProducerSpec, local_producers

        device = resolve_device(cfg.device)
        spec = ProducerSpec(
            name, scfg, cfg.storage.root, cfg.storage.stream, str(device), cfg.samples_per_shard,
            seed=cfg.seed, max_backlog_shards=cfg.max_backlog_shards,
        )  # fmt: skip
        pool = local_producers(spec, ids, metrics, cfg.cluster.producer_processes(device.type))
        pool.start(totals)
        while pool.alive() and pool.failure() is None:
            time.sleep(0.2)
            bar.update(pool.samples - bar.n)
        pool.stop()
        pool.join()
    else:
        import ray

        from renderloop.cluster.producers import ProducerPool, producer_error

        ray.init(address=cfg.cluster.address, ignore_reinit_error=True, include_dashboard=False)
        pool = ProducerPool(cfg.cluster, name, scfg, cfg.storage.root, cfg.storage.stream, options)
        pending = pool.run_until(totals)
        try:
            while pending:
                ready, pending = ray.wait(pending, timeout=0.5)
                try:
                    ray.get(ready)  # raises if a producer failed for good (restarts exhausted, storage, source)
                except Exception as err:
                    raise producer_error(err) from None
                done = sum(e.count for e in ledger.entries() if e.producer in already) - sum(already.values())
                bar.update(done - bar.n)
        finally:
            pool.kill()
    produced = sum(e.count for e in ledger.entries() if e.producer in already) - sum(already.values())
    bar.update(produced - bar.n)
    bar.close()
    if produced < cfg.num_samples:
        raise RuntimeError(f"generate: only {produced} of {cfg.num_samples} samples were published; stream left open")
    ledger.close()
    metrics.close()
    seconds = time.monotonic() - start
    entries = ledger.entries()
    return {
        "samples": produced,
        "seconds": seconds,
        "samples_per_s": produced / max(seconds, 1e-9),
        "shards": len(entries),
        "bytes": sum(e.bytes for e in entries),
        "stream": storage.url(cfg.storage.stream),
    }
