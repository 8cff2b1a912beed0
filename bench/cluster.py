"""`renderloop run` submitted to a local Ray head: samples generated/s and consumed/s, backlog over
time, data-wait fraction, and start-up time (submission to first training step); with
``--kill-worker``, a Ray Train worker killed after the first checkpoint, and what the restart did.

    python -m bench.cluster                                   # CPU, tiny, one minute
    python -m bench.cluster --gpus 1 --producers-by-role synthetic=6,real=2 --resolution 64 --batch 64 \
        --samples-per-shard 256 --steps 3000 --out cluster-1gpu.json
    python -m bench.cluster --gpus 2 --workers 2 --producers-by-role synthetic=10,real=4 ... --out cluster-2gpu.json
    python -m bench.cluster --gpus 2 --workers 2 --kill-worker --checkpoint-every 500 ...   # restart from a checkpoint
    python -m bench.cluster --method aign/sfm --zero 2 ...    # another method's streams, ZeRO stage 2

The job is what a user submits (``ray job submit -- renderloop run method=simgan cluster=ray ...``);
this script samples the streams' ledgers and the trainer's log while it runs. Producers of all
streams share half of each GPU, the trainer workers the other half. ``--batch`` is the producers'
batch per stream, ``--trainer-batch`` the trainer's per rank and stream (default: the same).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench.reports import command_line
from renderloop.cluster.head import LocalRayHead
from renderloop.config import load_config
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage


def method_streams(method: str) -> tuple[str, tuple[str, ...]]:
    """A method config's stream prefix and data roles (its streams are ``<prefix>-<role>``)."""
    cfg = load_config("run", [f"method={method}"])
    return str(cfg.method.name), tuple(cfg.method.data)


def _entrypoint(args, counts: dict[str, int], root: Path, run_dir: Path) -> list[str]:
    gpu = args.gpus > 0
    # Rounded down: Ray places resources in units of 1e-4, and a share rounded up would leave the
    # trainer less than its half of the GPUs.
    producer_gpus = math.floor(0.5e4 * args.gpus / sum(counts.values())) / 1e4 if gpu else 0.0
    res, batch = args.resolution, args.batch
    simgan = args.method == "simgan"
    return [
        sys.executable,  # the `renderloop` command of this environment, wherever its scripts live
        "-m",
        "renderloop.cli",
        "run",
        f"method={args.method}",
        *(f"method.data.{role}.resolution={res}" for role in counts),
        *(f"method.data.{role}.batch_size={batch}" for role in counts),
        f"engine.data.batch_size={args.trainer_batch or batch}",
        *(["method.pretrain_refiner_steps=0", "method.pretrain_discriminator_steps=0"] if simgan else []),
        f"engine.max_steps={args.steps}",
        f"engine.zero_stage={args.zero}",
        "engine.log_every=1",  # the first row marks the first training step
        f"engine.checkpoint_every={args.checkpoint_every}",
        "engine.image_every=0",
        "engine.resume=false",
        *(["engine.data.read_receipts=true", "cluster.max_failures=1"] if args.kill_worker else []),
        "cluster=ray",
        f"cluster.producers_by_role={{{','.join(f'{r}:{n}' for r, n in counts.items())}}}",
        f"cluster.num_cpus_per_producer={args.producer_cpus}",
        f"cluster.num_gpus_per_producer={producer_gpus:.4f}",
        f"cluster.workers={args.workers}",
        f"cluster.cpus_per_worker={args.worker_cpus}",
        f"cluster.gpus_per_worker={0.5 * args.gpus / args.workers if gpu else 0.0:.4f}",
        f"device={'cuda' if gpu else 'cpu'}",
        f"storage.root={root}",
        f"run_dir={run_dir}",
        f"samples_per_shard={args.samples_per_shard}",
        f"max_backlog_shards={args.max_backlog}",
        *args.set,
    ]


