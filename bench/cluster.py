"""`renderloop run` submitted to a local Ray head: samples generated/s and consumed/s, backlog over
time, data-wait fraction, and start-up time (submission to first training step).

    python -m bench.cluster                                   # CPU, tiny, one minute
    python -m bench.cluster --gpus 1 --producers-by-role synthetic=6,real=2 --resolution 64 --batch 64 \
        --samples-per-shard 256 --steps 3000 --out cluster-1gpu.json
    python -m bench.cluster --gpus 2 --workers 2 --producers-by-role synthetic=10,real=4 ... --out cluster-2gpu.json

The job is what a user submits (``ray job submit -- renderloop run method=simgan cluster=ray ...``);
this script samples the streams' ledgers and the trainer's log while it runs. Producers of both
streams share half of each GPU, the trainer workers the other half. ``--batch`` is both the
producers' and the trainer's batch per stream.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from renderloop.cluster.head import LocalRayHead
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage

ROLES = ("synthetic", "real")


def _entrypoint(args, root: Path, run_dir: Path) -> list[str]:
    gpu = args.gpus > 0
    counts = _producer_counts(args)
    # Rounded down: Ray places resources in units of 1e-4, and a share rounded up would leave the
    # trainer less than its half of the GPUs.
    producer_gpus = math.floor(0.5e4 * args.gpus / sum(counts.values())) / 1e4 if gpu else 0.0
    res, batch = args.resolution, args.batch
    return [
        sys.executable,  # the `renderloop` command of this environment, wherever its scripts live
        "-m",
        "renderloop.cli",
        "run",
        "method=simgan",
        *(f"method.data.{role}.resolution={res}" for role in ROLES),
        *(f"method.data.{role}.batch_size={batch}" for role in ROLES),
        f"engine.data.batch_size={batch}",
        "method.pretrain_refiner_steps=0",
        "method.pretrain_discriminator_steps=0",
        f"engine.max_steps={args.steps}",
        "engine.log_every=1",  # the first row marks the first training step
        "engine.checkpoint_every=1000",
        "engine.image_every=0",
        "engine.resume=false",
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
    ]


def _producer_counts(args) -> dict[str, int]:
    counts = dict.fromkeys(ROLES, args.producers)
    for item in filter(None, args.producers_by_role.split(",")):
        role, _, n = item.partition("=")
        counts[role] = int(n)
    return counts


def _log_rows(run_dir: Path) -> list[dict]:
    log = run_dir / "train_log.jsonl"
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=0, help="GPUs the Ray head offers (0: CPU run)")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--worker-cpus", type=float, default=1.0)
    p.add_argument("--producers", type=int, default=1, help="producer actors per stream")
    p.add_argument("--producers-by-role", default="", help="e.g. synthetic=6,real=2 (overrides --producers)")
    p.add_argument("--producer-cpus", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--max-backlog", type=int, default=16)
    p.add_argument("--every", type=float, default=2.0, help="seconds between samples of the timeline")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    root, run_dir = work / "data", work / "run"
    entry = _entrypoint(args, root, run_dir)
    storage = Storage(str(root))
    ledgers = {role: Ledger(storage, f"simgan-{role}") for role in ROLES}
    points: list[dict] = []
    with LocalRayHead(num_cpus=args.cpus, num_gpus=args.gpus) as head:
        start = time.time()
        submitted = head.submit("--no-wait", "--submission-id", "bench", "--", *entry)
        if submitted.returncode:
            raise SystemExit(f"ray job submit failed:\n{submitted.stdout[-3000:]}{submitted.stderr[-3000:]}")
        status = "RUNNING"
        while time.time() - start < args.timeout:
            points.append(_sample(ledgers, run_dir, start))
            status = head.ray("job", "status", "bench").stdout
            if "succeeded" in status or "failed" in status or "stopped" in status:
                break
            time.sleep(args.every)
        logs = head.ray("job", "logs", "bench").stdout
    if "succeeded" not in status:
        print(logs[-6000:])
        raise SystemExit(f"the job did not succeed: {status.strip()[-500:]}")
    rows = _log_rows(run_dir)
    first_step = rows[0]["time"] - start
    end = rows[-1]["time"] - start
    steady = [r for r in rows if r["time"] - start >= first_step + 0.2 * (end - first_step)]
    generated = {role: _rate(points, f"{role}_generated", first_step, end) for role in ROLES}
    first_shard = min(e.published_at for ledger in ledgers.values() for e in ledger.entries()) - start
    samples = sum(r["samples_per_s"] * r["step_seconds"] for r in steady)
    seconds = sum(r["step_seconds"] for r in steady)
    backlogs = [max(pt[f"{role}_backlog"] for role in ROLES) for pt in points if pt["t"] >= first_step]
    result = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.cluster " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "entrypoint": " ".join(entry),
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
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"start-up {first_step:.1f} s (first shard {first_shard:.1f} s), trained {result['steps']} steps in "
        f"{result['train_seconds']:.0f} s\ngenerated {result['generated_samples_per_s']:.0f} samples/s, "
        f"consumed {result['consumed_samples_per_s']:.0f} samples/s, data-wait {result['data_wait_fraction']:.1%}\n"
        f"backlog (max over streams) max {result['backlog_shards_max']}, mean {result['backlog_shards_mean']:.1f} "
        f"(bound {args.max_backlog})"
    )
    print("t(s)  step  " + "  ".join(f"{r}_backlog" for r in ROLES))
    for pt in points[:: max(len(points) // 20, 1)]:
        print(f"{pt['t']:5.0f} {pt['step']:5d}  " + "  ".join(f"{pt[f'{r}_backlog']:>{len(r) + 8}d}" for r in ROLES))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
