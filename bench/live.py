"""Live data at trainer speed: ``renderloop run`` with a method's defaults, against the same trainer
on the shards it left behind (closed, so the reader repeats them and never waits for producers).

    python -m bench.live --device cuda --steps 2500 --out live.json
    python -m bench.live --records sample chunk --set cluster.producers=2   # both shard formats

Each row is one command of the installed package (``python -m renderloop.cli``), so what is
measured is what a user gets. Throughput and data-wait are read from the run's
``train_log.jsonl`` after ``--warmup`` steps: samples/s is the mean over the logged windows,
data-wait the mean share of step time spent waiting.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.reports import command_line


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "renderloop.cli", *args]


def _summary(run_dir: Path, warmup: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= warmup]
    if not rows:
        raise SystemExit(f"{run_dir}: no logged step past the warm-up; raise --steps")
    keys = [k for k in rows[0] if k in ("samples_per_s", "data_wait_fraction") or k.startswith("data/")]
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in keys}
    return {
        "steps_measured": rows[-1]["step"] + 1 - warmup,
        "samples_per_s": mean["samples_per_s"],
        "data_wait_fraction": mean["data_wait_fraction"],
        **{key: mean[key] for key in keys if key.startswith("data/")},  # the producers' side
    }


def _run(command: list[str], log: Path) -> float:
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return time.monotonic() - start


def measure(args, record: str | None, work: Path) -> list[dict]:
    """One live run, then the trainer alone on the streams it published."""
    tag = record or "default"
    root, common = work / f"data-{tag}", [f"method={args.method}", f"device={args.device}", "engine.progress=false"]
    common += [f"engine.max_steps={args.steps}", "engine.log_every=50", "engine.checkpoint_every=0", *args.set]
    if record:
        common.append(f"storage.record={record}")
    live_dir, again_dir = work / f"run-{tag}", work / f"pregenerated-{tag}"
    live = ["run", *common, f"storage.root={root}", f"run_dir={live_dir}", "engine.data.delete_consumed=false"]
    seconds = _run(_command(*live), work / f"{tag}-run.log")
    rows = [{"record": tag, "mode": "live (renderloop run)", "seconds": seconds, **_summary(live_dir, args.warmup)}]
    from renderloop.datasets.ledger import Ledger
    from renderloop.datasets.storage import Storage

    storage = Storage(str(root))
    shards = [e for stream in storage.list("") if storage.exists(f"{stream}/ledger")
              for e in Ledger(storage, stream).entries()]  # fmt: skip
    rows[0]["bytes_per_sample"] = sum(e.bytes for e in shards) / max(sum(e.count for e in shards), 1)
    for stream in storage.list(""):
        if storage.exists(f"{stream}/ledger"):
            Ledger(storage, stream).close()  # the trainer alone: the reader repeats, never waits
    if args.live_only:
        return rows
    again = ["train", *common, f"storage.root={root}", f"run_dir={again_dir}", "metrics_port=-1"]
    again_seconds = _run(_command(*again), work / f"{tag}-train.log")
    return [*rows, {"record": tag, "mode": "pre-generated (renderloop train)", "seconds": again_seconds,
                    **_summary(again_dir, args.warmup)}]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="simgan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=100, help="steps left out of the means")
    p.add_argument("--records", nargs="*", default=[], help="shard record formats to compare (none: the default)")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every command")
    p.add_argument("--live-only", action="store_true", help="skip the pre-generated run (compare with another row)")
    p.add_argument("--work", default="", help="folder for streams and runs (default: a temporary one)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-live-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [row for record in (args.records or [None]) for row in measure(args, record, work)]
    print(f"{'record':>8} {'mode':>34} {'samples/s':>10} {'data-wait':>10} {'kB/sample':>10} {'steps':>6} "
          f"{'generated/s':>11} {'backlog':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['record']:>8} {r['mode']:>34} {r['samples_per_s']:>10.0f} {r['data_wait_fraction']:>10.1%} "
              f"{r.get('bytes_per_sample', 0) / 1e3:>10.1f} {r['steps_measured']:>6} "
              f"{r.get('data/generated_per_s', 0):>11.0f} {r.get('data/backlog', 0):>8.1f}")  # fmt: skip
    if args.out:
        meta = {"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "argv": command_line()}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
