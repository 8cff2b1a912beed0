"""torchrun launch: re-run the same ``renderloop`` command in ``cluster.workers`` processes per node.

Each child sees ``TORCHELASTIC_RUN_ID`` and trains as one rank. Users may also call torchrun
themselves: ``torchrun --nproc_per_node 8 -m renderloop.cli train cluster=torchrun ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .config import ClusterConfig

__all__ = ["in_torchrun_worker", "launch", "torchrun_command"]


def in_torchrun_worker() -> bool:
    """Whether this process is a rank that torchrun started (it trains; its parent launched it)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def torchrun_command(command: str, overrides: list[str], cluster: ClusterConfig) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cluster.workers}"]
    if cluster.nnodes == 1:
        args.append("--standalone")
    else:
        args += [f"--nnodes={cluster.nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={cluster.rdzv_endpoint}"]
    return [*args, "-m", "renderloop.cli", command, *overrides]


def launch(command: str, overrides: list[str], cluster: ClusterConfig) -> None:
    """Run the torchrun group to completion; raise if any rank failed."""
    result = subprocess.run(torchrun_command(command, overrides, cluster), check=False)
    if result.returncode:
        raise RuntimeError(f"torchrun: the trainer processes failed (exit {result.returncode})")
