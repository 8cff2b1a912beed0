"""Starting a trainer's process group: nothing to hang on, nothing listening."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil

from renderloop.cluster.launch import train_worker
from tests.trainers.helpers import debug_config, make_streams


def test_a_stale_extension_build_lock_does_not_hang_a_cpu_start(tmp_path):
    """A start killed while DeepSpeed built an op leaves a lock in the extensions cache; a later
    start must not wait for it (it waited forever when each start built the shared-memory op)."""
    cache = tmp_path / "extensions"
    for folder in ("deepspeed_shm_comm", "py311_cpu/deepspeed_shm_comm"):
        (cache / folder).mkdir(parents=True)
        (cache / folder / "lock").write_text("")
    code = textwrap.dedent("""
        from renderloop.trainers.distributed import init_distributed
        d = init_distributed("cpu")
        print("rank", d.rank, "of", d.world_size)
    """)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rank 0 of 1" in out.stdout


def test_a_local_trainer_listens_on_no_outside_address(tmp_path):
    """A one-process run keeps its process group's store in memory: no port on any interface but
    the loopback (gloo's own transport binds there)."""
    cfg = debug_config(tmp_path / "data", tmp_path / "run", "engine.max_steps=2", "engine.progress=true")
    make_streams(cfg)
    before = _listening()
    seen = []

    class Watch:
        def __call__(self) -> dict[str, str]:
            seen.append(_listening() - before)
            return {}

    train_worker(cfg, status=Watch())
    assert seen, "the progress bar's status never ran"
    outside = [(ip, port) for ports in seen for ip, port in ports if ip not in ("127.0.0.1", "::1")]
    assert not outside, f"the trainer listened on {outside}"


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN"}