def _producer_counts(args, roles: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(roles, args.producers)
    for item in filter(None, args.producers_by_role.split(",")):
        role, _, n = item.partition("=")
        if role not in counts:
            raise SystemExit(f"--producers-by-role: {args.method} has no role {role!r} (it has {', '.join(roles)})")
        counts[role] = int(n)
    return counts


def _log_rows(run_dir: Path, name: str = "train_log.jsonl") -> list[dict]:
    log = run_dir / name
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _sample(ledgers: dict[str, Ledger], run_dir: Path, start: float) -> dict:
    point = {"t": time.time() - start}
    for role, ledger in ledgers.items():
        entries = ledger.entries()
        point[f"{role}_generated"] = sum(e.count for e in entries)
        point[f"{role}_backlog"] = ledger.backlog()
    rows = _log_rows(run_dir)
    point["step"] = rows[-1]["step"] if rows else -1
    return point


def _rate(points: list[dict], key: str, t0: float, t1: float) -> float:
    inside = [p for p in points if t0 <= p["t"] <= t1]
    if len(inside) < 2:
        return 0.0
    return (inside[-1][key] - inside[0][key]) / (inside[-1]["t"] - inside[0]["t"])


class WorkerKiller:
    """Kills one Ray Train worker (SIGKILL) once Ray Train holds a checkpoint and two more steps
    are logged; ``poll`` is called from the sampling loop."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows_at_checkpoint: int | None = None
        self.killed: dict | None = None

    def poll(self, start: float) -> None:
        if self.killed is not None:
            return
        if self.rows_at_checkpoint is None:
            # Ray's controller lists the checkpoints it holds in its snapshot.
            snapshots = list(self.run_dir.rglob("checkpoint_manager_snapshot.json"))
            if snapshots and "checkpoint_" in snapshots[0].read_text():
                self.rows_at_checkpoint = len(_log_rows(self.run_dir))
            return
        rows = _log_rows(self.run_dir)
        if len(rows) < self.rows_at_checkpoint + 2:
            return
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                os.kill(proc.info["pid"], signal.SIGKILL)
                self.killed = {"pid": proc.info["pid"], "t": time.time() - start, "last_step": rows[-1]["step"]}
                return


def _mean_losses(rows: list[dict]) -> dict[str, float]:
    """Each phase's total loss (``loss/<phase>/loss``), averaged over ``rows``."""
    keys = sorted({k for row in rows for k in row if k.startswith("loss/") and k.endswith("/loss")})
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in keys}


def restart_report(run_dir: Path, ledgers: dict[str, Ledger], killed: dict | None) -> dict:
    """What a killed worker's restart did: the step it went back to, whether every step is logged
    once, the loss before the kill and after the restart, and the read receipts of each stream."""
    rows, replaced = _log_rows(run_dir), _log_rows(run_dir, "train_log.replaced.jsonl")
    resumed = min((r["step"] for r in replaced), default=None)
    around = {}
    if resumed is not None:
        around = {
            "loss_first_steps": _mean_losses(rows[:10]),
            "loss_before_checkpoint": _mean_losses(rows[max(resumed - 10, 0) : resumed]),
            "loss_after_restart": _mean_losses(rows[resumed : resumed + 10]),
        }
    reads = {role: ledger.reads() for role, ledger in ledgers.items()}
    return {
        "killed": killed,
        "resumed_from_step": resumed,
        "steps_redone": len(replaced),
        "every_step_logged_once": [r["step"] for r in rows] == list(range(len(rows))),
        **around,
        "shards_published": {role: len(ledger.entries()) for role, ledger in ledgers.items()},
        "shards_read": {role: sum(n for (_, epoch), n in r.items() if epoch == 0) for role, r in reads.items()},
        "shards_read_twice": {role: sorted(s for (s, epoch), n in r.items() if n > 1) for role, r in reads.items()},
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simgan", help="method config (its data roles become the streams)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the Ray head offers (0: CPU run)")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--worker-cpus", type=float, default=1.0)
    p.add_argument("--producers", type=int, default=1, help="producer actors per stream")
    p.add_argument("--producers-by-role", default="", help="e.g. synthetic=6,real=2 (overrides --producers)")
    p.add_argument("--producer-cpus", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="the producers' batch")
    p.add_argument("--trainer-batch", type=int, default=0, help="per rank and stream (0: --batch)")
    p.add_argument("--zero", type=int, default=0, help="ZeRO stage")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--kill-worker", action="store_true", help="kill a Ray Train worker after the first checkpoint")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--max-backlog", type=int, default=16)
    p.add_argument("--set", nargs="*", default=[], help="more overrides of the job")
    p.add_argument("--every", type=float, default=2.0, help="seconds between samples of the timeline")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default=None)
    return p


