"""AIGN experiments: every task and the paper's ablations, trained on live streams, then evaluated.

    python -m bench.aign --device cuda --out aign.json                # the whole matrix, 4 runs at a time
    python -m bench.aign --only pose_both pose_reconstruction --steps-scale 0.1   # a quick subset
    python -m bench.aign --only sfm_both --set method.sfm.trim=0.0               # a variant
    python -m bench.aign --budget time --max-minutes 8 --seeds 5      # equal wall time, five seeds

Each experiment is ``renderloop run method=aign/<task> ...`` (producers beside the trainer,
``cluster=local``; on a GPU as single-threaded processes, see ``_producers``) followed by
``renderloop eval``, once per training seed (``--seeds``, ``engine.seed`` 0, 1, ...: initial
weights and the streams' draws; the test samples stay the same); up to ``--parallel`` runs share
the device. Rows compared with each other (``COMPARISONS``) get the same budget: ``--budget steps``
(default) trains every run of a task for the same steps (``--max-minutes`` then only caps a run,
and a row it cut short is reported as unequal), ``--budget time`` for the same ``--max-minutes``
of wall time, however many steps that is. Per metric, the JSON and the printout give the mean over
seeds, the standard deviation and the 95% interval of the mean (Student's t), beside the trivial
baselines that the evaluation computes on the same test samples; each comparison gives the
difference of means, its 95% interval (Welch) and whether the difference exceeds it.

The JSON holds each run's evaluation and its time, steps, wall time, trainer samples/s and loss
curve (mean of the reconstruction per tenth of the run). ``--work DIR`` keeps the runs, so the
same command again trains each for another ``--max-minutes`` from its last checkpoint (runs
longer than one session or job allows); ``--figures DIR`` copies the evaluation figures there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from renderloop.stats import t975, welch_difference

RECONSTRUCTION = "method.loss=reconstruction"
BIASED = "method.data.memory.classes=[5,7,9]"  # footwear: sandal, sneaker, ankle boot
FOOTWEAR_SHARE = "method.evaluation.attribute_classes=[5,7,9]"  # measured in every Fashion-MNIST run
IMAGE_BATCH = ["engine.data.batch_size=64", "method.data.input.batch_size=64", "method.data.memory.batch_size=64",
               "engine.data.num_workers=2"]  # fmt: skip
IMAGES = [*IMAGE_BATCH, FOOTWEAR_SHARE]
# Pose samples are tiny: making and reading shards (not the model) bounds a run, so pose takes
# smaller batches (more updates per sample) and more loader workers.
POSE = ["engine.data.batch_size=128", "method.data.input.batch_size=128", "method.data.memory.batch_size=128",
        "engine.data.num_workers=3"]  # fmt: skip
SFM = ["engine.data.batch_size=32", "method.data.input.batch_size=32", "method.data.memory.batch_size=32",
       "engine.data.num_workers=2"]  # fmt: skip

# name → (method, steps, overrides); the step limits are for --steps-scale 1 (BENCHMARKS.md ran
# time-limited runs with larger scales).
EXPERIMENTS: dict[str, tuple[str, int, list[str]]] = {
    "pose_both": ("aign/pose", 4000, POSE),
    "pose_reconstruction": ("aign/pose", 4000, [*POSE, RECONSTRUCTION]),
    "pose_adversarial": ("aign/pose", 4000, [*POSE, "method.loss=adversarial"]),
    "sfm_both": ("aign/sfm", 3000, SFM),
    "sfm_reconstruction": ("aign/sfm", 3000, [*SFM, RECONSTRUCTION]),
    "superres_both": ("aign/superres", 2500, IMAGES),
    "superres_reconstruction": ("aign/superres", 2500, [*IMAGES, RECONSTRUCTION]),
    "superres_biased": ("aign/superres", 2500, [*IMAGES, BIASED]),
    "inpaint_both": ("aign/inpaint", 2500, IMAGES),
    "inpaint_reconstruction": ("aign/inpaint", 2500, [*IMAGES, RECONSTRUCTION]),
    "inpaint_biased": ("aign/inpaint", 2500, [*IMAGES, BIASED]),
    "superres_simulator_both": ("aign/superres_simulator", 2500, IMAGE_BATCH),
    "superres_simulator_reconstruction": ("aign/superres_simulator", 2500, [*IMAGE_BATCH, RECONSTRUCTION]),
    "inpaint_simulator_both": ("aign/inpaint_simulator", 2500, IMAGE_BATCH),
    "inpaint_simulator_reconstruction": ("aign/inpaint_simulator", 2500, [*IMAGE_BATCH, RECONSTRUCTION]),
}


# (row, the row it is compared with, metrics): each row is an ablation of its reference, trained
# with the same budget; "biased" rows test the paper's claim that the memory pulls the outputs
# towards its classes.
POSE_METRICS = ["pa_mpjpe_mm", "mpjpe_mm", "performer/pa_mpjpe_mm", "performer/mpjpe_mm"]
COMPARISONS: list[tuple[str, str, list[str]]] = [
    ("pose_both", "pose_reconstruction", POSE_METRICS),
    ("pose_both", "pose_adversarial", POSE_METRICS),
    ("sfm_both", "sfm_reconstruction", ["abs_rel", "abs_rel_object", "side", "rotation_deg",
                                        "translation_direction_deg"]),
    ("superres_both", "superres_reconstruction", ["psnr_db"]),
    ("superres_biased", "superres_both", ["attribute_share_outputs", "psnr_db"]),
    ("inpaint_both", "inpaint_reconstruction", ["psnr_box_db", "psnr_db"]),
    ("inpaint_biased", "inpaint_both", ["attribute_share_outputs", "psnr_box_db"]),
    ("superres_simulator_both", "superres_simulator_reconstruction", ["psnr_db"]),
    ("inpaint_simulator_both", "inpaint_simulator_reconstruction", ["psnr_box_db", "psnr_db"]),
]  # fmt: skip
UNLIMITED_STEPS = 10**9  # --budget time: the clock ends every run (the default learning rate is constant)

INPUT_SHARE = {"aign/sfm": 2 / 3}  # of a run's producers, for its input stream (default: half)
# simulator sources: even at 64² a producer makes 5-7x the views on the GPU
RENDERED = {"aign/sfm", "aign/superres_simulator", "aign/inpaint_simulator"}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "renderloop.cli", *args]


def _curve(run_dir: Path, parts: int = 10) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    values = [r["loss/G_main/reconstruction"] for r in rows if "loss/G_main/reconstruction" in r]
    size = max(len(values) // parts, 1)
    return [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)][:parts]


def _producers(method: str, args) -> list[str]:
    """On a GPU the sources (simulator renders, BVH poses, image folders) run as single-threaded
    processes on ``--producer-device``, as many as each of ``--parallel`` runs has cores left (of
    ``--cores``) beside its trainer and loader, split between its two streams by what a step reads
    from each (SfM: two frames per memory depth map). ``--producer-device auto`` keeps simulator
    sources on the GPU and puts the others (BVH poses, image folders) on host cores."""
    if not args.device.startswith("cuda"):
        return []
    per_run = max(2, (args.cores or os.cpu_count() or 1) // args.parallel - 2)
    inputs = min(max(1, round(per_run * INPUT_SHARE.get(method, 0.5))), per_run - 1)
    device = args.producer_device
    if device == "auto":
        device = args.device if method in RENDERED else "cpu"
    return [
        f"cluster.producer_device={device}", "cluster.producer_threads=1",
        f"cluster.producers_by_role={{input:{inputs},memory:{per_run - inputs}}}",
    ]  # fmt: skip


def _steps(name: str, args) -> int:
    return max(int(EXPERIMENTS[name][1] * args.steps_scale), 20)


def _train_args(name: str, seed: int, args, run_dir: Path, data: Path) -> list[str]:
    """``renderloop run`` arguments of one run: the experiment's settings, its seed and its budget."""
    method, _, overrides = EXPERIMENTS[name]
    steps = _steps(name, args) if args.budget == "steps" else UNLIMITED_STEPS
    return [
        "run", f"method={method}", f"run_dir={run_dir}", f"device={args.device}", *overrides,
        f"engine.seed={seed}", f"engine.max_steps={steps}", f"engine.max_minutes={args.max_minutes}",
        f"storage.root={data}", "engine.log_every=20", "engine.progress=false", "engine.tensorboard=false",
        "engine.image_every=0", "engine.checkpoint_every=0", "samples_per_shard=256", "metrics_port=-1",
        *_producers(method, args), *args.set,
    ]  # fmt: skip


