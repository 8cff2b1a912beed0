"""Ray Train launch: the engine in ``cluster.workers`` Ray Train workers (``TorchTrainer``).

Ray creates the process group; each worker runs the same ``train_worker`` as the other launch
modes, with checkpoints kept by Ray: every save writes the engine's checkpoint folder (all
DeepSpeed engines under their tags + per-rank client state) to a local temporary folder and
reports it with ``ray.train.report``; Ray merges the ranks' files into one checkpoint in
``storage_path``. After a failure, ``FailureConfig(max_failures)`` restarts the workers, which
restore from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .ray_session import connect, require_resources

__all__ = ["fit_on_ray", "RayCheckpointStore"]


class RayCheckpointStore:
    """The engine's checkpoint store, backed by Ray Train checkpoints."""

    only_this_run = True
    """Ray hands workers the checkpoints of their own Ray Train run; ``fit_on_ray`` names the run
    afresh when ``engine.resume`` is off, so those can only come from a restart after a failure."""

    def __init__(self, dist) -> None:
        self.dist = dist
        self._restored: Path | None = None

    def latest(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = Path(tempfile.mkdtemp(prefix="renderloop-restore-"))
        return Path(checkpoint.to_directory(str(self._restored)))

    def release(self, path: Path) -> None:
        """Done restoring: remove the local copy ``latest`` made (a full checkpoint per restart)."""
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None

    def save(self, step: int, write, metrics: dict[str, float]) -> Path:
        import ray.train

        from renderloop.trainers.checkpoint import step_tag

        folder = Path(tempfile.mkdtemp(prefix="renderloop-ckpt-")) / step_tag(step)
        folder.mkdir()
        write(folder)
        self.dist.barrier()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        shutil.rmtree(folder.parent, ignore_errors=True)
        return folder


def _worker(config: dict[str, Any]) -> None:
    import ray.train.torch

    from renderloop.trainers.distributed import init_distributed

    from .launch import train_worker
    from .ray_session import RaySink

    cfg = config["cfg"]
    device = ray.train.torch.get_device()
    device = str(device) if device.type == "cuda" else "cpu"
    dist = init_distributed(device)
    metrics = RaySink(method=cfg.method_name, role="trainer", rank=str(dist.rank))
    train_worker(cfg, checkpoints=RayCheckpointStore(dist), metrics=metrics, device=device)


def _run_name(cfg) -> str:
    """The Ray Train run's name: the run folder's, under which Ray restores the newest checkpoint of
    an earlier run; with ``engine.resume`` off, a new name, so only this run's own restarts restore."""
    name = Path(cfg.run_dir).name
    return name if cfg.engine.resume else f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def fit_on_ray(cfg) -> dict[str, float]:
    """Train under Ray Train with the workers, resources and restarts of ``cfg.cluster``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cluster = cfg.cluster
    # Workers do not share the driver's working directory: give them absolute local paths.
    cfg.run_dir = str(Path(cfg.run_dir).resolve())
    if "://" not in cfg.storage.root:
        cfg.storage.root = str(Path(cfg.storage.root).resolve())
    connect(cluster.address)
    require_resources({
        "CPU": ("cluster.cpus_per_worker", cluster.cpus_per_worker),
        "GPU": ("cluster.gpus_per_worker", cluster.gpus_per_worker),
    })  # fmt: skip
    use_gpu = cluster.gpus_per_worker > 0
    resources = {"CPU": cluster.cpus_per_worker, **({"GPU": cluster.gpus_per_worker} if use_gpu else {})}
    storage = Path(cluster.storage_path or Path(cfg.run_dir) / "ray")
    if "://" not in str(storage):
        storage = storage.resolve()
    # Ray Train workers write their own logs; the progress bar belongs to an interactive process.
    cfg.engine.progress = False
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cluster.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=_run_name(cfg),
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.engine.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}") from result.error
    return dict(result.metrics or {})
