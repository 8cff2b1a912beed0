"""Launching a training run: the trainer on existing streams (``train``) or on live ones (``run``).

The launch mode (``cluster.mode``) decides where the trainer runs: this process (``local``),
``workers`` processes under torchrun, or Ray Train workers. ``run`` first starts producers for
every stream the method reads (``producers.start_producers``), then trains while they publish.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderloop.config import ConfigError
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.sources import source_config
from renderloop.datasets.storage import Storage, StorageConfig
from renderloop.metrics import MetricsSink, PrometheusSink
from renderloop.ports import check_port
from renderloop.seeding import derive_seed
from renderloop.trainers.config import EngineConfig
from renderloop.trainers.engine import stream_name
from renderloop.trainers.methods import METHODS, method_config

from .config import ClusterConfig
from .producers import GenerationStatus, ProducerGroup, ProducerSpec, start_pooled_producers, start_producers
from .torchrun import in_torchrun_worker
from .watch import ProducerWatch

__all__ = ["TrainConfig", "train", "run", "train_worker", "serve_metrics"]


@dataclass
class TrainConfig:
    method: Any = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run_dir: str = "runs/simgan"
    device: str = "auto"
    metrics_port: int = -1
    samples_per_shard: int = 256
    max_backlog_shards: int = 16

    def __post_init__(self) -> None:
        # Validate the method (name and every key) now, before anything heavy is built.
        self.method_name, self.method_config = method_config(self.method)
        METHODS[self.method_name].cls.check_engine(self.method_config, self.engine)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"must be auto, cpu or cuda; got {self.device!r}")
        check_port("metrics_port", self.metrics_port, off=-1)
        self.cluster.check_devices(self.device)
        _check_run_dir(Path(self.run_dir))
        if self.cluster.mode == "local" and self.cluster.workers != 1:
            raise ConfigError(
                "cluster.workers",
                f"local mode trains in this process: must be 1; got {self.cluster.workers} "
                "(use cluster=torchrun or cluster=ray for more)",
            )
        if self.samples_per_shard < 1:
            raise ConfigError("samples_per_shard", f"must be >= 1; got {self.samples_per_shard}")
        if self.max_backlog_shards < 0:
            raise ConfigError("max_backlog_shards", f"must be >= 0; got {self.max_backlog_shards}")
        unknown = set(self.cluster.producers_by_role or {}) - set(self.streams())
        if unknown:
            raise ConfigError(
                "cluster.producers_by_role",
                f"names no data role of method {self.method_name}: {sorted(unknown)} (roles: {sorted(self.streams())})",
            )
        for role, node in self.streams().items():
            _, scfg = source_config(node)
            if self.samples_per_shard % scfg.batch_size:
                raise ConfigError(
                    "samples_per_shard",
                    f"must be a multiple of method.data.{role}.batch_size={scfg.batch_size}; "
                    f"got {self.samples_per_shard}",
                )

    def streams(self) -> dict[str, Any]:
        """Data role → source config node."""
        return METHODS[self.method_name].cls.data_roles(self.method_config)

    def fields(self, role: str) -> tuple[str, ...] | None:
        """The schema fields the method reads from ``role``'s stream (None: all): what its
        producers write when ``run`` starts them."""
        import torch

        fields = METHODS[self.method_name].cls(self.method_config, torch.device("cpu")).fields(role)
        return None if fields is None else tuple(fields)

    def stream(self, role: str) -> str:
        return stream_name(self.storage.stream, role)


def _check_run_dir(run_dir: Path) -> None:
    """``run_dir`` must be a folder this process can write in, or one it can create."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run_dir", f"is a file, not a folder; got {str(run_dir)!r}")
    parent = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("run_dir", f"cannot be written ({parent} is not a writable folder); got {str(run_dir)!r}")


def train_worker(
    cfg: TrainConfig,
    *,
    checkpoints=None,
    metrics: MetricsSink | None = None,
    device: str | None = None,
    status: Callable[[], dict[str, str]] | None = None,
):
    """One trainer process (any launch mode): train, export the models, return the last summary."""
    from renderloop.trainers.engine import Trainer

    own_sink = metrics is None
    if own_sink:
        metrics = serve_metrics(cfg, int(os.environ.get("RANK", 0)), "rank")
    trainer = Trainer(
        cfg.method_name,
        cfg.method_config,
        cfg.engine,
        root=cfg.storage.root,
        stream_prefix=cfg.storage.stream,
        run_dir=cfg.run_dir,
        device=device or cfg.device,
        metrics=metrics,
        checkpoints=checkpoints,
        status=status,
    )
    try:
        summary = trainer.fit()
        trainer.export()
        return summary
    finally:
        if own_sink:
            metrics.close()