def _experiment(name: str, seed: int, args, work: Path) -> dict:
    """Train and evaluate one seed of one experiment; its result, or ``{"error": ...}``."""
    method, _, overrides = EXPERIMENTS[name]
    run_dir, data = work / name / f"seed{seed}" / "run", work / name / f"seed{seed}" / "data"
    # the settings `renderloop eval` needs; the bench's --set last, so they win there too
    common = [f"method={method}", f"run_dir={run_dir}", f"device={args.device}", *overrides, *args.set]
    start = time.time()
    trained = subprocess.run(_command(*_train_args(name, seed, args, run_dir, data)), capture_output=True, text=True)
    wall = time.time() - start
    earlier = run_dir.parent / "train_seconds"  # of earlier calls, with --work
    earlier.parent.mkdir(parents=True, exist_ok=True)
    wall += float(earlier.read_text()) if earlier.is_file() else 0.0
    earlier.write_text(f"{wall}\n")
    if trained.returncode:
        return {"seed": seed, "error": (trained.stdout + trained.stderr)[-3000:]}
    start = time.time()
    evaluated = subprocess.run(_command("eval", *common), capture_output=True, text=True)
    eval_wall = time.time() - start
    if evaluated.returncode:
        return {"seed": seed, "error": (evaluated.stdout + evaluated.stderr)[-3000:]}
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 5 :]
    result = {
        "method": method,
        "seed": seed,
        "overrides": [*overrides, *args.set],
        "steps": int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step")),
        "max_steps": _steps(name, args) if args.budget == "steps" else None,
        "train_wall_seconds": wall,
        "eval_seconds": eval_wall,  # Fashion-MNIST runs: with the footwear classifier's training, if not cached
        "samples_per_s": sum(r["samples_per_s"] for r in steady) / max(len(steady), 1),
        "data_wait_fraction": sum(r["data_wait_fraction"] for r in steady) / max(len(steady), 1),
        "reconstruction_curve": _curve(run_dir),
        "eval": json.loads((run_dir / "eval" / "results.json").read_text()),
    }
    if args.figures:
        for png in (run_dir / "eval").glob("*.png"):
            shutil.copy(png, Path(args.figures) / f"{name}-seed{seed}-{png.stem}.png")
    print(f"{name} seed {seed}: {json.dumps(result['eval'])} ({result['steps']} steps, {wall:.0f} s)", flush=True)
    if args.out:  # as each finishes, so a run cut short keeps what it measured
        Path(f"{args.out}.{name}.seed{seed}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def is_baseline(key: str) -> bool:
    """Whether an evaluation key measures something other than the trained model (a trivial
    baseline, the test set's distance to the training set, a count): the same for every seed."""
    name = key.rsplit("/", 1)[-1]
    prefixes = ("baseline_", "attribute_share_baseline", "nearest_train_", "train_overlap_", "true_")
    return name.startswith(prefixes) or name in (
        "samples", "attribute_share_truth", "classifier_test_accuracy",
    )  # fmt: skip


def summary(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the half-width of the mean's 95% t interval (nan below
    two values)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci95": t975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan, "n": n}


def aggregate(runs: list[dict]) -> dict:
    """Per evaluation key over the runs that finished: the model's metrics summarised over seeds,
    the baselines' values (identical across seeds) kept as they are."""
    done = [r for r in runs if "error" not in r]
    if not done:
        return {"metrics": {}, "baselines": {}, "seeds": 0}
    keys = [k for k in done[0]["eval"] if all(k in r["eval"] for r in done)]
    return {
        "metrics": {k: summary([r["eval"][k] for r in done]) for k in keys if not is_baseline(k)},
        "baselines": {k: done[0]["eval"][k] for k in keys if is_baseline(k)},
        "seeds": len(done),
        "steps": [r["steps"] for r in done],
    }


def budget_check(name: str, runs: list[dict], args) -> dict:
    """The budget each seed of ``name`` trained under, and whether it is the one its comparisons
    assume: with ``steps``, every run reached the same step count (a ``--max-minutes`` cap may
    cut a run short); with ``time``, every run trained ``--max-minutes``."""
    steps = [r["steps"] for r in runs if "error" not in r]
    if args.budget == "steps":
        target = _steps(name, args)
        equal = bool(steps) and all(s == target for s in steps)
        note = f"{target} steps each" + ("" if equal else f"; trained {steps} (cut short by --max-minutes)")
    else:
        equal = bool(steps)
        note = f"{args.max_minutes:g} minutes of wall time each (steps {steps})"
    return {"kind": args.budget, "equal": equal, "note": note}


def compare(experiments: dict[str, dict]) -> list[dict]:
    """Each comparison whose two rows ran: per metric, the difference of means and its interval."""
    out = []
    for row, reference, metrics in COMPARISONS:
        if row not in experiments or reference not in experiments:
            continue
        a, b = experiments[row], experiments[reference]
        runs_a = [r for r in a["runs"] if "error" not in r]
        runs_b = [r for r in b["runs"] if "error" not in r]
        fair = a["budget"]["equal"] and b["budget"]["equal"]
        for metric in metrics:
            if runs_a and runs_b and all(metric in r["eval"] for r in runs_a + runs_b):
                values = [[r["eval"][metric] for r in runs] for runs in (runs_a, runs_b)]
                out.append({"row": row, "reference": reference, "metric": metric, "equal_budget": fair,
                            **welch_difference(*values)})  # fmt: skip
    return out


def _format(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


def report_lines(experiments: dict[str, dict], comparisons: list[dict]) -> list[str]:
    """The printout: per experiment, mean ± 95% half-width (std, seeds) per metric, then the
    baselines; then each comparison's difference and whether it exceeds its interval."""
    lines = []
    for name, exp in experiments.items():
        agg = exp["summary"]
        budget = exp["budget"]
        lines.append(f"== {name}: {agg['seeds']} seeds, budget {budget['kind']}: {budget['note']}"
                     + ("" if budget["equal"] else "  [UNEQUAL BUDGET]"))  # fmt: skip
        for key, s in agg["metrics"].items():
            lines.append(f"   {key:<40} {_format(s['mean'])} ± {_format(s['ci95'])} (std {_format(s['std'])})")
        if agg["baselines"]:
            lines.append("   same test samples: " + ", ".join(f"{k}={_format(v)}" for k, v in agg["baselines"].items()))
    for c in comparisons:
        verdict = "exceeds its interval" if c["exceeds_interval"] else "within its interval: no measured difference"
        fair = "" if c["equal_budget"] else " [unequal budget]"
        lines.append(f"{c['row']} − {c['reference']}, {c['metric']}: {_format(c['difference'])} ± "
                     f"{_format(c['ci95'])} (95%, Welch): {verdict}{fair}")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", default=None, help=f"a subset of {list(EXPERIMENTS)}")
    p.add_argument("--steps-scale", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=3, help="training seeds per experiment (engine.seed 0, 1, ...)")
    p.add_argument("--budget", choices=("steps", "time"), default="steps",
                   help="what compared rows share: the same steps, or the same --max-minutes of training")  # fmt: skip
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="> 0: each run stops after this long (--budget time: every run trains this long)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=4, help="runs sharing the device at once (CPU-bound beyond)")
    p.add_argument("--cores", type=int, default=0, help="on a GPU: the cores these runs share (0: all)")
    p.add_argument("--producer-device", default="auto", help="on a GPU: where sources run (auto | cpu | cuda)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every run (they win)")
    p.add_argument("--work", default=None, help="keep runs here; called again, they continue")
    p.add_argument("--figures", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    names = args.only or list(EXPERIMENTS)
    unknown = set(names) - set(EXPERIMENTS)
    if unknown:
        raise SystemExit(f"unknown experiments {sorted(unknown)}; choose from {list(EXPERIMENTS)}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1; got {args.seeds}")
    if args.budget == "time" and not args.max_minutes > 0:
        raise SystemExit("--budget time needs --max-minutes > 0 (the wall time every run trains)")
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-aign-"))
    start = time.time()
    jobs = [(name, seed) for name in names for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: _experiment(*job, args, work), jobs))
    experiments = {}
    for name in names:
        mine = [r for (n, _), r in zip(jobs, runs, strict=True) if n == name]
        experiments[name] = {"runs": mine, "budget": budget_check(name, mine, args), "summary": aggregate(mine)}
    comparisons = compare(experiments)
    report = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.aign " + " ".join(sys.argv[1:]),
        "device": args.device,
        "cpus": os.cpu_count(),
        "seeds": args.seeds,
        "budget": args.budget,
        "wall_seconds": time.time() - start,
        "experiments": experiments,
        "comparisons": comparisons,
    }
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(report_lines(experiments, comparisons)))
    for name, exp in experiments.items():
        for run in exp["runs"]:
            if "error" in run:
                print(f"{name} seed {run['seed']} FAILED:\n{run['error']}")


if __name__ == "__main__":
    main()
