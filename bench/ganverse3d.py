"""GANverse3D's experiment: view codes, then every row over seeds, on the gate's GAN and oracles.

    python -m bench.gan_gate --device cuda --work runs/gate --minutes 8            # the GAN and oracles
    python -m bench.ganverse3d --device cuda --gate runs/gate --seeds 0 1 2 --parallel 9 --work runs/gv3d --out g.json

1. View codes: ``layer_sweep`` for k ∈ ``--ks`` (a code's azimuth spread across contents, a
   content's across codes), then the emulated annotator at ``--k`` writes the consistent codes and
   their 30° labels (``<work>/annotation``, with ``view_codes.png``: the first kept code of each
   bin, by azimuth, given to the same four contents); the oracle's calls are recorded.
2. Rows, each ``renderloop run method=ganverse3d`` then ``renderloop eval`` (silhouette IoU at the
   true cameras of held-out renders, input and novel views), all for ``--steps`` (equal steps):
   A (the GAN's multi-view groups: each draws ``--views`` distinct codes from the pool of every
   kept, labelled code, one learned camera per code; ``--pool spread`` instead gives every group
   the same ``--views`` codes of distinct, evenly spread bins), A with fixed cameras, A
   single-view, B (simulator renders in groups with their exact cameras: the ceiling), C
   (``--single-renders`` single-view renders with exact cameras, repeated: the paper's Pascal3D
   analogue).
A row gives the mean and 95% t interval over seeds. With ``--train-minutes`` each training stops
after that long in this call and is scored only once it reaches ``--steps``: the same command
again continues it from its checkpoint (rows at equal steps over several calls).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

from bench.commands import claim, renderloop, save_seconds, saved_seconds, saved_step, share_cpus
from bench.reports import print_rows, write_report
from renderloop.stats import mean_ci95
from renderloop.trainers.view_codes import AZIMUTH_BINS

SCORES = ("input_view_iou", "novel_view_iou", "chamfer", "fscore@", "gan_oracle_camera_", "gan_view_iou",
          "camera_error_deg")  # fmt: skip
"""What a row summarizes, where its runs report it (``fscore@`` whatever its threshold; every row on
the GAN's held-out groups at the oracle's viewpoints; with learned cameras and their errors only
the rows trained on GAN groups)."""
ROWS = {
    "A": ["method=ganverse3d"],
    "A_fixed_cameras": ["method=ganverse3d", "method.optimize_cameras=false"],
    "A_single_view": ["method=ganverse3d", "method.multi_view=false"],
    "B": ["method=ganverse3d_renders"],
    "C": ["method=ganverse3d_renders", "method.data.views.views=1", "method.multi_view=false"],
}
"""Row → its config and overrides."""


def view_codes(args, work: Path) -> dict:
    """The layer sweep and the annotation (once per work folder)."""
    keys = ("generator", "oracle", "ks", "k", "sweep_codes", "sweep_contents", "candidates", "samples_per_code",
            "max_spread_deg", "keep_broken", "max_elevation_spread_deg", "max_size_spread")  # fmt: skip
    claim(work / "annotation", [f"{key}={getattr(args, key)}" for key in keys])
    done = work / "annotation" / "report.json"
    if done.exists():
        return json.loads(done.read_text())
    import torch

    from renderloop.images import image_grid, save_png
    from renderloop.models.stylegan2.io import load_generator
    from renderloop.models.stylegan2.latents import ViewCodes
    from renderloop.trainers.oracle import Oracle
    from renderloop.trainers.view_codes import annotate, code_grid, layer_sweep, save_annotation

    device = args.device if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    G = load_generator(args.generator).to(device).eval()
    oracle = Oracle.load(args.oracle, device)
    sweep = layer_sweep(G, oracle, ks=tuple(args.ks), codes=args.sweep_codes, contents=args.sweep_contents)
    codes, report = annotate(
        G,
        oracle,
        k=args.k,
        candidates=args.candidates,
        samples_per_code=args.samples_per_code,
        max_spread_deg=args.max_spread_deg,
        require_object=not args.keep_broken,
        max_elevation_spread_deg=args.max_elevation_spread_deg,
        max_size_spread=args.max_size_spread,
    )
    save_annotation(codes, report, work / "annotation")
    if len(codes):  # one code per covered bin, by azimuth: each row should turn the same contents further
        per_bin = ViewCodes(
            codes.view_layers, {name: codes.codes[name] for name in first_per_bin(report["labels"]).values()}
        )
        save_png(image_grid(code_grid(G, per_bin), columns=4), work / "annotation" / "view_codes.png")
    report = {"sweep": sweep, "annotation": report, "oracle_calls": dict(oracle.calls)}
    done.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _as_source(overrides: list[str]) -> list[str]:
    """``method.data.views.KEY=V`` overrides as ``source.KEY=V`` (for ``renderloop generate``)."""
    prefix = "method.data.views."
    return [f"source.{o[len(prefix) :]}" for o in overrides if o.startswith(prefix)]


def first_per_bin(labels: dict[str, int]) -> dict[int, str]:
    """Each covered azimuth bin → the first code labelled with it, bins in increasing order."""
    first: dict[int, str] = {}
    for name, b in sorted(labels.items(), key=lambda item: item[1]):
        first.setdefault(b, name)
    return first


def spread_codes(labels: dict[str, int], views: int) -> list[str]:
    """``views`` code names with distinct azimuth bins, as evenly spread around the circle as the
    kept bins allow: the largest smallest angle between neighbours, then the most even angles
    (least sum of squares; the first code of each bin; ties go to the lowest bins)."""
    first = first_per_bin(labels)
    if len(first) < views:
        raise SystemExit(f"the annotator kept codes in {len(first)} azimuth bins; {views} views need as many")

    def gaps(chosen: tuple[int, ...]) -> list[int]:
        return [(b - a) % AZIMUTH_BINS or AZIMUTH_BINS for a, b in zip(chosen, chosen[1:] + chosen[:1], strict=True)]

    best = max(combinations(sorted(first), views), key=lambda c: (min(gaps(c)), -sum(g * g for g in gaps(c))))
    return [first[b] for b in best]


def pool_names(labels: dict[str, int], views: int, pool: str) -> list[str]:
    """Row A's view-code pool: every kept code (``all``), or ``views`` codes of spread bins."""
    if pool == "spread":
        return spread_codes(labels, views)
    if len(labels) < views:
        raise SystemExit(f"the annotator kept {len(labels)} codes; groups of {views} distinct views need as many")
    return sorted(labels)


