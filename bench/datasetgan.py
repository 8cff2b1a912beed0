"""DatasetGAN's experiment: downstream part segmentation from K annotations, every row over seeds.

    python -m bench.gan_gate --device cuda --work runs/gate --minutes 8            # the GAN and oracles
    python -m bench.datasetgan --device cuda --gate runs/gate --ks 4 8 16 32 --seeds 0 1 2 --parallel 3 \
        --rows-parallel 4 --work runs/dg

Per seed and K: ``method=datasetgan`` trains the style interpreter on K oracle-annotated samples of
the gate's generator; then one part segmenter (``method=part_segmentation``, the same network and
steps for every row: equal steps) trains on each row's data and is scored on held-out renders in
object folds (mIoU with and without background), at its last weights and, as the paper does, with
the weights chosen per fold among 20 snapshots and scored on the other folds (``selected/*``).
Rows: DatasetGAN (its live stream of labelled
samples); the ablations at ``--ablation-k`` (no uncertainty filter; one interpreter member, which
has no disagreement to filter by, so also unfiltered); the
few-shot baseline (the same segmenter on K labelled renders of the GAN's objects, repeated); the
transfer baseline (the segmenter pretrained by inpainting unlabelled renders, then fine-tuned on
the same K renders); the oracle segmenter itself (the ceiling, scored by the same evaluation).
``--rows`` picks among them. A row gives the mean and 95% t interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.commands import claim, last_throughput, renderloop, save_seconds, saved_seconds, share_cpus
from bench.reports import print_rows, write_report
from renderloop.stats import mean_ci95

SCORES = ("miou", "miou_with_background", "selected/miou", "selected/miou_with_background")
ROWS = ("datasetgan", "k_labeled", "transfer", "one_member", "no_filter")
SNAPSHOTS = 20  # the official code keeps a checkpoint per epoch for 20 epochs


def _scores(run: Path) -> dict:
    """The evaluation's scores, and how fast the run trained (``train/*``: the DatasetGAN rows'
    ``data/generated_per_s`` is the labelled images/s their producers made), and each command's wall
    seconds (``seconds/*``)."""
    scores = json.loads((run / "eval" / "part_segmentation_eval.json").read_text())
    return (scores | {f"train/{key}": value for key, value in last_throughput(run).items()}
            | {f"seconds/{phase}": value for phase, value in saved_seconds(run).items()})  # fmt: skip


def interpreter(args, k: int, seed: int, work: Path) -> Path:
    """Train and export the style interpreter of K annotations; its ``interpreter.pt``."""
    run = work / f"interpreter-k{k}-s{seed}"
    common = [
        "method=datasetgan", f"device={args.device}", f"method.generator={args.generator}",
        f"method.oracle_run={args.oracle}", f"method.annotations={k}", f"method.annotation_seed={seed}",
        f"engine.seed={seed}", f"run_dir={run}", f"storage.root={run / 'data'}", "engine.progress=false",
        *args.interpreter_set,
    ]  # fmt: skip
    claim(run, [*common, f"engine.max_steps={args.interpreter_steps}"])
    if not (run / "eval" / "interpreter.pt").exists():
        renderloop("run", *common, f"engine.max_steps={args.interpreter_steps}", log=work / "bench.log")
        renderloop("eval", *common, log=work / "bench.log")
    return run / "eval" / "interpreter.pt"


def segmenter(args, row: str, seed: int, work: Path, data: list[str], closed_samples: int = 0, steps: int = 0) -> dict:
    """Train the part segmenter on one row's data (``closed_samples``: first write that many
    samples and repeat them; ``steps``: other than ``--segmenter-steps``) and score it."""
    run = work / f"{row}-s{seed}"
    common = [f"device={args.device}", f"engine.seed={seed}", f"run_dir={run}", f"storage.root={run / 'data'}",
              "engine.progress=false", f"engine.snapshot_every={max(1, args.segmenter_steps // SNAPSHOTS)}",
              *data, *args.segmenter_set]  # fmt: skip
    claim(run, [*common, f"engine.max_steps={steps or args.segmenter_steps}", f"closed_samples={closed_samples}"])
    if (run / "eval" / "part_segmentation_eval.json").exists():
        return _scores(run)
    log, seconds = work / "bench.log", {}
    if closed_samples:
        per_shard = max(1, closed_samples // 8)  # shards enough for every reader slot
        labeled = [o.replace("method.data.labeled.", "source.") for o in data if o.startswith("method.data.labeled.")]
        generate = ["source=simulator_vehicle", *labeled, f"num_samples={closed_samples}",
                    f"source.batch_size={per_shard}", f"samples_per_shard={per_shard}",
                    f"storage.root={run / 'data'}", "storage.stream=part_segmentation-labeled",
                    f"device={args.device}", f"seed={seed}"]  # fmt: skip
        generated = run / "generated.json"  # a run resumed after a limit must not write its K samples again
        if not generated.exists():
            generated.parent.mkdir(parents=True, exist_ok=True)
            generated.write_text(json.dumps(renderloop("generate", *generate, log=log)))
        seconds["generate"] = json.loads(generated.read_text())
        # One reader: two would each build whole batches from their own half of the K samples.
        seconds["train"] = renderloop("train", *common, "engine.data.follow=false", "engine.data.num_workers=1",
                                      f"engine.max_steps={args.segmenter_steps}", log=log)  # fmt: skip
    else:
        seconds["train"] = renderloop("run", *common, f"engine.max_steps={steps or args.segmenter_steps}", log=log)
    seconds["eval"] = renderloop("eval", *common, log=log)
    save_seconds(run, seconds)
    return _scores(run)


def oracle_ceiling(args, work: Path) -> dict:
    """The oracle segmenter scored by the part segmenter's evaluation (the same network family)."""
    run = work / "oracle-ceiling"
    if not (run / "eval" / "part_segmentation_eval.json").exists():
        trained = json.loads((Path(args.oracle) / "method.json").read_text())
        (run / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(args.oracle) / "models" / "segmenter.pt", run / "models" / "segmenter.pt")
        overrides = ["method=part_segmentation_renders", f"run_dir={run}", f"device={args.device}",
                     f"method.data.labeled.resolution={args.resolution}", *args.segmenter_set,
                     f"method.width={trained['width']}", f"method.levels={trained['levels']}"]  # fmt: skip
        renderloop("eval", *overrides, log=work / "bench.log")
    return _scores(run)


def run_name(row: str) -> str:
    """A row's run folder (before its seed): ``k_labeled_k16`` → ``k-labeled-k16``."""
    return row.replace("_", "-")


def rows_for(args, seed: int, work: Path) -> tuple[dict[str, dict], dict, dict]:
    """Every chosen row's scores for one seed (``--rows``), the inpainting pretext's own score, and
    each K's interpreter evaluation (held-out pixels of its K images, and fresh samples against the
    oracle). The pretext and the interpreters come first; the segmenter rows then run
    ``--rows-parallel`` at a time."""
    labelled = ["method=part_segmentation", f"method.data.labeled.checkpoint={args.generator}"]
    renders = ["method=part_segmentation_renders", f"method.data.labeled.resolution={args.resolution}"]
    chosen = set(args.rows)
    ablations = bool(chosen & {"one_member", "no_filter"})
    ks = sorted({*args.ks, args.ablation_k} if ablations else set(args.ks))
    with ThreadPoolExecutor(max_workers=max(1, args.rows_parallel)) as pool:
        pretext = (pool.submit(segmenter, args, "pretext", seed, work, [*renders, "method.task=inpaint"],
                               steps=args.pretext_steps) if "transfer" in chosen else None)  # fmt: skip
        interpreters = {k: pool.submit(interpreter, args, k, seed, work) for k in ks}
        jobs = {}
        for k in ks:
            interp = [*labelled, f"method.data.labeled.interpreter={interpreters[k].result()}"]
            if k in args.ks and "datasetgan" in chosen:
                jobs[f"datasetgan_k{k}"] = (interp, 0)
            if k in args.ks and "k_labeled" in chosen:
                jobs[f"k_labeled_k{k}"] = (renders, k)
            if k == args.ablation_k and "one_member" in chosen:  # one member has nothing to filter by
                one = [*interp, "method.data.labeled.members=1", "method.data.labeled.drop_share=0"]
                jobs[f"one_member_k{k}"] = (one, 0)
            if k == args.ablation_k and "no_filter" in chosen:
                jobs[f"no_filter_k{k}"] = ([*interp, "method.data.labeled.drop_share=0"], 0)
        pretext = pretext.result() if pretext else {}
        pretrained = f"method.init_from={work / f'pretext-s{seed}'}"
        for k in args.ks if "transfer" in chosen else ():
            jobs[f"transfer_k{k}"] = ([*renders, pretrained], k)
        futures = {name: pool.submit(segmenter, args, run_name(name), seed, work, data, closed)
                   for name, (data, closed) in jobs.items()}  # fmt: skip
        interpreted = {k: json.loads((future.result().parent / "datasetgan_eval.json").read_text())
                       for k, future in interpreters.items()}  # fmt: skip
        return {name: future.result() for name, future in futures.items()}, pretext, interpreted


def predictions_figure(figures: dict[str, Path], out: Path, pad: int = 2) -> list[str]:
    """One figure of every row's test predictions: the inputs and true labels of the first
    evaluation figure, then each row's predicted labels (the third line of its own figure; every
    evaluation draws the same test renders). Returns the rows in the order drawn."""
    images = {name: np.asarray(Image.open(path).convert("RGB")) for name, path in figures.items() if path.exists()}
    if not images:
        return []
    first = next(iter(images.values()))
    line = (first.shape[0] - pad) // 3  # an image's height plus its padding
    lines = [first[: pad + 2 * line]] + [image[pad + 2 * line :] for image in images.values()]
    Image.fromarray(np.concatenate(lines)).save(out)
    return list(images)


def summarize(per_seed: dict[int, dict[str, dict]], ceiling: dict) -> dict[str, dict]:
    """Row → score → (mean, 95% half-width, seeds); the oracle row has no seeds (one network), nor
    the constant prediction (the training renders' per-pixel majority label)."""
    names = dict.fromkeys(name for rows in per_seed.values() for name in rows)
    out = {name: {s: tuple(mean_ci95(values)) for s in SCORES
                  if (values := [rows[name][s] for rows in per_seed.values() if s in rows.get(name, {})])}
           for name in names}  # fmt: skip
    out["oracle"] = {s: (ceiling.get(s, float("nan")), float("nan"), 1) for s in SCORES}  # one network: no choice
    first = next((r for rows in per_seed.values() for r in rows.values() if "constant/miou" in r), None)
    if first:  # the trivial row is the same in every run (the evaluation's renders): scored once
        out["constant"] = {s: (first[f"constant/{s}"], float("nan"), 1) for s in SCORES if f"constant/{s}" in first}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--gate", required=True, help="a bench.gan_gate --work folder (its GAN and oracles)")
    p.add_argument("--resolution", type=int, default=64, help="the GAN's resolution")
    p.add_argument("--ks", nargs="*", type=int, default=[4, 8, 16, 32])
    p.add_argument("--ablation-k", type=int, default=16, help="K of the one-member and no-filter rows")
    p.add_argument("--rows", nargs="*", choices=ROWS, default=list(ROWS), help="the rows to run (the oracle always)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--interpreter-steps", type=int, default=1000)
    p.add_argument("--segmenter-steps", type=int, default=2000)
    p.add_argument("--pretext-steps", type=int, default=0, help="the inpainting pretext's (0: --segmenter-steps)")
    p.add_argument("--interpreter-set", nargs="*", default=[], help="more overrides for the interpreter runs")
    p.add_argument("--segmenter-set", nargs="*", default=[], help="more overrides for the segmenter runs")
    p.add_argument("--parallel", type=int, default=1, help="seeds run at once, sharing the device")
    p.add_argument("--rows-parallel", type=int, default=1, help="runs of one seed at once, sharing the device")
    p.add_argument("--work", default="", help="runs and logs; finished runs are reused")
    p.add_argument("--out", default="")
    args = p.parse_args()
    args.generator = str(Path(args.gate) / "gan" / "eval" / "generator.pt")
    args.oracle = str(Path(args.gate) / "oracle")
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-datasetgan-"))
    work.mkdir(parents=True, exist_ok=True)
    per_seed, pretexts, interpreters = {}, {}, {}
    start = time.monotonic()
    share_cpus(max(1, args.parallel) * max(1, args.rows_parallel))
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = pool.map(lambda s: rows_for(args, s, work), args.seeds)
        for seed, (rows, pretext, interpreted) in zip(args.seeds, results, strict=True):
            per_seed[seed], pretexts[seed], interpreters[seed] = rows, pretext, interpreted
            print(f"seed {seed}: " + ", ".join(f"{n} {r['miou']:.3f}" for n, r in rows.items()), flush=True)
    rows = summarize(per_seed, oracle_ceiling(args, work))
    print_rows(rows)
    if args.out:
        seed = args.seeds[0]
        figures = {name: work / f"{run_name(name)}-s{seed}" / "eval" / "part_segmentation_eval.png"
                   for name in per_seed[seed]}  # fmt: skip
        figures["oracle"] = work / "oracle-ceiling" / "eval" / "part_segmentation_eval.png"
        drawn = predictions_figure(figures, Path(args.out).with_suffix(".png"))
        write_report(
            args.out,
            rows=rows,
            per_seed=per_seed,
            pretext=pretexts,
            interpreters=interpreters,
            predictions_figure={"seed": seed, "rows": drawn},
            wall_seconds=time.monotonic() - start,
        )


if __name__ == "__main__":
    main()
