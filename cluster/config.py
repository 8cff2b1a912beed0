"""Where producers and trainers run (Hydra group ``cluster``)."""

from __future__ import annotations

from dataclasses import dataclass

from renderloop.config import ConfigError

__all__ = ["ClusterConfig"]


@dataclass
class ClusterConfig:
    mode: str = "local"
    """``local`` (threads of this process) or ``ray`` (actors on a Ray cluster)."""
    producers: int = 1
    """Producer count."""
    address: str | None = None
    """Ray address; None connects to ``RAY_ADDRESS`` or starts a local Ray."""
    num_cpus_per_producer: float = 1.0
    num_gpus_per_producer: float = 0.0
    """GPU fraction per producer actor (several producers can share a GPU)."""
    max_restarts: int = 3
    """Times Ray restarts a dead producer actor."""

    def __post_init__(self) -> None:
        if self.mode not in ("local", "ray"):
            raise ConfigError("cluster.mode", f"must be 'local' or 'ray'; got {self.mode!r}")
        if self.producers < 1:
            raise ConfigError("cluster.producers", f"must be >= 1; got {self.producers}")
        if self.num_gpus_per_producer < 0 or self.num_cpus_per_producer < 0 or self.max_restarts < 0:
            raise ConfigError("cluster", "resources per producer and max_restarts must be >= 0")
