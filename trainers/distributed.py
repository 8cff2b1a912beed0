"""Process group, device, seeding and RNG state of one training process.

The same call serves every launch mode: ``local`` (no launcher: this process is rank 0 of 1),
``torchrun`` (ranks from the environment) and Ray Train (the process group already exists).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from renderloop.ports import free_port

__all__ = ["Dist", "init_distributed", "seed_everything", "rng_state", "set_rng_state"]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join (or create) the process group: NCCL on GPUs, gloo on CPU. Idempotent: the group lives
    as long as the process (DeepSpeed caches its groups), so trainers built one after another in
    one process share it."""
    import deepspeed

    alone = os.environ.get("WORLD_SIZE", "1") == "1" and "TORCHELASTIC_RUN_ID" not in os.environ
    if not dist.is_initialized() and alone:  # local mode: a group of one, on a port of its own (one
        # inherited from a parent process that trained in-process is still held by that parent)
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_PORT=str(free_port()))
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available here")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    deepspeed.init_distributed(dist_backend="nccl" if dev.type == "cuda" else "gloo", verbose=False)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from (Python, NumPy, torch CPU and CUDA), as plain values and
    tensors so checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