def one_run(args, row: str, seed: int, work: Path, views: int, mean_shape: bool = True) -> dict | None:
    """Train and score one row and seed (None: stopped by ``--train-minutes`` short of ``--steps``);
    ``mean_shape``: also score the constant mean-shape row (the same in every run, so the bench
    asks only the first run for it)."""
    run = work / f"{row}-s{seed}"
    annotation = work / "annotation"
    gan = [
        f"checkpoint={args.generator}",
        f"views={args.views}",
        f"view_layers={args.k}",
        f"view_codes={annotation / 'view_codes.pt'}",
        f"view_names=[{','.join(args.pool_names or sorted(args.labels))}]",
    ]
    if row in ("B", "C"):  # scored on row A's held-out GAN groups too, at the oracle's viewpoints
        data = [*ROWS[row], f"method.data.views.resolution={args.resolution}", f"method.data.views.views={views}",
                "+method.gan_test.name=stylegan2", *(f"+method.gan_test.{o}" for o in gan)]  # fmt: skip
    else:
        labels = f"method.view_labels={annotation / 'view_labels.json'}"
        data = [*ROWS[row], *(f"method.data.views.{o}" for o in gan), labels]
    common = [
        *data,
        f"method.oracle_run={args.oracle}",
        f"device={args.device}",
        f"engine.seed={seed}",
        f"run_dir={run}",
        f"storage.root={run / 'data'}",
        "engine.progress=false",
        f"engine.data.batch_size={args.batch}",
        f"method.data.views.batch_size={args.batch}",
        *args.set,
    ]
    log, steps, seconds = work / "bench.log", f"engine.max_steps={args.steps}", {}
    claim(run, [*common, steps, f"single_renders={args.single_renders}"])
    if (run / "eval" / "ganverse3d_eval.json").exists():
        return _report(run)
    capped = [f"engine.max_minutes={args.train_minutes}"] if args.train_minutes else []
    if row == "C":  # a fixed set of single renders (made once), repeated
        if not (run / "generated").exists():
            generate = [
                "source=simulator_vehicle",
                *_as_source(data),
                f"num_samples={args.single_renders}",
                f"source.batch_size={args.batch}",
                f"samples_per_shard={args.batch}",
                f"seed={seed}",
                f"storage.root={run / 'data'}",
                "storage.stream=ganverse3d-views",
                f"device={args.device}",
            ]
            seconds["generate"] = renderloop("generate", *generate, log=log)
            (run / "generated").touch()
        seconds["train"] = renderloop("train", *common, "engine.data.follow=false", steps, *capped, log=log)
    else:
        seconds["train"] = renderloop("run", *common, steps, *capped, log=log)
    if saved_step(run) < args.steps:
        save_seconds(run, seconds)
        return None
    constant = [] if mean_shape else ["method.evaluation.mean_shape_objects=0"]  # not a setting of the run
    seconds["eval"] = renderloop("eval", *common, *constant, log=log)
    save_seconds(run, seconds)
    return _report(run)