def run(args) -> dict:
    """Submit the job, follow it, and return its figures (and the restart's, with ``--kill-worker``)."""
    prefix, roles = method_streams(args.method)
    counts = _producer_counts(args, roles)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    root, run_dir = work / "data", work / "run"
    entry = _entrypoint(args, counts, root, run_dir)
    storage = Storage(str(root))
    ledgers = {role: Ledger(storage, f"{prefix}-{role}") for role in roles}
    killer = WorkerKiller(run_dir) if args.kill_worker else None
    points: list[dict] = []
    with LocalRayHead(num_cpus=args.cpus, num_gpus=args.gpus) as head:
        start = time.time()
        submitted = head.submit("--no-wait", "--submission-id", "bench", "--", *entry)
        if submitted.returncode:
            raise SystemExit(f"ray job submit failed:\n{submitted.stdout[-3000:]}{submitted.stderr[-3000:]}")
        status = "RUNNING"
        while time.time() - start < args.timeout:
            points.append(_sample(ledgers, run_dir, start))
            if killer:
                killer.poll(start)
            status = head.ray("job", "status", "bench").stdout
            if "succeeded" in status or "failed" in status or "stopped" in status:
                break
            time.sleep(args.every if not killer or killer.killed else min(args.every, 0.2))
        logs = head.ray("job", "logs", "bench").stdout
    if "succeeded" not in status:
        print(logs[-6000:])
        raise SystemExit(f"the job did not succeed: {status.strip()[-500:]}")
    rows = _log_rows(run_dir)
    first_step = rows[0]["time"] - start
    end = rows[-1]["time"] - start
    steady = [r for r in rows if r["time"] - start >= first_step + 0.2 * (end - first_step)]
    generated = {role: _rate(points, f"{role}_generated", first_step, end) for role in roles}
    first_shard = min(e.published_at for ledger in ledgers.values() for e in ledger.entries()) - start
    samples = sum(r["samples_per_s"] * r["step_seconds"] for r in steady)
    seconds = sum(r["step_seconds"] for r in steady)
    backlogs = [max(pt[f"{role}_backlog"] for role in roles) for pt in points if pt["t"] >= first_step]
    result = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command_line()),
        "args": vars(args),
        # as a user would type it: no interpreter path, the temporary folder as <work>
        "entrypoint": " ".join(["python", *entry[1:]]).replace(str(work), "<work>"),
        "startup_seconds": first_step,
        "first_shard_seconds": first_shard,
        "train_seconds": end - first_step,
        "steps": rows[-1]["step"] + 1,
        # samples_per_s is rank 0's; every rank reads as much
        "consumed_samples_per_s": args.workers * samples / seconds,
        "generated_samples_per_s": sum(generated.values()),
        "generated_samples_per_s_by_stream": generated,
        "data_wait_fraction": statistics.mean(r["data_wait_fraction"] for r in steady),
        "backlog_shards_max": max(backlogs, default=0),
        "backlog_shards_mean": statistics.mean(backlogs) if backlogs else 0.0,
        "max_backlog_shards": args.max_backlog,
        "timeline": points,
    }
    if killer:
        result["restart"] = restart_report(run_dir, ledgers, killer.killed)
    shutil.rmtree(work, ignore_errors=True)
    return result


def print_result(result: dict, args) -> None:
    roles = list(result["generated_samples_per_s_by_stream"])
    print(
        f"start-up {result['startup_seconds']:.1f} s (first shard {result['first_shard_seconds']:.1f} s), trained "
        f"{result['steps']} steps in {result['train_seconds']:.0f} s\n"
        f"generated {result['generated_samples_per_s']:.0f} samples/s, "
        f"consumed {result['consumed_samples_per_s']:.0f} samples/s, data-wait "
        f"{result['data_wait_fraction']:.1%}\nbacklog (max over streams) max {result['backlog_shards_max']}, mean "
        f"{result['backlog_shards_mean']:.1f} (bound {args.max_backlog})"
    )
    points = result["timeline"]
    print("t(s)  step  " + "  ".join(f"{r}_backlog" for r in roles))
    for pt in points[:: max(len(points) // 20, 1)]:
        print(f"{pt['t']:5.0f} {pt['step']:5d}  " + "  ".join(f"{pt[f'{r}_backlog']:>{len(r) + 8}d}" for r in roles))
    if "restart" in result:
        print("restart:", json.dumps(result["restart"], indent=1))


def main() -> None:
    args = parser().parse_args()
    result = run(args)
    print_result(result, args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
