"""`ray job submit` against a real local Ray head (CPU, token auth on): a short `renderloop run`
succeeds, its logs are followed, and it leaves checkpoints and shards; a submitter without the
cluster's token is refused. Also: what goes to Ray is plain Python, not Hydra/OmegaConf objects."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from renderloop.cluster.head import LocalRayHead
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage
from tests.trainers.helpers import debug_config

REPO = Path(__file__).resolve().parents[2]


def _omegaconf_objects(obj, path="cfg") -> list[str]:
    if type(obj).__module__.startswith("omegaconf"):
        return [path]
    if dataclasses.is_dataclass(obj):
        fields = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
        return [p for name, value in fields for p in _omegaconf_objects(value, f"{path}.{name}")]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _omegaconf_objects(v, f"{path}.{k}")]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in _omegaconf_objects(v, f"{path}[{i}]")]
    return []


def test_the_config_sent_to_ray_is_plain_python(tmp_path):
    cfg = debug_config(tmp_path / "data", tmp_path / "run", "cluster=ray", "method.self_reg=0.25")
    assert _omegaconf_objects(cfg) == []
    assert isinstance(cfg.method_config.data, dict)


@pytest.mark.slow
def test_ray_job_submit_runs_renderloop_on_a_local_head(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    root, run_dir = tmp_path / "data", tmp_path / "run"
    runtime_env = {
        "excludes": [".whl", "tests", "bench", "docs"],
        "env_vars": {"OMP_NUM_THREADS": "1"},
    }
    entrypoint = [
        "renderloop",
        "run",
        "method=simgan_debug",
        "engine=debug",
        "engine.max_steps=6",
        "cluster=ray",
        "cluster.producers=1",
        "cluster.num_cpus_per_producer=0.25",
        "cluster.cpus_per_worker=0.25",
        "device=cpu",
        f"storage.root={root}",
        f"run_dir={run_dir}",
        "samples_per_shard=8",
    ]
    with LocalRayHead(num_cpus=2, token_path=str(token)) as head:
        submit = ["--submission-id", "renderloop-test", "--no-wait", "--working-dir", str(REPO)]
        submit += ["--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        submitted = head.submit(*submit)
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        logs = head.ray("job", "logs", "--follow", "renderloop-test")
        status = head.ray("job", "status", "renderloop-test")

        wrong_token = tmp_path / "wrong_token"
        wrong_token.write_text(secrets.token_hex(32))
        refused = head.submit("--", "echo", "hi", env={**head.env, "RAY_AUTH_TOKEN_PATH": str(wrong_token)})
        assert refused.returncode != 0 and "token authentication" in refused.stderr  # auth is on
    assert "Job 'renderloop-test' succeeded" in status.stdout, logs.stdout[-5000:] + status.stdout + status.stderr
    assert "done: step=5" in logs.stdout
    assert list((run_dir / "ray").rglob("checkpoint_*")), "no Ray Train checkpoint"
    assert (run_dir / "models" / "R.pt").exists()
    for role in ("synthetic", "real"):
        assert Ledger(Storage(str(root)), f"simgan-{role}").entries()


def test_a_head_stops_when_the_process_that_started_it_is_killed():
    code = (
        "import os, signal; from renderloop.cluster.head import LocalRayHead; "
        "head = LocalRayHead(num_cpus=1).start(); print(head.process.pid, head.temp_dir, flush=True); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    pid, temp_dir = done.stdout.split()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _processes_of(temp_dir, int(pid)):
        time.sleep(0.5)
    assert not _processes_of(temp_dir, int(pid)), "the head outlived the script that started it"


def _processes_of(temp_dir: str, pid: int) -> list[int]:
    """Live processes of a head: its `ray start` and whatever names its temporary folder."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if proc.info["pid"] == pid or temp_dir in " ".join(proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found
