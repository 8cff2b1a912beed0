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

__all__ = ["Dist", "from_main", "init_distributed", "is_main_rank", "seed_everything", "rng_state", "set_rng_state"]


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


def is_main_rank() -> bool:
    """Whether this process is rank 0 of its group (or in none), for code the engine's ``Dist`` does not reach."""
    return not dist.is_initialized() or dist.get_rank() == 0


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of the process group (a collective: every rank must call
    it), for work that must happen once per job, not once per process; outside a group, ``value``."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_distributed(device: str = "auto") -> Dist:
    """Join (or create) the process group: NCCL on GPUs, gloo on CPU. Idempotent: the group lives
    as long as the process (DeepSpeed caches its groups), so trainers built one after another in
    one process share it. A process alone (local mode) makes a group of one with an in-process store."""
    import deepspeed

    alone = os.environ.get("WORLD_SIZE", "1") == "1" and "TORCHELASTIC_RUN_ID" not in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available here")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cpu":
        _skip_shared_memory_allreduce()
    if not dist.is_initialized() and alone:
        # A group of one needs no network: its key-value store lives in this process, so nothing
        # listens on a port (torch's TCP store would bind every interface, unauthenticated).
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def _skip_shared_memory_allreduce() -> None:
    """Keep DeepSpeed from building its shared-memory all-reduce op when a CPU process group starts.

    It compiles that op into the machine's shared torch-extensions cache at every start, under a
    lock file; a start killed while holding it leaves the file, and every later start on the
    machine then waits forever. CPU groups (debug runs, tests) all-reduce through gloo instead.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


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
