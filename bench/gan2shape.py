"""GAN2Shape's experiment: every row over seeds, on the category GAN that passed the gate.

    python -m bench.gan_gate --device cuda --work runs/gate --minutes 8            # the GAN and oracles
    python -m bench.gan2shape --device cuda --gate runs/gate --seeds 0 1 2 --work runs/g2s --out g2s.json

Each run is ``renderloop run method=gan2shape ...`` on a live stream of the gate's generator
(``<gate>/gan/eval/generator.pt``, the oracles of ``<gate>/oracle``), then ``renderloop eval``: SIDE
(×10⁻²) and MAD (degrees) on held-out renders, all views and near-frontal ones. Variants: the
method; Unsup3d on the same images (the paper's baseline, with its flip term); the supervised
ceiling (true depth of renders of the GAN's objects); the ablations (no offset regularizer, flat
initialization, and the flip term added, which the method leaves off as the paper's car config
does); and step 3 drawing each projected sample from its pseudo view (``pseudo_view``, for the joint
training's one frame per image); and ``per_image``, the paper's per-image optimization (its car
setting) on the first ``--instances`` test renders inverted into W, a copy of the networks each
(``--instance-chunks`` blocks of them, a run each, scored together; ``per_image_pseudo``: with
the pseudo views in step 3; ``per_image_pseudo_*``: its ablations, on the first
``--ablation-chunks`` blocks where given). Every variant trains for
``--steps`` engine steps (equal steps; the default is the schedule of ``method=gan2shape``).
Each run's report also holds the ellipsoid, average-depth and flat rows. A row gives the mean and
95% t interval over seeds; the method is compared with Unsup3d by Welch intervals, and a variant
with its ``_no_projection`` control (step 3 without the GAN's samples) by differences paired by
seed, as is an ablation with the variant it changes (on the renders both scored, ``ablations``).
Where runs scored different renders (``per_image`` scores its instances only), ``shared`` gives
the other rows again on the renders they all scored. With ``--snapshot-every`` each run also
scores its depth along the schedule (``trajectories``: which phase moves it, and which way).
With ``--train-minutes`` trainings stop that long after the bench starts (a run begun later gets
what is left) and are scored only once they reach ``--steps``: the same command again continues
them from their checkpoints (runs at equal steps over several calls of a limited length). A
scored run is its ``<work>/<tag>.json`` and the settings it was made with
(``<work>/<tag>/bench_settings.json``): copied into another machine's ``--work``, they are reused
there (given the same ``--work`` and ``--gate`` paths), so finished runs need not stay on one host.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.commands import (
    claim,
    last_step,
    phase_throughput,
    renderloop,
    save_seconds,
    saved_seconds,
    saved_step,
    share_cpus,
)
from bench.reports import print_rows, write_report
from renderloop.stats import mean_ci95, welch_difference

VARIANTS = {
    "gan2shape": ("gan2shape", []),
    # Its flip term is its core, at the weight of its synthetic-car config.
    "unsup3d": ("gan2shape", ["method.mode=unsup3d", "method.symmetry=true", "method.lam_flip=1"]),
    "supervised": ("gan2shape_supervised", []),
    "no_offset_reg": ("gan2shape", ["method.lam_offset=0"]),
    "flat_prior": ("gan2shape", ["method.prior=flat"]),
    "with_symmetry": ("gan2shape", ["method.symmetry=true"]),
    "pseudo_view": ("gan2shape", ["method.projected_view=pseudo"]),
    "no_projection": ("gan2shape", ["method.lam_projected=0"]),  # step 3 on the image alone: the control
    "per_image": ("gan2shape", []),  # + method.instances from --instances, --instance-samples
    "per_image_pseudo": ("gan2shape", ["method.projected_view=pseudo"]),
}
PER_IMAGE_ABLATIONS = ("no_offset_reg", "flat_prior", "with_symmetry")
VARIANTS |= {
    f"per_image_pseudo_{ablation}": ("gan2shape", VARIANTS["per_image_pseudo"][1] + VARIANTS[ablation][1])
    for ablation in (*PER_IMAGE_ABLATIONS, "no_projection")
}  # the ablations and the control, per image
"""Variant → (config, overrides)."""
ABLATED = {f"per_image_pseudo_{a}": "per_image_pseudo" for a in PER_IMAGE_ABLATIONS}
"""Ablation → the variant it changes one thing of (the ``_no_projection`` control is compared apart)."""
BASELINES = ("ellipsoid", "average", "flat")
SCORES = ("side", "mad", "frontal_side", "frontal_mad")


def _row(variant: str) -> str:
    """The report row a variant's own network writes (its mode)."""
    return {"unsup3d": "unsup3d", "supervised": "supervised"}.get(variant, "gan2shape")