def _report(run: Path) -> dict:
    """A run's evaluation, with the steps it finished (a time cap may stop it early) and each
    command's wall seconds."""
    report = json.loads((run / "eval" / "ganverse3d_eval.json").read_text())
    return report | {"steps": saved_step(run), "seconds": saved_seconds(run)}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Row → score → (mean, 95% half-width, runs), and the constant mean-shape row the first run's
    evaluation reports beside its network (the same for every run: scored once)."""
    rows = {row: {s: tuple(mean_ci95([r[s] for r in reports])) for s in _scored(reports)}
            for row, reports in runs.items() if reports}  # fmt: skip
    first = next((reports[0] for reports in runs.values() if reports), {})
    constant = {k.removeprefix("mean_shape/"): v for k, v in first.items() if k.startswith("mean_shape/")}
    if constant:
        rows["mean_shape"] = {s: (constant[s], float("nan"), 1) for s in _scored([constant])}
    return rows


def _scored(reports: list[dict]) -> list[str]:
    """The scores of ``SCORES`` every report has."""
    return [k for k in reports[0] if k.startswith(SCORES) and all(k in r for r in reports)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--gate", required=True, help="a bench.gan_gate --work folder (its GAN and oracles)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ks", nargs="*", type=int, default=[2, 4, 6])
    p.add_argument("--k", type=int, default=4, help="style layers of a view code")
    p.add_argument("--sweep-codes", type=int, default=8)
    p.add_argument("--sweep-contents", type=int, default=16)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--samples-per-code", type=int, default=4)
    p.add_argument("--max-spread-deg", type=float, default=20.0)
    p.add_argument("--keep-broken", action="store_true", help="keep codes whose samples are not one object")
    p.add_argument(
        "--max-elevation-spread-deg",
        type=float,
        default=None,
        help="pass over codes whose contents' elevations vary more (standard deviation; default: keep)",
    )
    p.add_argument(
        "--max-size-spread",
        type=float,
        default=None,
        help="pass over codes whose contents' apparent sizes vary more (std of the log; default: keep)",
    )
    p.add_argument("--views", type=int, default=4, help="view codes per group (A) and views per object (B)")
    p.add_argument("--pool", choices=("all", "spread"), default="all", help="row A's view codes (see above)")
    p.add_argument("--single-renders", type=int, default=3000)
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-minutes", type=float, default=0.0, help="> 0: stop trainings after this long (see above)")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--parallel", type=int, default=1, help="runs sharing the device at once (after the codes)")
    p.add_argument("--work", default="")
    p.add_argument("--out", default="")
    args = p.parse_args()
    args.generator = str(Path(args.gate) / "gan" / "eval" / "generator.pt")
    args.oracle = str(Path(args.gate) / "oracle")
    work = Path(args.work or tempfile.mkdtemp(prefix="renderloop-ganverse3d-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = view_codes(args, work)
    args.labels = codes["annotation"]["labels"]
    gan_rows = any(row.startswith("A") for row in args.rows)
    args.pool_names = pool_names(args.labels, args.views, args.pool) if gan_rows else []
    for k, spread in codes["sweep"].items():
        print(
            f"k={k}: a code's spread across contents {spread['code_spread_deg']:.1f}°, "
            f"a content's across codes {spread['content_spread_deg']:.1f}°; in elevation "
            f"{spread['code_elevation_spread_deg']:.1f}° and {spread['content_elevation_spread_deg']:.1f}°"
        )
    print(
        f"annotator: {codes['annotation']['kept']} of {codes['annotation']['candidates']} codes kept, "
        f"{codes['annotation']['bins_covered']} bins, {codes['annotation']['oracle_calls']} oracle calls; "
        f"kept codes' spreads across contents: elevation {codes['annotation'].get('kept_elevation_spread_deg')}, "
        f"log size {codes['annotation'].get('kept_size_spread')}"
    )
    if gan_rows:
        print(f"row A: each group draws {args.views} of a pool of {len(args.pool_names)} view codes")
    jobs = [(row, seed) for row in args.rows for seed in args.seeds]
    share_cpus(args.parallel)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        done = pool.map(lambda job: one_run(args, *job, work, 1 if job[0] == "C" else args.views, job == jobs[0]), jobs)
        reports = dict(zip(jobs, done, strict=True))
    unfinished = [f"{row}-s{seed}" for (row, seed), report in reports.items() if report is None]
    if unfinished:
        print(f"{len(unfinished)} runs short of {args.steps} steps ({', '.join(unfinished)}): run again to continue")
    runs = {row: [reports[row, seed] for seed in args.seeds if reports[row, seed]] for row in args.rows}
    rows = summarize(runs)
    print_rows(rows)
    if args.out:
        view_pool = {"kind": args.pool, "size": len(args.pool_names), "views": args.views, "names": args.pool_names}
        write_report(args.out, view_codes=codes, view_pool=view_pool, rows=rows, runs=runs)


if __name__ == "__main__":
    main()
