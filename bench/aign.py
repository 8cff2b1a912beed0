"""AIGN experiments: every task and the paper's ablations, trained on live streams, then evaluated.

    python -m bench.aign --device cuda --out aign.json                # the whole matrix, 4 runs at a time
    python -m bench.aign --only pose_both pose_reconstruction --steps-scale 0.1   # a quick subset
    python -m bench.aign --only sfm_both --set method.sfm.trim=0.0               # a variant

Each experiment is ``renderloop run method=aign/<task> ...`` (producers beside the trainer,
``cluster=local``; on a GPU as single-threaded processes, see ``_producers``) followed by
``renderloop eval``; up to ``--parallel`` of them share the device. The JSON holds each run's
evaluation and its time, steps, wall time, trainer samples/s and loss curve (mean of the
reconstruction per tenth of the run). ``--max-minutes`` also ends each run after that long
(``engine.max_minutes``), so a time budget still yields evaluated models; ``--work DIR`` keeps
the runs, so the same command again trains each for another ``--max-minutes`` from its last
checkpoint (runs longer than one session or job allows); ``--figures DIR`` copies the evaluation
figures there.
"""

from __future__ import annotations

import argparse
import json
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


def _experiment(name: str, args, work: Path) -> dict:
    method, steps, overrides = EXPERIMENTS[name]
    steps = max(int(steps * args.steps_scale), 20)
    run_dir, data = work / name / "run", work / name / "data"
    common = [f"method={method}", f"run_dir={run_dir}", f"device={args.device}", *overrides]
    train = [
        "run", *common, f"engine.max_steps={steps}", f"storage.root={data}", "engine.log_every=20",
        "engine.progress=false", "engine.tensorboard=false", "engine.image_every=0", "engine.checkpoint_every=0",
        "samples_per_shard=256", "metrics_port=-1", f"engine.max_minutes={args.max_minutes}",
        *_producers(method, args), *args.set,
    ]  # fmt: skip
    common.extend(args.set)  # last: they win over the experiment's and the bench's own settings
    start = time.time()
    trained = subprocess.run(_command(*train), capture_output=True, text=True)
    wall = time.time() - start
    earlier = work / name / "train_seconds"  # of earlier calls, with --work
    earlier.parent.mkdir(parents=True, exist_ok=True)
    wall += float(earlier.read_text()) if earlier.is_file() else 0.0
    earlier.write_text(f"{wall}\n")
    if trained.returncode:
        return {"error": (trained.stdout + trained.stderr)[-3000:]}
    start = time.time()
    evaluated = subprocess.run(_command("eval", *common), capture_output=True, text=True)
    eval_wall = time.time() - start
    if evaluated.returncode:
        return {"error": (evaluated.stdout + evaluated.stderr)[-3000:]}
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 5 :]
    result = {
        "method": method,
        "overrides": [*overrides, *args.set],
        "steps": int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step")),
        "max_steps": steps,
        "train_wall_seconds": wall,
        "eval_seconds": eval_wall,  # Fashion-MNIST runs: with the footwear classifier's training, if not cached
        "samples_per_s": sum(r["samples_per_s"] for r in steady) / max(len(steady), 1),
        "data_wait_fraction": sum(r["data_wait_fraction"] for r in steady) / max(len(steady), 1),
        "reconstruction_curve": _curve(run_dir),
        "eval": json.loads((run_dir / "eval" / "results.json").read_text()),
    }
    if args.figures:
        for png in (run_dir / "eval").glob("*.png"):
            shutil.copy(png, Path(args.figures) / f"{name}.png")
    print(f"{name}: {json.dumps(result['eval'])} ({wall:.0f} s)", flush=True)
    if args.out:  # as each finishes, so a run cut short keeps what it measured
        Path(f"{args.out}.{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", default=None, help=f"a subset of {list(EXPERIMENTS)}")
    p.add_argument("--steps-scale", type=float, default=1.0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="> 0: each run also stops after this long")
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
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-aign-"))
    start = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:
        results = dict(zip(names, pool.map(lambda n: _experiment(n, args, work), names), strict=True))
    report = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.aign " + " ".join(sys.argv[1:]),
        "device": args.device,
        "cpus": os.cpu_count(),
        "wall_seconds": time.time() - start,
        "experiments": results,
    }
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, result in results.items():
        if "error" in result:
            print(f"{name} FAILED:\n{result['error']}")


if __name__ == "__main__":
    main()