def one_run(variant: str, seed: int, args, work: Path, chunk: int = 0, deadline: float = 0.0) -> dict | None:
    """Train and evaluate one (variant, seed), a per-image variant on its ``chunk``-th block of
    ``--instances`` test renders; its scores plus wall times (summed over calls). Finished runs are
    reused; None where the ``deadline`` (``time.monotonic()``, 0: none) stopped it short."""
    tag = f"{variant}-s{seed}" + (f"-c{chunk}" if chunk else "")
    config, overrides = VARIANTS[variant]
    if variant.startswith("per_image"):
        overrides = [f"method.instances.count={args.instances}", f"method.instances.samples={args.instance_samples}",
                     f"method.instances.first={chunk * args.instances}", *overrides]  # fmt: skip
    gate = Path(args.gate)
    images = ([f"method.data.images.checkpoint={gate / 'gan' / 'eval' / 'generator.pt'}"] if config == "gan2shape"
              else [f"method.data.images.resolution={args.resolution}"])  # fmt: skip
    common = [
        f"method={config}", f"device={args.device}", f"engine.seed={seed}", f"method.oracle_run={gate / 'oracle'}",
        f"storage.root={work / tag / 'data'}", f"run_dir={work / tag / 'run'}", "engine.progress=false",
        f"engine.max_steps={args.steps}", f"engine.snapshot_every={args.snapshot_every}", *images, *overrides,
        *args.set,
    ]  # fmt: skip
    claim(work / tag, common)
    done = work / f"{tag}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = work / tag / "run"
    minutes = (deadline - time.monotonic()) / 60
    if deadline and minutes < 1:  # too little left to pass the start-up
        return None
    capped = [f"engine.max_minutes={minutes:.2f}"] if deadline else []  # not a setting of the run: kept from claim
    save_seconds(run_dir, {"run_seconds": renderloop("run", *common, *capped, log=work / f"{tag}-run.log")})
    steps = [o for o in common if o.startswith("engine.max_steps=")][-1]  # --set may override --steps
    if saved_step(run_dir) < int(steps.split("=", 1)[1]):
        return None
    save_seconds(run_dir, {"eval_seconds": renderloop("eval", *common, log=work / f"{tag}-eval.log")})
    times = saved_seconds(run_dir)
    report = json.loads((run_dir / "eval" / "gan2shape_eval.json").read_text())
    run = {"variant": variant, "seed": seed, **times, "steps": last_step(run_dir), "phases": phase_throughput(run_dir),
           "scores": report}  # fmt: skip
    done.write_text(json.dumps(run) + "\n")
    # A scored run is not trained again, and per image its checkpoints hold every network's copy per
    # render with its optimizer (2.7 GB each at 25 renders): a dozen runs' would fill a GPU host's disk.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return run


def jobs(args) -> list[tuple[str, int, int]]:
    """(variant, seed, chunk) of every run, seed by seed (a call cut short leaves whole seeds of every
    variant, which pair): a per-image variant runs ``--instance-chunks`` blocks of ``--instances``
    consecutive test renders, each its own run (one copy of the networks per render must fit the
    device), which :func:`joined` makes one again."""
    return [(v, s, c) for s in args.seeds for v in args.variants for c in range(blocks(args, v))]


def blocks(args, variant: str) -> int:
    """How many blocks of test renders a variant runs: an ablation the first ``--ablation-chunks``
    (its paired difference needs only renders its parent scored too), a per-image variant
    ``--instance-chunks``, the others one run over every render."""
    if variant in ABLATED and args.ablation_chunks:
        return min(args.ablation_chunks, args.instance_chunks)
    return args.instance_chunks if variant.startswith("per_image") else 1


