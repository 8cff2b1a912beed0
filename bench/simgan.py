"""SimGAN's digit experiment over seeds, halves and ablations, with intervals.

    python -m bench.simgan --device cuda --out simgan.json                       # the paper's sizes
    python -m bench.simgan --seeds 0 1 2 --set method.channels=32 engine.max_steps=600   # CPU sizes

Each run is ``renderloop run method=simgan_digits engine.seed=S method.data.real.half=H ...`` (live
producers, ``cluster=local``) then ``renderloop eval``: digit classifiers trained for the same
steps on synthetic, refined and real images, tested on the held-out real half (see
``trainers/simgan_digits.py``). Every variant trains for the same ``engine.max_steps`` (equal
steps). A row summarizes its runs (seeds × halves): the mean of each run's classifier errors and
its 95% t interval over runs, the share of the gap closed, and the real-vs-refined accuracy.
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

from renderloop.stats import mean_ci95

VARIANTS = {
    "simgan": [],
    "lambda_0": ["method.self_reg=0.0"],
    "lambda_2": ["method.self_reg=2.0"],
    "no_history": ["method.history_size=0"],
    "global_d": ["method.discriminator=global"],
}
"""Rows: the paper's method, then one change each (its ablations: λ, history, local loss)."""
METRICS = ("synthetic_error", "refined_error", "real_error", "gap_closed", "real_vs_refined_accuracy",
           "real_vs_synthetic_accuracy", "constant_error")  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "renderloop.cli", *args]


def one_run(variant: str, seed: int, half: int, args, work: Path) -> dict:
    """Train and evaluate one (variant, seed, half); its evaluation JSON plus wall times."""
    tag = f"{variant}-s{seed}-h{half}"
    common = [
        "method=simgan_digits", f"device={args.device}", f"engine.seed={seed}", f"method.data.real.half={half}",
        f"storage.root={work / tag / 'data'}", f"run_dir={work / tag / 'run'}", "engine.progress=false",
        *VARIANTS[variant], *args.set,
    ]  # fmt: skip
    times = {}
    for command in ("run", "eval"):
        start = time.monotonic()
        with open(work / f"{tag}-{command}.log", "w") as log:
            done = subprocess.run(_cli(command, *common), stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode:
            log = work / f"{tag}-{command}.log"
            raise SystemExit(f"{tag}: renderloop {command} failed ({done.returncode}); see {log}")
        times[f"{command}_seconds"] = time.monotonic() - start
    results = json.loads((work / tag / "run" / "eval" / "simgan_eval.json").read_text())
    return {"variant": variant, "seed": seed, "half": half, **times, **results}


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per variant: each metric's mean, 95% half-width over runs, and the run count."""
    rows = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        rows[variant] = {m: tuple(mean_ci95([r[m] for r in mine])) for m in METRICS}
        rows[variant]["minutes_per_run"] = sum(r["run_seconds"] for r in mine) / len(mine) / 60
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--halves", nargs="*", type=int, default=[0, 1], help="which real half the discriminator sees")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--work", default="", help="folder for streams, runs and logs (default: a temporary one)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-simgan-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for variant in args.variants:
        for seed in args.seeds:
            for half in args.halves:
                runs.append(one_run(variant, seed, half, args, work))
                r = runs[-1]
                errors = " ".join(f"{n} {r[f'{n}_error']:.3f}" for n in ("synthetic", "refined", "real"))
                print(f"{variant:>10} seed {seed} half {half}: {errors} gap closed {r['gap_closed']:+.2f}", flush=True)
    rows = summarize(runs)
    print(f"\n{'variant':>10} {'runs':>4} " + " ".join(f"{m:>26}" for m in METRICS[:5]))
    for variant, row in rows.items():
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}".rjust(26) for m in METRICS[:5]]
        print(f"{variant:>10} {row[METRICS[0]][2]:>4} " + " ".join(cells))
    if args.out:
        meta = {"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "argv": sys.argv}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
