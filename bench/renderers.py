"""Renderer throughput: forward and forward+backward images/s and peak memory.

Renders icospheres (1,280 / 5,120 / 20,480 faces) with per-vertex colours through ``MeshRenderer``
(rasterize → interpolate normals and colours → Lambertian shading), each batch item from its own
viewpoint. Forward runs without autograd; forward+backward backpropagates the mean colour (and the
soft silhouette where asked) to vertex positions and colours.

    python -m bench.renderers                       # CPU default grid
    python -m bench.renderers --device cuda         # GPU default grid
    python -m bench.renderers --settings 64x256x5120 --compile --out results.json
    python -m bench.renderers --backends torch pytorch3d     # the same renderer on each backend, one process
    python -m bench.renderers --device cuda --launch 1x32x4 1x32x1 4x32x4 2x64x4   # z-buffer launch shapes
    python -m bench.renderers --device cuda --compile --no-eager --modes fwd+bwd     # compiled training step only
    python -m bench.renderers --device cuda --backends torch nvdiffrast --reference nvdiffrast --rounds 7
    python -m bench.renderers --device cuda --compile --fragments torch triton   # the fragment math's two paths

Peak memory is the most a timed block allocated above what was allocated when it began (the
variants of a setting are built together, and each holds its scene).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import platform
import resource
import time
from dataclasses import replace
from datetime import datetime, timezone

import torch

from bench.timing import synchronize
from renderloop.renderers import _raster_triton
from renderloop.renderers.renderer import MeshRenderer, RendererConfig
from tests.renderers.helpers import orbit_scene

SUBDIVISIONS = {1280: 3, 5120: 4, 20480: 5}
DEFAULT_GRID = {
    "cpu": ["8x128x1280", "8x256x5120", "64x256x5120"],
    "cuda": ["64x128x5120", "64x256x5120", "256x256x5120", "64x512x5120", "64x256x20480"],
}


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def make_step(batch: int, res: int, faces: int, *, device, mode: str, soft: bool, compile_: bool, backend="torch",
              zbuffer: str = "triton", launch: str = "", fragments: str = "triton"):  # fmt: skip
    """A closure that renders (and for ``fwd+bwd`` backpropagates) one batch; ``zbuffer="tensor"``
    keeps the renderer on the candidate lists and tensor code instead of the Triton kernels (the
    z-buffer's, the fragments' and the soft silhouette's); ``fragments="torch"`` keeps only the
    fragment math as (compiled) tensor code, ``"triton_pixelwise"`` its kernels with a backward
    pass that adds each pixel's gradients on its own; ``launch`` shapes the z-buffer's and the soft
    silhouette's programs (``_raster_triton.Launch``, e.g. ``4x32x1``; empty: the default)."""
    cfg = RendererConfig(height=res, width=res, soft_mask=soft, compile=compile_, backend=backend)
    renderer = MeshRenderer(cfg)
    if zbuffer == "tensor":
        renderer.raster_context = replace(renderer.raster_context, zbuffer=None, fragments=None, soft_sums=None)
    if fragments == "torch":
        renderer.raster_context = replace(renderer.raster_context, fragments=None)
    if fragments == "triton_pixelwise":
        pixelwise = functools.partial(_raster_triton.fragments, runs=False)
        renderer.raster_context = replace(renderer.raster_context, fragments=pixelwise)
    if zbuffer != "tensor" and launch:
        shape = _raster_triton.Launch.parse(launch)
        renderer.raster_context = replace(
            renderer.raster_context,
            zbuffer=functools.partial(_raster_triton.nearest_face_keys, launch=shape),
            soft_sums=functools.partial(_raster_triton.soft_sums, launch=shape),
        )
    verts, face_idx, R, t, K = orbit_scene(batch, (res, res), SUBDIVISIONS[faces], device=device)
    colors = 0.5 + 0.5 * verts.detach()
    light = torch.nn.functional.normalize(torch.tensor([[0.3, -0.4, -1.0]], device=device), dim=-1).expand(batch, 3)
    train = mode == "fwd+bwd"

    def step():
        v = verts.clone().requires_grad_(train)
        c = colors.clone().requires_grad_(train)
        with torch.set_grad_enabled(train):
            out = renderer(v, face_idx, c, R, t, K, light)
            if train:
                (out.rgb.mean() + out.mask.mean()).backward()
        return out

    return step


def prepare(batch: int, res: int, faces: int, *, device, mode: str, soft: bool, compile_: bool,
            backend: str = "torch", zbuffer: str = "triton", launch: str = "", fragments: str = "triton"):  # fmt: skip
    """``make_step``'s closure after five warm-up batches (allocator, compilation and its
    dynamic-shape recompile, caches)."""
    step = make_step(batch, res, faces, device=device, mode=mode, soft=soft, compile_=compile_, backend=backend,
                     zbuffer=zbuffer, launch=launch, fragments=fragments)  # fmt: skip
    for _ in range(5):
        step()
    synchronize(device)
    return step


def time_block(step, iters: int, device) -> tuple[float, float, float]:
    """Seconds per batch over ``iters`` batches, the block's peak memory in MiB above what was
    allocated when it began (on the CPU: the process's peak RSS), and the last batch's coverage."""
    synchronize(device)
    base = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    start = time.perf_counter()
    for _ in range(iters):
        out = step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    return seconds, _peak_mib(device) - base, float(out.fragments.mask.float().mean())


def bench_variants(batch: int, res: int, faces: int, variants: list[dict], *, device, iters: int,
                   rounds: int = 1) -> list[dict]:  # fmt: skip
    """Time every variant (``prepare``'s keyword arguments) of one setting in ``rounds`` rounds,
    each round timing every variant once, in an order rotated by one per round, so that drifts of
    the device's clocks fall on all variants alike. Images/s is the median round's; each round's
    time is kept so that ratios can be taken round by round."""
    steps = [prepare(batch, res, faces, device=device, **v) for v in variants]
    times, peaks, coverage = [[] for _ in variants], [0.0] * len(variants), [0.0] * len(variants)
    for r in range(rounds):
        for i in [(r + j) % len(variants) for j in range(len(variants))]:
            seconds, peak, coverage[i] = time_block(steps[i], iters, device)
            times[i].append(seconds)
            peaks[i] = max(peaks[i], peak)
    rows = []
    for v, seconds, peak, cover in zip(variants, times, peaks, coverage, strict=True):
        backend, zbuffer = v.get("backend", "torch"), v.get("zbuffer", "triton")
        zbuffer_used = _zbuffer_used(backend, zbuffer, device)
        fragments = _fragments_used(backend, zbuffer_used, v.get("fragments", "triton"))
        median = sorted(seconds)[len(seconds) // 2]
        rows.append({
            "backend": backend, "batch": batch, "resolution": res, "faces": faces, "mode": v["mode"],
            "soft_mask": v["soft"], "compile": v["compile_"], "zbuffer": zbuffer_used,
            "launch": (v.get("launch") or str(_raster_triton.Launch())) if zbuffer_used == "triton" else "",
            "fragments": fragments,
            "ms_per_batch": 1e3 * median, "images_per_s": batch / median, "peak_mib": peak, "coverage": cover,
            "round_seconds": seconds,
        })  # fmt: skip
    return rows


def round_ratios(rows: list[dict], reference: str) -> list[dict]:
    """Each row's speed over the ``reference`` backend's row of the same setting, mode, silhouette
    and compilation, round by round (reference time ÷ its time): median, lowest and highest."""
    key = ("batch", "resolution", "faces", "mode", "soft_mask", "compile")
    refs = {tuple(r[k] for k in key): r for r in rows if r["backend"] == reference}
    out = []
    for r in rows:
        ref = refs.get(tuple(r[k] for k in key))
        if ref is None or r is ref:
            continue
        ratios = sorted(a / b for a, b in zip(ref["round_seconds"], r["round_seconds"], strict=True))
        named = {k: r.get(k, "") for k in (*key, "backend", "zbuffer", "launch", "fragments")}
        out.append(named | {"reference": reference, "median": ratios[len(ratios) // 2], "low": ratios[0],
                            "high": ratios[-1]})  # fmt: skip
    return out


def _fragments_used(backend: str, zbuffer_used: str, fragments: str) -> str:
    if backend != "torch":
        return backend
    return fragments if zbuffer_used == "triton" else "torch"


def _zbuffer_used(backend: str, zbuffer: str, device) -> str:
    if backend != "torch":
        return backend
    return "triton" if zbuffer == "triton" and _raster_triton.supports(device) else "tensor"


def profile(setting: str, device: torch.device, compile_: bool) -> None:
    """Print where two forward+backward batches spend their time (after warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, res, faces = (int(x) for x in setting.split("x"))
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    step = make_step(batch, res, faces, device=device, mode="fwd+bwd", soft=False, compile_=compile_)
    for _ in range(3):
        step()
    synchronize(device)
    with torch_profile(activities=activities, record_shapes=True, with_stack=True) as prof:
        step()
        step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20))
    # The most expensive ops, with where they are called from and their input shapes.
    cost = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    ops = [e for e in prof.key_averages(group_by_input_shape=True, group_by_stack_n=4) if e.key.startswith("aten::")]
    for event in sorted(ops, key=cost, reverse=True)[:8]:
        print(f"{event.key} {cost(event) / 1e3:.2f} ms shapes={event.input_shapes}")
        print("   " + "\n   ".join(event.stack[:4]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--settings", nargs="*", help="BATCHxRESxFACES, faces in " + str(sorted(SUBDIVISIONS)))
    parser.add_argument("--iters", type=int, default=0, help="timed iterations (default: 20 on GPU, 3 on CPU)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd shading")
    parser.add_argument("--soft", action="store_true", help="also time with the soft silhouette")
    parser.add_argument("--no-eager", action="store_true", help="with --compile, time only the compiled renderer")
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument(
        "--zbuffer",
        nargs="*",
        default=["triton"],
        choices=["triton", "tensor"],
        help="z-buffer (and, compiled, soft-silhouette) passes of the torch backend to time, in turn",
    )
    parser.add_argument(
        "--launch",
        nargs="*",
        default=[""],
        metavar="FxBxW",
        help="launch shapes of the Triton z-buffer and soft silhouette to time, in turn: faces per program x "
        "pixel block x warps",
    )
    parser.add_argument(
        "--fragments",
        nargs="*",
        default=["triton"],
        choices=["triton", "triton_pixelwise", "torch"],
        help="with the Triton z-buffer: the fragment math as Triton kernels (pixelwise: without summing a face's "
        "runs of pixels before adding gradients) or as (compiled) tensor code, in turn",
    )
    parser.add_argument("--backends", nargs="*", default=["torch"], help="renderer backends to time, in turn")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each timing every variant of a setting once")
    parser.add_argument("--reference", default="", help="a backend to divide by, round by round (e.g. nvdiffrast)")
    parser.add_argument("--out", default="", help="write results as JSON here")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of the first setting's fwd+bwd")
    args = parser.parse_args()
    device = torch.device(args.device)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    settings = args.settings or DEFAULT_GRID[device.type]
    compiles = [False] * (not (args.compile and args.no_eager)) + [True] * args.compile
    triton = _raster_triton.supports(device)
    variants = [(soft, comp, z, launch, frag) for soft in [False] + [True] * args.soft for comp in compiles
                for z in args.zbuffer
                for launch in (args.launch if z == "triton" and triton else [""])
                for frag in (args.fragments if z == "triton" and triton else ["torch"])]  # fmt: skip
    rows = []
    header = (
        f"{'backend':>10} {'setting':>16} {'mode':>8} {'soft':>5} {'comp':>5} {'zbuffer':>7} {'launch':>8} "
        f"{'frags':>7} {'ms/batch':>9} {'img/s':>9} {'peak MiB':>9} {'cover':>6}"
    )
    for setting in settings:
        batch, res, faces = (int(x) for x in setting.split("x"))
        every = itertools.product(args.backends, variants, args.modes)
        chosen = [dict(backend=backend, soft=soft, compile_=comp, zbuffer=zbuffer, launch=launch, fragments=frag,
                       mode=mode)
                  for backend, (soft, comp, zbuffer, launch, frag), mode in every
                  if backend == "torch" or (zbuffer, launch, frag) == (variants[0][2:])]  # fmt: skip
        found = bench_variants(batch, res, faces, chosen, device=device, iters=iters, rounds=args.rounds)
        rows += found
        print(header)
        for r in found:
            print(
                f"{r['backend']:>10} {setting:>16} {r['mode']:>8} {str(r['soft_mask']):>5} {str(r['compile']):>5} "
                f"{r['zbuffer']:>7} {r['launch']:>8} {r['fragments']:>7} {r['ms_per_batch']:9.2f} "
                f"{r['images_per_s']:9.0f} {r['peak_mib']:9.0f} {r['coverage']:6.2f}",
                flush=True,
            )
    ratios = round_ratios(rows, args.reference) if args.reference else []
    for q in ratios:
        print(f"{q['backend']} {q['zbuffer']} {q['launch']} {q['fragments']} "
              f"{q['batch']}x{q['resolution']}x{q['faces']} {q['mode']} ÷ {q['reference']}: "
              f"{q['median']:.3f} (rounds {q['low']:.3f}–{q['high']:.3f})")  # fmt: skip
    if args.profile:
        profile(settings[0], device, args.compile)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    meta = {
        "device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "iters": iters, "rounds": args.rounds,
    }  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "ratios": ratios}, f, indent=1)
    print(json.dumps(meta))
    assert math.isfinite(rows[-1]["images_per_s"])


if __name__ == "__main__":
    main()