def joined(chunks: list[dict]) -> dict:
    """A (variant, seed)'s runs over blocks of test renders as one run: every row's scores averaged
    over all their renders (as each run's are over its own), inversions' PSNR over all renders,
    oracle calls and wall times summed."""
    if len(chunks) == 1:
        return chunks[0]
    reports = [c["scores"] for c in chunks]
    per_image = {k: [v for r in reports for v in r["per_image"][k]] for k in reports[0]["per_image"]}
    scores = averaged(per_image)
    renders = [r["test_images"] for r in reports]
    psnr = sum(r["inversion_psnr"] * n for r, n in zip(reports, renders, strict=True)) / sum(renders)
    scores |= {"per_image": per_image, "test_images": sum(renders), "scored_images": sum(renders),
               "frontal_images": sum(r["frontal_images"] for r in reports), "inversion_psnr": psnr,
               "oracle_segment_calls": sum(r["oracle_segment_calls"] for r in reports)}  # fmt: skip
    seconds = {k: sum(c[k] for c in chunks) for k in ("run_seconds", "eval_seconds")}
    return {**chunks[0], **seconds, "chunks": len(chunks), "scores": scores}


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Row → score → (mean, 95% half-width, runs): each variant's own row, and the baselines from
    the ``gan2shape`` runs (scored on the same pixels as the method: rendered and in the mask)."""
    variants = dict.fromkeys(r["variant"] for r in runs)
    rows = {v: _scores([r["scores"] for r in runs if r["variant"] == v], _row(v)) for v in variants}
    reference = "gan2shape" if "gan2shape" in rows else next(iter(rows), None)
    scored = [r["scores"] for r in runs if r["variant"] == reference]  # on the method's pixels
    for baseline in BASELINES:
        if scored and f"{baseline}/side" in scored[0]:
            rows[baseline] = _scores(scored, baseline)
    return rows


def _scores(reports: list[dict], row: str) -> dict[str, tuple]:
    return {s: tuple(mean_ci95([m[f"{row}/{s}"] for m in reports])) for s in SCORES if f"{row}/{s}" in reports[0]}


def averaged(per_image: dict[str, list]) -> dict[str, float]:
    """Every row's scores averaged over the renders of ``per_image``, and over its near-frontal ones."""
    frontal = [i for i, near in enumerate(per_image["frontal"]) if near]
    out = {}
    for key, values in per_image.items():
        if "/" in key:
            row, score = key.split("/")
            out[f"{row}/{score}"] = sum(values) / len(values)
            if frontal:
                out[f"{row}/frontal_{score}"] = sum(values[i] for i in frontal) / len(frontal)
    return out


def shared(runs: list[dict]) -> tuple[set[int], list[dict]]:
    """The test renders every run scored, and the runs with their scores (and per-render lists, for
    paired differences render by render) restricted to them."""
    indices = set.intersection(*(set(r["scores"]["per_image"]["index"]) for r in runs))
    lists = [kept(r["scores"]["per_image"], indices) for r in runs]
    return indices, [{**r, "scores": {**averaged(k), "per_image": k}} for r, k in zip(runs, lists, strict=True)]


def kept(per_image: dict[str, list], indices: set[int]) -> dict[str, list]:
    """Per-render lists with only the test renders ``indices``, in their order."""
    picked = [i for i, index in enumerate(per_image["index"]) if index in indices]
    return {key: [values[i] for i in picked] for key, values in per_image.items()}


