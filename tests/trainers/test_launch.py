"""Launch modes on CPU: `renderloop run` with live local producers, then `eval`; torchrun with two
gloo processes; Ray Train with two workers, including a restart from the last checkpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from bench.cluster import WorkerKiller
from renderloop.cli import main
from renderloop.cluster.launch import train
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage
from tests.trainers.helpers import debug_config, make_streams

DEBUG = ["method=simgan_debug", "engine=debug", "samples_per_shard=8", "device=cpu"]


def test_run_streams_from_live_producers_then_eval(tmp_path, capsys):
    root, run_dir = tmp_path / "data", tmp_path / "run"
    args = [*DEBUG, f"storage.root={root}", f"run_dir={run_dir}", "max_backlog_shards=4"]
    assert main(["run", *args]) == 0
    assert "metrics on http://127.0.0.1:" in capsys.readouterr().out  # the debug run's endpoint
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step00000004"
    storage = Storage(str(root))
    for role in ("synthetic", "real"):
        ledger = Ledger(storage, f"simgan-{role}")
        assert ledger.entries() and not ledger.closed  # published live; left open for the next run
        assert ledger.consumed() >= 1  # the trainer's reader recorded what it read
        # Shards still unread (read ones are deleted) hold SimGAN's fields only, as chunks; test_local checks the spec.
        for name in [n for n in storage.list(ledger.rel("shards")) if n.endswith(".tar")]:
            with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(ledger.rel("shards", name)))) as tar:
                assert {m.name.split(".", 1)[1] for m in tar.getmembers()} == {"chunk.json", "rgb.npy", "meta.json"}
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]

    assert main(["eval", *args]) == 0
    out = capsys.readouterr().out
    results = json.loads((run_dir / "eval" / "simgan_eval.json").read_text())
    for name in ("synthetic", "refined", "real"):
        assert 0 <= results[f"{name}_mean_error_deg"] <= 180
        assert f"{name}_mean_error_deg" in out
    assert (run_dir / "eval" / "simgan_eval.png").stat().st_size > 0


def test_a_group_of_one_takes_its_own_port_not_an_inherited_one_in_use():
    """A run started from a process that trained in-process inherits its RANK and MASTER_PORT."""
    script = (
        "import os, socket\n"
        "held = socket.socket(); held.bind(('127.0.0.1', 0)); held.listen()\n"
        "os.environ.update(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(held.getsockname()[1]))\n"
        "from renderloop.trainers.distributed import init_distributed\n"
        "assert init_distributed('cpu').world_size == 1\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_refuses_a_missing_stream(tmp_path, capsys):
    args = [*DEBUG, f"storage.root={tmp_path}", f"run_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 2
    assert "does not exist" in capsys.readouterr().err


def _client_files(run_dir):
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return sorted(p.name for p in (run_dir / "checkpoints" / latest).glob("client-rank*.pt"))


def test_torchrun_two_gloo_processes_train_and_checkpoint(tmp_path):
    cfg = debug_config(tmp_path / "data", tmp_path / "run")
    make_streams(cfg)
    args = [*DEBUG, f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "engine.max_steps=3"]
    assert main(["train", *args, "cluster=torchrun", "cluster.workers=2"]) == 0
    assert _client_files(tmp_path / "run") == ["client-rank0.pt", "client-rank1.pt"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (tmp_path / "run" / "models" / "R.pt").exists()


def _log_rows(run_dir) -> list[dict]:
    log = run_dir / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _kill_a_train_worker_after_a_checkpoint(run_dir, done: threading.Event) -> list[int]:
    """SIGKILL a Ray Train worker two logged steps after Ray registered a checkpoint (the cluster
    bench's killer), so some steps after that checkpoint are logged twice: before the kill and
    again after the restore."""
    killer = WorkerKiller(run_dir)
    deadline = time.monotonic() + 240
    while not done.is_set() and time.monotonic() < deadline and killer.killed is None:
        killer.poll(time.time())
        time.sleep(0.05)
    return [killer.killed["pid"]] if killer.killed else []


def test_ray_train_two_workers_restore_after_a_worker_is_killed(tmp_path):
    import ray

    run_dir = tmp_path / "run"
    cfg = debug_config(
        tmp_path / "data",
        run_dir,
        "cluster=ray",
        "cluster.workers=2",
        "cluster.cpus_per_worker=0.5",
        "cluster.max_failures=1",
        "engine.max_steps=30",
        "engine.checkpoint_every=10",
        "engine.resume=false",  # a fresh start; a restart after a failure still restores this run's checkpoint
    )
    make_streams(cfg)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    done = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(_kill_a_train_worker_after_a_checkpoint(run_dir, done)))
    killer.start()
    try:
        summary = train(cfg, [], command="train")
    finally:
        done.set()
        killer.join()
        ray.shutdown()
    assert killed, "no Ray Train worker was found to kill"
    assert summary["checkpoint_step"] == 30
    rows = _log_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(30))  # each step once: redone steps replace their first run
    replaced = [json.loads(line) for line in (run_dir / "train_log.replaced.jsonl").read_text().splitlines()]
    assert replaced and replaced[0]["step"] in (10, 20), replaced  # back to a checkpoint
    for row in replaced:  # steps run before the kill and again after it give the same losses
        losses = {k: v for k, v in row.items() if k.startswith("loss/")}
        assert losses and losses == pytest.approx({k: rows[row["step"]][k] for k in losses}, rel=1e-5)
    assert (run_dir / "models" / "R.pt").exists()


def test_the_ray_store_removes_its_local_copy_once_restored(monkeypatch):
    """Each restart copies the newest checkpoint out of Ray's storage; the copy goes after the restore."""
    import ray.train

    from renderloop.cluster.ray_train import RayCheckpointStore

    class Saved:
        def to_directory(self, path: str) -> str:
            (Path(path) / "client-rank0.pt").write_bytes(b"")
            return path

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Saved())
    store = RayCheckpointStore(dist=None)
    restored = store.latest()
    assert (restored / "client-rank0.pt").exists()
    store.release(restored)
    assert not restored.exists()
