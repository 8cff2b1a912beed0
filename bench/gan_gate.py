"""The GAN gate: train the category's StyleGAN2 and check it is good enough for the GAN methods.

    python -m bench.gan_gate --device cuda --work runs/gate --minutes 8      # call again to continue
    python -m bench.gan_gate --work runs/gate --set method.data.real.resolution=32 engine.max_steps=40  # CPU

Each call (1) trains the oracles once (``method=oracle``, objects of the ``oracle`` range) unless
``--oracle-run`` names a finished run, (2) trains ``method=stylegan2_vehicle`` (on a GPU with
``GPU_SETTINGS``) for another ``--minutes`` from its last checkpoint, beside the oracles' run once
that has logged a step (they are needed only by the evaluation), (3) evaluates it
(``renderloop eval``, the oracle as the feature encoder and judge) and appends a point to
``<work>/curve.jsonl``: steps and wall minutes of training so far (the ``renderloop run`` calls,
start-up included), FD beside the real-vs-real floor, KID, precision/recall, the share of samples
that are one object covering ≥10% of the image, and the azimuth-histogram distance to renders.
The gate passes at ``valid_mask_share >= 0.9`` and ``azimuth_tv <= 0.15``; the GAN methods start
from a generator that passed it, which ``bench.gate_bundle`` carries to later calls in a few small files.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bench.commands import last_step, renderloop

GPU_SETTINGS = ("method.compile=true", "engine.precision=bf16_autocast")
"""The GAN run's settings on a GPU: G and D compiled, bf16 autocast, as in the peer rows where ours
trained at 2.06× NVlabs' kimg/s (BENCHMARKS.md, StyleGAN2, H200 2026-12-05); ``--set`` comes after
them, so it can undo either."""

GATE = {"valid_mask_share": (">=", 0.9), "azimuth_tv": ("<=", 0.15)}
"""Metric → (comparison, threshold) that a usable category GAN meets."""


def passes(report: dict) -> dict[str, bool]:
    """Each gate metric's verdict."""
    return {k: (report[k] >= t if op == ">=" else report[k] <= t) for k, (op, t) in GATE.items()}


def _curve(work: Path) -> list[dict]:
    path = work / "curve.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _train_oracle(oracle: Path, work: Path, args, log: Path) -> None:
    common = ["method=oracle", f"device={args.device}", f"run_dir={oracle}", f"storage.root={work / 'oracle-data'}"]
    renderloop("run", *common, f"engine.max_minutes={args.oracle_minutes}", "engine.max_steps=1000000",
               "engine.progress=false", *args.oracle_set, log=log)  # fmt: skip
    renderloop("eval", *common, *args.oracle_set, log=log)


def _until_training(oracle: Path, job: Future) -> None:
    """Wait until the oracle run has logged a step (its settings were accepted) or ended, failing as
    it failed: the GAN then trains beside it, as the oracle is needed only for the evaluation."""
    while not (oracle / "train_log.jsonl").exists() and not job.done():
        time.sleep(1.0)
    if job.done():
        job.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", required=True, help="runs and the curve; a second call continues them")
    p.add_argument("--minutes", type=float, default=8.0, help="GAN training in this call")
    p.add_argument("--oracle-run", default="", help="a finished method=oracle run (default: train one in --work)")
    p.add_argument("--oracle-minutes", type=float, default=4.0)
    p.add_argument("--set", nargs="*", default=[], help="more overrides for the GAN run")
    p.add_argument("--oracle-set", nargs="*", default=[], help="more overrides for the oracle run")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gate.log"
    oracle = Path(args.oracle_run) if args.oracle_run else work / "oracle"
    run = work / "gan"
    gpu = GPU_SETTINGS if args.device.startswith("cuda") else ()
    common = ["method=stylegan2_vehicle", f"device={args.device}", f"run_dir={run}",
              f"storage.root={work / 'gan-data'}", *gpu]  # fmt: skip
    with ThreadPoolExecutor(max_workers=1) as pool:
        oracle_job = None if (oracle / "models").is_dir() else pool.submit(_train_oracle, oracle, work, args, log)
        if oracle_job:
            _until_training(oracle, oracle_job)
        start = time.monotonic()
        # Minutes bound each call; the engine's default step cap would end a continued run early.
        renderloop("run", *common, f"engine.max_minutes={args.minutes}", "engine.max_steps=1000000000",
                   "engine.progress=false", *args.set, log=log)  # fmt: skip
        wall = time.monotonic() - start
        if oracle_job:
            oracle_job.result()
    renderloop("eval", *common, f"method.evaluation.oracle_run={oracle}", *args.set, log=log)
    report = json.loads((run / "eval" / "quality.json").read_text())
    steps = last_step(run)
    earlier = _curve(work)
    minutes = (earlier[-1]["training_minutes"] if earlier else 0.0) + wall / 60  # start-up included, gaps not
    point = {"steps": steps, "training_minutes": minutes, "call_wall_seconds": wall, **report}
    point["gate"] = passes(report) if all(k in report for k in GATE) else {}
    with open(work / "curve.jsonl", "a") as curve:
        curve.write(json.dumps(point) + "\n")
    oracle_scores = json.loads((oracle / "eval" / "oracle_eval.json").read_text())
    print(f"oracle: mask IoU {oracle_scores['mask_iou']:.3f}, part mIoU {oracle_scores['part_miou']:.3f}, "
          f"azimuth median error {oracle_scores['azimuth_median_error_deg']:.1f}°")  # fmt: skip
    print(f"GAN after {steps} steps ({minutes:.1f} min): FD {report['fd']:.3g} "
          f"(real floor {report['fd_real_floor']:.3g}), "
          f"KID {report['kid']:.3g}, precision {report['precision']:.2f}, recall {report['recall']:.2f}")  # fmt: skip
    for key, ok in point["gate"].items():
        op, threshold = GATE[key]
        print(f"gate {key} {report[key]:.3f} {op} {threshold}: {'pass' if ok else 'not yet'}")


if __name__ == "__main__":
    main()