def trajectories(runs: list[dict]) -> dict[str, list[dict]]:
    """Variant → its snapshots' SIDE and MAD along the schedule, mean over the seeds that kept
    each step (``--snapshot-every``): which phase moves the depth, and which way."""
    out: dict[str, list[dict]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        points: dict[int, list[dict]] = {}
        for r in runs:
            if r["variant"] == variant:
                for point in r["scores"].get("trajectory", []):
                    points.setdefault(point["step"], []).append(point)
        if points:
            out[variant] = [{"step": step, "phase": ps[0]["phase"], "seeds": len(ps),
                             **{s: sum(p[s] for p in ps) / len(ps) for s in ("side", "mad")}}
                            for step, ps in sorted(points.items())]  # fmt: skip
    return out


def compare(runs: list[dict], a: str = "gan2shape", b: str = "unsup3d") -> dict[str, dict]:
    """Each score of row ``a`` minus row ``b``, with the Welch interval (the paper's claim: ``a`` ≤ ``b``)."""
    va = [r["scores"] for r in runs if r["variant"] == a]
    vb = [r["scores"] for r in runs if r["variant"] == b]
    if not va or not vb:
        return {}
    return {s: welch_difference([m[f"{_row(a)}/{s}"] for m in va], [m[f"{_row(b)}/{s}"] for m in vb])
            for s in ("side", "mad")}  # fmt: skip


def ablation(runs: list[dict], variant: str) -> dict:
    """An ablation against the variant it changes, on the test renders both scored: their rows, and
    the difference paired by seed (both start from the same seed's weights and renders)."""
    base = ABLATED[variant]
    indices, restricted = shared([r for r in runs if r["variant"] in (variant, base)])
    rows = summarize(restricted)
    return {"renders": len(indices), "rows": {v: rows[v] for v in (base, variant) if v in rows},
            "difference": against_control(restricted, variant, base)}  # fmt: skip


def against_control(runs: list[dict], a: str, b: str) -> dict[str, dict]:
    """Each score of variant ``a`` minus its control ``b``, paired by seed: both start from the same
    weights and test renders, so the mean per-seed difference and its 95% t interval show what ``a``'s
    one change did. Empty where no seed ran both."""
    by = {(r["variant"], r["seed"]): r["scores"] for r in runs}
    seeds = sorted(s for v, s in by if v == a and (b, s) in by)
    if not seeds:
        return {}
    out = {}
    for score in ("side", "mad"):
        diffs = [by[a, s][f"{_row(a)}/{score}"] - by[b, s][f"{_row(b)}/{score}"] for s in seeds]
        summary = mean_ci95(diffs)
        out[score] = {"difference": summary.mean, "ci95": summary.half_width, "seeds": seeds, "per_seed": diffs,
                      "exceeds_interval": summary.excludes(0.0)}  # fmt: skip
        per_render = [_per_render(by[a, s].get("per_image"), by[b, s].get("per_image"), score, a, b) for s in seeds]
        if all(per_render):
            out[score]["per_render"] = per_render
    return out


def _per_render(ours: dict | None, control: dict | None, score: str, a: str, b: str) -> dict | None:
    """One seed's differences render by render (both runs scored the same renders): their mean and 95%
    t interval over the renders (how much the gap depends on which renders were drawn; the seeds'
    interval above is how much it depends on the run), how many renders went down, and the same on
    the near-frontal renders alone. None where the runs kept no per-render scores."""
    if not ours or not control or ours["index"] != control["index"]:
        return None
    diffs = [x - y for x, y in zip(ours[f"{_row(a)}/{score}"], control[f"{_row(b)}/{score}"], strict=True)]

    def summary(values: list[float]) -> dict:
        s = mean_ci95(values) if values else None
        return {"renders": len(values), "lower": sum(v < 0 for v in values),
                "difference": s.mean if s else math.nan, "ci95": s.half_width if s else math.nan}  # fmt: skip

    frontal = [d for d, f in zip(diffs, ours["frontal"], strict=True) if f]
    return {**summary(diffs), "frontal": summary(frontal)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--gate", required=True, help="a bench.gan_gate --work folder (its GAN and oracles)")
    p.add_argument("--resolution", type=int, default=64, help="the GAN's resolution (the supervised row's renders)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=6300, help="engine steps of every run (1,000 + 2,000 + 3 × 1,100)")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--work", default="", help="streams, runs and logs; finished runs are reused")
    p.add_argument("--parallel", type=int, default=1, help="runs sharing the device at once")
    p.add_argument("--snapshot-every", type=int, default=0, help="score the depth every this many steps (0: never)")
    p.add_argument("--instances", type=int, default=32, help="per_image: test renders optimized, one copy each")
    p.add_argument("--instance-samples", type=int, default=8, help="per_image: pseudo samples per image and step")
    p.add_argument("--instance-chunks", type=int, default=1,
                   help="per_image: blocks of --instances test renders, a run each, scored as one")  # fmt: skip
    p.add_argument("--ablation-chunks", type=int, default=0,
                   help="> 0: the ablations run only this many of those blocks (compared on them)")  # fmt: skip
    p.add_argument("--train-minutes", type=float, default=0.0, help="> 0: stop trainings this long after the start")
    p.add_argument("--out", default="")
    args = p.parse_args()
    deadline = time.monotonic() + 60 * args.train_minutes if args.train_minutes > 0 else 0.0
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-gan2shape-"))
    work.mkdir(parents=True, exist_ok=True)
    parts: dict[tuple[str, int], list[dict]] = {}
    todo, unfinished = jobs(args), set()
    share_cpus(args.parallel)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        finished = pool.map(lambda job: one_run(job[0], job[1], args, work, job[2], deadline), todo)
        for (variant, seed, chunk), r in zip(todo, finished, strict=True):
            if r is None:
                unfinished.add((variant, seed))
                continue
            parts.setdefault((variant, seed), []).append(r)
            row, block = _row(variant), f" block {chunk}" if chunk else ""
            print(f"{variant:>14} seed {seed}{block}: SIDE {r['scores'][f'{row}/side']:.3f} "
                  f"MAD {r['scores'][f'{row}/mad']:.2f}", flush=True)  # fmt: skip
    if unfinished:
        names = ", ".join(f"{v}-s{s}" for v, s in sorted(unfinished))
        print(f"short of their steps, left out until a call finishes them: {names}")
    runs = [joined(chunks) for key, chunks in parts.items() if key not in unfinished]
    rows, paths = summarize(runs), trajectories(runs)
    print_rows(rows)
    extra = {}
    variants = dict.fromkeys(r["variant"] for r in runs)
    ablations = [v for v in variants if ABLATED.get(v) in variants]  # may score fewer renders than their parent
    rest = [r for r in runs if r["variant"] not in ablations]
    scored = [r["scores"].get("per_image", {}).get("index") for r in rest]
    if all(scored) and len({len(s) for s in scored}) > 1:  # some runs (per_image) scored fewer renders
        indices, restricted = shared(rest)
        per_image = [v for v in variants if v.startswith("per_image") and v not in ablations]
        differences = {f"{v}_minus_{b}": d for v in per_image for b in ("unsup3d", "per_image")
                       if v != b and (d := compare(restricted, v, b))}  # fmt: skip
        extra["shared"] = {"renders": len(indices), "rows": summarize(restricted),
                           "gan2shape_minus_unsup3d": compare(restricted), **differences}  # fmt: skip
        print(f"on the {len(indices)} renders every run scored:")
        print_rows(extra["shared"]["rows"])
    for v in ablations:
        a = extra.setdefault("ablations", {})[v] = ablation(runs, v)
        print(f"{v} on the {a['renders']} renders it shares with {ABLATED[v]}:")
        print_rows(a["rows"])
        print(f"{v} − {ABLATED[v]} (paired by seed): " + ", ".join(
            f"{s} {d['difference']:+.3f} ± {d['ci95']:.3f}" for s, d in a["difference"].items()))  # fmt: skip
    controls = {f"{v}_minus_{v}_no_projection": against_control(runs, v, f"{v}_no_projection")
                for v in variants if f"{v}_no_projection" in variants}  # fmt: skip
    for name, difference in controls.items():
        extra[name] = difference
        print(f"{name} (paired by seed): " + ", ".join(f"{s} {d['difference']:+.3f} ± {d['ci95']:.3f}"
                                                       for s, d in difference.items()))  # fmt: skip
        for score, d in difference.items():
            for seed, r in zip(d["seeds"], d.get("per_render", []), strict=False):
                print(f"  seed {seed} {score} per render: {r['difference']:+.3f} ± {r['ci95']:.3f}, lower on "
                      f"{r['lower']} of {r['renders']} ({r['frontal']['lower']} of {r['frontal']['renders']} "
                      "near-frontal)")  # fmt: skip
    for variant, points in paths.items():
        print(f"{variant}: " + ", ".join(f"{p['step']} {p['phase']} SIDE {p['side']:.2f} MAD {p['mad']:.1f}"
                                         for p in points))  # fmt: skip
    if args.out:
        write_report(args.out, rows=rows, gan2shape_minus_unsup3d=compare(runs), trajectories=paths, runs=runs, **extra)


if __name__ == "__main__":
    main()
