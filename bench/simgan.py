"""SimGAN's digit experiment over seeds, halves and ablations, with intervals.

    python -m bench.simgan --device cuda --out simgan.json                       # the paper's sizes
    python -m bench.simgan --seeds 0 1 2 --set method.channels=32 engine.max_steps=600   # CPU sizes
    python -m bench.simgan --device cuda --parallel 5 --halves 0                 # 5 runs share a GPU

Each run is ``renderloop run method=simgan_digits engine.seed=S method.data.real.half=H ...`` (live
producers, ``cluster=local``) then ``renderloop eval``: digit classifiers trained for the same
steps on synthetic, refined and real images, tested on the held-out real half (see
``trainers/simgan_digits.py``). Every variant trains for the same ``engine.max_steps`` (equal
steps). A row summarizes its runs (seeds × halves): the mean of each run's classifier errors and
its 95% t interval over runs, the share of the gap closed, and the real-vs-refined accuracy; each
ablation is compared with the paper's row (difference of means, Welch 95% interval). With
``--parallel``, runs share the device (training and evaluation are small on a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from bench.reports import command_line
from renderloop.stats import mean_ci95, welch_difference

VARIANTS = {
    "simgan": [],
    "lambda_0": ["method.self_reg=0.0"],
    "lambda_2": ["method.self_reg=2.0"],
    "no_history": ["method.history_size=0"],
    "global_d": ["method.discriminator=global"],
    "linear_output": ["method.output=linear"],
}
"""Rows: the paper's method, then one change each (its ablations: λ, history, local loss; and the
refiner's output without our tanh, as the paper has it)."""
METRICS = ("synthetic_error", "refined_error", "real_error", "gap_closed", "real_vs_refined_accuracy",
           "real_vs_synthetic_accuracy", "constant_error")  # fmt: skip
COMPARED = ("gap_closed", "refined_error", "real_vs_refined_accuracy")
"""Metrics on which each ablation is compared with the paper's row."""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "renderloop.cli", *args]


def one_run(variant: str, seed: int, half: int, args, work: Path) -> dict:
    """Train and evaluate one (variant, seed, half); its evaluation JSON plus wall times."""
    tag = f"{variant}-s{seed}-h{half}"
    done = work / f"{tag}.json"
    if done.exists():  # finished by an earlier call with the same --work
        return json.loads(done.read_text())
    common = [
        "method=simgan_digits", f"device={args.device}", f"engine.seed={seed}", f"method.data.real.half={half}",
        f"storage.root={work / tag / 'data'}", f"run_dir={work / tag / 'run'}", "engine.progress=false",
        *VARIANTS[variant], *args.set,
    ]  # fmt: skip
    times = {}
    for command in ("run", "eval"):
        start = time.monotonic()
        with open(work / f"{tag}-{command}.log", "w") as log:
            proc = subprocess.run(_cli(command, *common), stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode:
            log = work / f"{tag}-{command}.log"
            raise SystemExit(f"{tag}: renderloop {command} failed ({proc.returncode}); see {log}")
        times[f"{command}_seconds"] = time.monotonic() - start
    results = json.loads((work / tag / "run" / "eval" / "simgan_eval.json").read_text())
    run = {"variant": variant, "seed": seed, "half": half, **times, **results}
    done.write_text(json.dumps(run) + "\n")
    return run


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per variant: each metric's mean, 95% half-width over runs, and the run count."""
    rows = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        rows[variant] = {m: tuple(mean_ci95([r[m] for r in mine])) for m in METRICS}
        rows[variant]["minutes_per_run"] = sum(r["run_seconds"] for r in mine) / len(mine) / 60
    return rows


def compare(runs: list[dict], reference: str = "simgan") -> dict[str, dict]:
    """Per ablation and metric in ``COMPARED``: its mean minus the reference row's, with the
    Welch interval of that difference (rows at equal steps, so the comparison is fair)."""
    values = {v: [r for r in runs if r["variant"] == v] for v in dict.fromkeys(r["variant"] for r in runs)}
    if reference not in values:
        return {}
    return {
        variant: {m: welch_difference([r[m] for r in mine], [r[m] for r in values[reference]]) for m in COMPARED}
        for variant, mine in values.items()
        if variant != reference
    }


def _write_report(path: str, runs: list[dict]) -> None:
    """The JSON report of the runs so far: per-variant rows, comparisons, every run."""
    meta = {"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "argv": command_line()}
    report = {"meta": meta, "rows": summarize(runs), "comparisons": compare(runs), "runs": runs}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--halves", nargs="*", type=int, default=[0, 1], help="which real half the discriminator sees")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument(
        "--work",
        default="",
        help="streams, runs and logs (default: a temporary folder); called "
        "again with the same folder, finished runs are reused",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs sharing the device at once")
    p.add_argument("--out", default="")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-simgan-"))
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s, h) for v in args.variants for s in args.seeds for h in args.halves]
    runs = []
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for r in pool.map(lambda job: one_run(*job, args, work), jobs):
            runs.append(r)
            errors = " ".join(f"{n} {r[f'{n}_error']:.3f}" for n in ("synthetic", "refined", "real"))
            print(f"{r['variant']:>10} seed {r['seed']} half {r['half']}: {errors} "
                  f"gap closed {r['gap_closed']:+.2f}", flush=True)  # fmt: skip
            if args.out:  # the runs so far: a call cut short by a time limit still reports them
                _write_report(args.out, runs)
    rows = summarize(runs)
    print(f"\n{'variant':>10} {'runs':>4} " + " ".join(f"{m:>26}" for m in METRICS[:5]))
    for variant, row in rows.items():
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}".rjust(26) for m in METRICS[:5]]
        print(f"{variant:>10} {row[METRICS[0]][2]:>4} " + " ".join(cells))
    comparisons = compare(runs)
    for variant, metrics in comparisons.items():
        for m, d in metrics.items():
            verdict = "exceeds its interval" if d["exceeds_interval"] else "no measurable effect"
            print(f"{variant} − simgan, {m}: {d['difference']:+.3f} ± {d['ci95']:.3f} (95%, Welch): {verdict}")


if __name__ == "__main__":
    main()
