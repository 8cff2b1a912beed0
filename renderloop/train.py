"""``renderloop train``, ``run`` and ``eval``: the trainer on existing or live streams, and evaluation.

Imported by the CLI on demand. The launch mode (``cluster.mode``) decides where the trainer runs:
this process (``local``), ``workers`` processes under torchrun, or Ray Train workers. ``run``
first starts producers for every stream the method reads, then trains while they publish.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from renderloop.cluster.config import ClusterConfig
from renderloop.config import ConfigError, to_schema
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.sources import source_config
from renderloop.datasets.storage import Storage, StorageConfig
from renderloop.metrics import MetricsSink, PrometheusSink
from renderloop.trainers.config import EngineConfig
from renderloop.trainers.method import METHODS, method_config

__all__ = ["TrainConfig", "train", "run", "evaluate", "train_worker"]


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
        if hasattr(self.method_config, "check_engine"):  # settings a method cannot train with
            self.method_config.check_engine(self.engine)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"must be auto, cpu or cuda; got {self.device!r}")
        if self.cluster.mode == "local" and self.cluster.workers != 1:
            raise ConfigError(
                "cluster.workers",
                f"local mode trains in this process: must be 1; got {self.cluster.workers} "
                "(use cluster=torchrun or cluster=ray for more)",
            )
        if self.samples_per_shard < 1 or self.max_backlog_shards < 0:
            raise ConfigError("samples_per_shard", "samples_per_shard must be >= 1 and max_backlog_shards >= 0")
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
        return dict(self.method_config.data)

    def fields(self, role: str) -> tuple[str, ...] | None:
        """The schema fields the method reads from ``role``'s stream (None: all): what its
        producers write when ``run`` starts them."""
        import torch

        fields = METHODS[self.method_name].method(self.method_config, torch.device("cpu")).fields(role)
        return None if fields is None else tuple(fields)

    def stream(self, role: str) -> str:
        from renderloop.trainers.engine import stream_name

        return stream_name(self.storage.stream, role)


def in_torchrun_worker() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


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
        if trainer.dist.is_main:
            run_dir = Path(cfg.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "method.json").write_text(json.dumps(_plain(cfg.method_config), indent=2) + "\n")
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


def _plain(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


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
        from renderloop.cluster.torchrun import launch

        launch(command, overrides, cfg.cluster)
        return _last_summary(cfg)
    from renderloop.cluster.ray_train import fit_on_ray

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
    from renderloop.cluster.watch import ProducerWatch

    stop, checks, status = _start_producers(cfg, sink)
    try:
        with ProducerWatch(checks):
            return train(cfg, [*overrides, "engine.data.follow=true"], command=command, metrics=sink, status=status)
    finally:
        stop()
        if sink is not None:
            sink.close()


def stream_seed(seed: int, role: str) -> int:
    """The producers' seed of a run's ``role`` stream: streams of one run never draw the same
    samples, even from one source config (AIGN's inputs and memory must stay unpaired)."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % (1 << 62)


def _start_producers(cfg: TrainConfig, metrics: MetricsSink | None = None):
    """Producers for each stream (threads or processes beside this one, or Ray actors with
    ``cluster.mode=ray``). They write only the fields the method reads from their stream.

    Returns a function that stops them, the pools' health checks (see ``ProducerWatch``) and, for
    local producers, a progress-bar status (generated samples/s, backlog).
    """
    if cfg.cluster.mode == "ray":
        options = {
            "samples_per_shard": cfg.samples_per_shard,
            "max_backlog_shards": cfg.max_backlog_shards,
            "device": cfg.cluster.source_device(cfg.device),
            "threads": cfg.cluster.producer_threads,
            "labels": {"method": cfg.method_name},
        }
        import ray

        from renderloop.cluster.producers import ProducerPool

        ray.init(address=cfg.cluster.address, ignore_reinit_error=True, include_dashboard=False)
        pools = []
        for role, node in cfg.streams().items():
            name, scfg = source_config(node)
            count = cfg.cluster.producers_for(role)
            role_options = {**options, "seed": stream_seed(cfg.engine.seed, role), "fields": cfg.fields(role)}
            pool = ProducerPool(cfg.cluster, name, scfg, cfg.storage.root, cfg.stream(role), role_options, count)
            pool.run_until([1 << 62] * count)  # until stopped; backpressure bounds the backlog
            pools.append(pool)
        return (lambda: [pool.kill() for pool in pools]), [pool.failure for pool in pools], None

    from renderloop.cluster.local import GenerationStatus, ProducerSpec, local_producers
    from renderloop.devices import resolve_device

    processes = cfg.cluster.producer_processes(resolve_device(cfg.device).type)  # as the trainer's device needs
    device = resolve_device(cfg.cluster.source_device(cfg.device))
    storage = Storage(cfg.storage.root)
    pools = []
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        spec = ProducerSpec(
            name, scfg, cfg.storage.root, cfg.stream(role), str(device), cfg.samples_per_shard,
            seed=stream_seed(cfg.engine.seed, role), max_backlog_shards=cfg.max_backlog_shards,
            threads=cfg.cluster.producer_threads, fields=cfg.fields(role),
        )  # fmt: skip
        ids = [f"p{i}" for i in range(cfg.cluster.producers_for(role))]
        pool = local_producers(spec, ids, metrics, processes)
        pool.start()
        pools.append(pool)

    def stop() -> None:
        for pool in pools:
            pool.stop()
        for pool in pools:
            with contextlib.suppress(Exception):  # their errors were reported by the watch
                pool.join(120)

    status = GenerationStatus(pools, [Ledger(storage, cfg.stream(role)) for role in cfg.streams()])
    return stop, [pool.failure for pool in pools], status


def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """Evaluate the models ``<run_dir>/models`` holds, with the method config the run trained with."""
    import torch

    from renderloop.devices import resolve_device

    run_dir = Path(cfg.run_dir)
    models = run_dir / "models"
    if not models.is_dir():
        raise ConfigError("run_dir", f"{run_dir} has no exported models; train first (renderloop train/run)")
    method_config = cfg.method_config
    saved = run_dir / "method.json"
    if saved.exists():  # the run's architecture, this command's evaluation settings
        trained = json.loads(saved.read_text())
        if hasattr(method_config, "evaluation"):
            trained["evaluation"] = _plain(cfg.method_config.evaluation)
        method_config = to_schema(METHODS[cfg.method_name].config, trained, "method")
    device = resolve_device(cfg.device)
    method = METHODS[cfg.method_name].method(method_config, device)
    nets = {}
    for name, spec in method.build().items():
        spec.module.load_state_dict(torch.load(models / f"{name}.pt", map_location="cpu", weights_only=True))
        nets[name] = spec.module.to(device).eval()
    return method.evaluate(nets, run_dir / "eval")