def serve_metrics(cfg: TrainConfig, offset: int, who: str) -> PrometheusSink:
    """A Prometheus sink, served on 127.0.0.1:``metrics_port + offset`` when ``metrics_port`` >= 0
    (0: any free port)."""
    sink = PrometheusSink()
    if cfg.metrics_port >= 0:
        wanted = cfg.metrics_port + offset if cfg.metrics_port else 0
        try:
            port = sink.serve(wanted)
        except OSError as err:  # in use: a debug run should not die for its metrics endpoint
            port = sink.serve(0)
            print(f"{who} {offset}: port {wanted} unavailable ({err.strerror}); using {port}", flush=True)
        print(f"{who} {offset}: metrics on http://127.0.0.1:{port}/metrics", flush=True)
    return sink


def _check_streams(cfg: TrainConfig) -> None:
    storage = Storage(cfg.storage.root)
    for role in cfg.streams():
        if not storage.exists(cfg.stream(role)):
            raise ConfigError(
                "storage",
                f"stream {storage.url(cfg.stream(role))} does not exist; generate it first "
                f"(renderloop generate ... storage.stream={cfg.stream(role)}) or use `renderloop run`",
            )
        ledger = Ledger(storage, cfg.stream(role))
        if not ledger.entries() and ledger.closed:
            raise ConfigError("storage", f"stream {storage.url(cfg.stream(role))} is closed and empty")
        if not ledger.entries() and not cfg.engine.data.follow:
            raise ConfigError(
                "storage",
                f"stream {storage.url(cfg.stream(role))} has no shards; generate it first "
                f"(renderloop generate ... storage.stream={cfg.stream(role)}) or use `renderloop run`",
            )


def train(
    cfg: TrainConfig,
    overrides: list[str],
    command: str = "train",
    metrics: MetricsSink | None = None,
    status: Callable[[], dict[str, str]] | None = None,
) -> dict[str, float]:
    """Train on the streams, in the launch mode of ``cluster.mode`` (``metrics`` and ``status``:
    local mode's sink and extra progress-bar fields)."""
    mode = cfg.cluster.mode
    if command == "train" and not in_torchrun_worker():
        _check_streams(cfg)
    if mode == "local" or (mode == "torchrun" and in_torchrun_worker()):
        return train_worker(cfg, metrics=metrics, status=status)
    if mode == "torchrun":
        from .torchrun import launch

        launch(command, overrides, cfg.cluster)
        return _last_summary(cfg)
    from .ray_train import fit_on_ray

    return fit_on_ray(cfg)


def _last_summary(cfg: TrainConfig) -> dict[str, float]:
    log = Path(cfg.run_dir) / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1]) if lines else {}


def run(cfg: TrainConfig, overrides: list[str], command: str = "run") -> dict[str, float]:
    """Start producers for every stream of the method, train while they publish, then stop them.

    Under torchrun the launching process runs the producers; its children (which re-run
    ``command``) only train.
    """
    cfg.engine.data.follow = True
    if in_torchrun_worker():
        return train_worker(cfg)
    storage = Storage(cfg.storage.root)
    for role in cfg.streams():
        Ledger(storage, cfg.stream(role)).reopen()
    sink = None  # Ray actors report through Ray's metrics agent
    if cfg.cluster.mode == "local":  # producers and the trainer share this process and its endpoint
        sink = serve_metrics(cfg, 0, "rank")
    elif cfg.cluster.mode == "torchrun":  # the producers' endpoint follows the ranks' ports
        sink = serve_metrics(cfg, cfg.cluster.workers, "producers, port offset")
    groups: list[ProducerGroup] = []
    try:
        start_run_producers(cfg, sink, groups)
        status = GenerationStatus(groups, [Ledger(storage, cfg.stream(role)) for role in cfg.streams()])
        with ProducerWatch([group.failure for group in groups]):
            return train(cfg, [*overrides, "engine.data.follow=true"], command=command, metrics=sink, status=status)
    finally:
        for group in groups:
            group.stop()
        for group in groups:
            with contextlib.suppress(Exception):  # their errors were reported by the watch
                group.join(120)
        if sink is not None:
            sink.close()


def start_run_producers(cfg: TrainConfig, metrics: MetricsSink | None, groups: list[ProducerGroup]) -> None:
    """Start the producers of each stream the method reads, appending them to ``groups`` (so the
    caller stops those already started if a later one fails). Streams are seeded per data role (so
    streams of one run never draw the same samples, even from one source config: AIGN's inputs
    and memory stay unpaired) and get only the fields the method reads. ``cluster.local_producers=pooled``
    puts every stream's producers in one process."""
    specs = []
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        spec = ProducerSpec(
            name, scfg, cfg.storage.root, cfg.stream(role), samples_per_shard=cfg.samples_per_shard,
            seed=derive_seed(cfg.engine.seed, role), max_backlog_shards=cfg.max_backlog_shards,
            threads=cfg.cluster.producer_threads, fields=cfg.fields(role), labels={"method": cfg.method_name},
            record=cfg.storage.record,
        )  # fmt: skip
        specs.append((spec, cfg.cluster.producers_for(role)))
    if cfg.cluster.mode != "ray" and cfg.cluster.local_producers == "pooled":
        groups.append(start_pooled_producers(specs, cfg.cluster, cfg.device, metrics))
        return
    for spec, count in specs:
        groups.append(start_producers(spec, cfg.cluster, cfg.device, count, metrics))
