"""Where producers and trainers run (Hydra group ``cluster``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from renderloop.config import ConfigError

__all__ = ["ClusterConfig", "MODES", "LOCAL_PRODUCERS"]

MODES = ("local", "torchrun", "ray")
LOCAL_PRODUCERS = ("auto", "threads", "processes", "pooled")


@dataclass
class ClusterConfig:
    mode: str = "local"
    """``local``: the producers run beside the trainer, which is this process (CPU or one GPU, no
    launcher). ``torchrun``: ``workers`` trainer processes per node under torchrun, producers
    beside the launching process. ``ray``: producers are Ray actors and the trainer runs under Ray
    Train (``TorchTrainer``)."""
    local_producers: str = "auto"
    """``local`` and ``torchrun`` modes: producers as ``threads`` of this process, as ``processes``
    of their own (spawned; their metrics reach this process's endpoint), or ``pooled``: one process
    for all of a run's producers, a thread each, so a GPU holds one producer context beside the
    trainer's; ``auto``: processes on a GPU, where a producer thread would slow the trainer's
    kernel launches."""
    producers: int = 1
    """Producers per stream."""
    producer_device: str = "auto"
    """Where sources run: ``auto`` (the run's device), ``cpu`` or a CUDA device; e.g. small
    simulator renders on CPU cores rather than as many small kernels on the trainer's GPU."""
    producer_threads: int = 0
    """Torch CPU threads of each producer process or actor (0: torch's default, one per core; on a
    machine shared by many producers, 1 avoids oversubscribing the cores). Producer threads share
    the trainer's process and its setting."""
    producers_by_role: dict[str, int] | None = None
    """``renderloop run``: producers for the named data roles instead of ``producers`` (a method
    may read one stream faster than another, e.g. ``{synthetic: 6, real: 2}`` for SimGAN)."""
    address: str | None = None
    """Ray address; None connects to ``RAY_ADDRESS`` or starts a local Ray."""
    num_cpus_per_producer: float = 1.0
    num_gpus_per_producer: float = 0.0
    """GPU fraction per producer actor (several producers can share a GPU)."""
    max_restarts: int = 3
    """Times Ray restarts a dead producer actor."""
    workers: int = 1
    """Trainer processes: torchrun's processes per node, or Ray Train's workers."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    """Ray Train: GPUs per trainer worker (0 trains on CPU with gloo)."""
    max_failures: int = 0
    """Ray Train: restarts of the worker group after a failure, each from the last checkpoint (-1: no limit)."""
    storage_path: str | None = None
    """Ray Train: where Ray keeps the run's checkpoints (shared storage on a multi-node cluster);
    None uses ``<run_dir>/ray``."""
    nnodes: int = 1
    """torchrun: nodes; more than one needs ``rdzv_endpoint``."""
    rdzv_endpoint: str | None = None

    def producer_processes(self, device_type: str) -> bool:
        """Whether local producers run as processes on a device of ``device_type``."""
        auto_processes = self.local_producers == "auto" and device_type == "cuda"
        return self.local_producers in ("processes", "pooled") or auto_processes

    def source_device(self, run_device: str) -> str:
        """The device producers run their sources on, for a run on ``run_device``."""
        return run_device if self.producer_device == "auto" else self.producer_device

    def check_devices(self, run_device: str) -> None:
        """Refuse a run device or producer device this machine lacks, before anything starts: in
        ``local`` and ``torchrun`` modes both are this machine's (Ray places its actors and
        workers itself, and its resources are checked against the cluster's)."""
        from renderloop.devices import resolve_device

        if self.mode != "ray":
            resolve_device(run_device, "device")
            if self.producer_device != "auto":
                resolve_device(self.producer_device, "cluster.producer_device")

    def producers_for(self, role: str) -> int:
        """Producers for the stream of data role ``role``."""
        return (self.producers_by_role or {}).get(role, self.producers)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("cluster.mode", f"must be one of {MODES}; got {self.mode!r}")
        if self.local_producers not in LOCAL_PRODUCERS:
            choices = f"must be one of {LOCAL_PRODUCERS}; got {self.local_producers!r}"
            raise ConfigError("cluster.local_producers", choices)
        if self.producers < 1:
            raise ConfigError("cluster.producers", f"must be >= 1; got {self.producers}")
        if self.producer_device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", self.producer_device):
            raise ConfigError("cluster.producer_device", f"must be auto, cpu or cuda[:N]; got {self.producer_device!r}")
        if self.producer_threads < 0:
            raise ConfigError("cluster.producer_threads", f"must be >= 0; got {self.producer_threads}")
        for role, count in (self.producers_by_role or {}).items():
            if count < 1:
                raise ConfigError(f"cluster.producers_by_role.{role}", f"must be >= 1; got {count}")
        for key in ("num_cpus_per_producer", "num_gpus_per_producer", "cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):  # nan passes a bare >= 0 test
                raise ConfigError(f"cluster.{key}", f"must be a finite number >= 0; got {value}")
        if self.max_restarts < 0:
            raise ConfigError("cluster.max_restarts", f"must be >= 0; got {self.max_restarts}")
        if self.workers < 1:
            raise ConfigError("cluster.workers", f"must be >= 1; got {self.workers}")
        if self.max_failures < -1:
            raise ConfigError("cluster.max_failures", f"must be >= -1; got {self.max_failures}")
        if self.nnodes < 1:
            raise ConfigError("cluster.nnodes", f"must be >= 1; got {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            msg = f"torchrun over {self.nnodes} nodes needs a rendezvous endpoint; got {self.rdzv_endpoint!r}"
            raise ConfigError("cluster.rdzv_endpoint", msg)
