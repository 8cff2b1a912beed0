"""StyleGAN2 generation throughput against its roofline, and training speed.

    python -m bench.stylegan2                                     # CPU, small
    python -m bench.stylegan2 --device cuda --resolutions 64 128 256 --batch 64 \\
        --variants eager channels_last compile --out stylegan2-gen.json
    python -m bench.stylegan2 --device cuda --resolutions 256 --batch 64 --precisions bf16 --profile
    python -m bench.stylegan2 --device cuda --resolutions --profile-training
    python -m bench.stylegan2 --device cuda --train-minutes 10 --grid sg2-grid.png --out stylegan2-train.json
    python -m bench.stylegan2 --device cuda --resolutions --train-minutes 2 --shards 8192 --sync-timing

Generation: images/s of the full generator (mapping + synthesis, ``noise_mode=const``) at each
resolution and precision (and way of running it, ``--variants``), after warm-up, against the
roofline ``peak FLOP/s ÷ FLOPs per image``; FLOPs are counted by ``torch.utils.flop_counter`` on
one image (a multiply-add is 2 FLOPs). fp32 convolutions run on TF32 tensor cores (PyTorch's cuDNN
default), so the fp32 roofline is the TF32 peak.
Training: ``renderloop run method=stylegan2`` on live simulator renders at 64² for a fixed time
(``engine.max_minutes``; with ``--work`` a second call continues the same run), or with
``--shards N`` on N renders made beforehand (``renderloop train``, no producers in the trainer's
process); kimg/s is thousands of real images shown to the discriminator per second.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.models.stylegan2.networks import SynthesisLayer

# Dense peak FLOP/s of the tensor cores: bf16, and TF32 (what fp32 convolutions run on).
PEAKS = {"H200": {"bf16": 989e12, "fp32": 494e12}, "H100": {"bf16": 989e12, "fp32": 494e12}}


def _generator(resolution: int, device: str) -> Generator:
    cfg = GeneratorConfig(img_resolution=resolution, channel_base=32768 if resolution >= 128 else 16384)
    return Generator(cfg).to(device).eval().requires_grad_(False)


def flops_per_image(G: Generator, device: str) -> float:
    z = torch.randn(1, G.z_dim, device=device)
    with FlopCounterMode(display=False) as counter:
        G(z, noise_mode="const")
    return float(counter.get_total_flops())


VARIANTS = (
    "eager", "channels_last", "compile", "compile_channels_last", "compile_cudagraphs", "compile_max_autotune",
    "compile_composed",
)  # fmt: skip


def _prepare(G: Generator, variant: str):
    """The generator as ``variant`` runs it: ``eager``, ``channels_last`` (NHWC tensors for the
    tensor cores), ``compile`` (``torch.compile``, which fuses the FIR filters and the elementwise
    work around each convolution into single kernels), ``compile_channels_last``,
    ``compile_cudagraphs`` (one CUDA graph replay per call: no kernel launches from the host) or
    ``compile_max_autotune`` (Inductor also times its own convolution and matmul kernels against
    cuDNN's and cuBLAS's; minutes of compilation). The compiled ones run each 2× layer's epilogue as
    the Triton kernel of ``upsample_act``, except ``compile_composed`` (``compile`` with
    Inductor's fusion of the composed layers instead)."""
    torch.compiler.reset()  # a compiled graph assumes the weights' layout it was traced with
    for layer in G.modules():
        if isinstance(layer, SynthesisLayer):
            layer.triton_epilogue = "never" if variant == "compile_composed" else "compiled"
    G = G.to(memory_format=torch.channels_last if variant.endswith("channels_last") else torch.contiguous_format)
    if variant == "compile_max_autotune":
        return torch.compile(G, mode="max-autotune-no-cudagraphs")
    if variant == "compile_cudagraphs":
        return torch.compile(G, mode="reduce-overhead")
    return torch.compile(G) if variant.startswith("compile") else G


def images_per_second(G, batch: int, dtype: torch.dtype, device: str, seconds: float) -> tuple[float, float]:
    """(images/s after warm-up, seconds the warm-up took: compilation for a compiled generator)."""
    z = torch.randn(batch, G.z_dim, device=device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad(), autocast:
        start = time.perf_counter()
        for _ in range(3):
            G(z, noise_mode="const")
        sync()
        warmup = time.perf_counter() - start
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            G(z, noise_mode="const")
            count += batch
        sync()
    return count / (time.perf_counter() - start), warmup


def _peak(device: str) -> dict[str, float] | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def profile(G, batch: int, device: str, rows: int = 25) -> str:
    """The most expensive kernels of two bf16 generator calls after three warm-up calls, as a table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    z = torch.randn(batch, G.z_dim, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        for _ in range(3):
            G(z, noise_mode="const")
        with profiler(activities=activities) as prof:
            for _ in range(2):
                G(z, noise_mode="const")
            if device.startswith("cuda"):
                torch.cuda.synchronize()
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def generation(args) -> list[dict]:
    rows = []
    peak = _peak(args.device)
    for res in args.resolutions:
        G = _generator(res, args.device)
        flops = flops_per_image(G, args.device)
        batches = dict.fromkeys(min(b * (256 // res) ** 2, args.max_batch) for b in args.batch)  # same pixels
        for variant, batch in itertools.product(args.variants, batches):
            runner = _prepare(G, variant)
            for precision in args.precisions:
                if variant.startswith("compile") and precision != "bf16" and "bf16" in args.precisions:
                    continue  # compiling is slow: only for the precision the target is set in
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                rate, warmup = images_per_second(runner, batch, dtype, args.device, args.seconds)
                roofline = peak[precision] / flops if peak else None
                rows.append({
                    "resolution": res, "variant": variant, "precision": precision, "batch": batch,
                    "gflops_per_image": flops / 1e9, "images_per_s": rate, "warmup_s": warmup,
                    "roofline_images_per_s": roofline, "fraction_of_roofline": rate / roofline if roofline else None,
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            if args.profile:
                table = profile(runner, batch, args.device)
                print(f"profile at {res}², batch {batch}, bf16, {variant}:\n{table}", flush=True)
        del G
        torch.compiler.reset()
    return rows


def _training_phases(G, D, batch: int, device: str):
    """One step's phases as the ``stylegan2`` method runs them (plain modules, bf16 autocast):
    ``{name: closure}``; each closure runs its phase's forward and backward."""
    real = torch.rand(batch, 3, G.img_resolution, G.img_resolution, device=device) * 2 - 1

    def z():
        return torch.randn(batch, G.z_dim, device=device)

    def g_main():
        torch.nn.functional.softplus(-D(G(z()))).mean().backward()

    def d_main():
        with torch.no_grad():
            fake = G(z())
        (torch.nn.functional.softplus(D(fake)).mean() + torch.nn.functional.softplus(-D(real)).mean()).backward()

    def d_reg():
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
        grad.float().square().sum(dim=[1, 2, 3]).mean().backward()

    return {"G_main": g_main, "D_main": d_main, "D_reg": d_reg}


def profile_training(args, batch: int = 32, resolution: int = 64) -> list[dict]:
    """Device time of each training phase at 64² (batch 32, bf16 autocast, no DeepSpeed), eager
    and with G and D compiled for the main phases (R1's double backward stays eager), with each
    phase's top kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from renderloop.models.stylegan2 import Discriminator

    torch.manual_seed(0)
    cfg = GeneratorConfig(img_resolution=resolution, channel_base=16384)
    G, D = Generator(cfg).to(args.device), Discriminator(resolution, 3, channel_base=16384).to(args.device)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for variant in ("eager", "compile"):
        Gv, Dv = (torch.compile(G), torch.compile(D)) if variant == "compile" else (G, D)
        phases = _training_phases(Gv, Dv, batch, args.device)
        phases["D_reg"] = _training_phases(G, D, batch, args.device)["D_reg"]
        for name, phase in phases.items():
            with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16):
                for _ in range(3):
                    phase()
                sync()
                start = time.perf_counter()
                for _ in range(10):
                    phase()
                sync()
                wall = (time.perf_counter() - start) / 10
                with profiler(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                    phase()
                    sync()
            events = prof.key_averages()
            device_ms = sum(e.self_device_time_total for e in events) / 1e3
            rows.append({"variant": variant, "phase": name, "wall_ms": wall * 1e3, "device_ms": device_ms})
            print(json.dumps(rows[-1]), flush=True)
            print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=8))
            G.zero_grad(set_to_none=True), D.zero_grad(set_to_none=True)
    return rows


def training(args) -> dict:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-sg2-"))
    run_dir = work / "run"
    log = run_dir / "train_log.jsonl"
    logged_before = len(log.read_text().splitlines()) if log.exists() else 0  # a resumed run
    common = [
        "method=stylegan2", f"device={args.device}", f"run_dir={run_dir}", f"storage.root={work / 'data'}",
        "engine.max_steps=10000000", f"engine.max_minutes={args.train_minutes}", "engine.log_every=50",
        "engine.progress=false", "engine.tensorboard=false", "engine.checkpoint_every=0", "engine.precision=bf16",
        "engine.data.batch_size=32", "engine.data.num_workers=4", "metrics_port=-1",
        f"engine.sync_timing={str(args.sync_timing).lower()}",
    ]  # fmt: skip
    if args.shards:  # a closed stream made beforehand: the trainer alone, no producer threads beside it
        if not (work / "data").exists():
            generate = [
                "generate", "source=simulator", "source.style=real_like", "source.resolution=64",
                f"num_samples={args.shards}", "samples_per_shard=256", f"storage.root={work / 'data'}",
                "storage.stream=stylegan2-real", f"device={args.device}",
            ]  # fmt: skip
            subprocess.run([sys.executable, "-m", "renderloop.cli", *generate], check=True, capture_output=True)
        command = [sys.executable, "-m", "renderloop.cli", "train", *common]
    else:
        command = [
            sys.executable,
            "-m",
            "renderloop.cli",
            "run",
            *common,
            "cluster.producers=4",
            "samples_per_shard=256",
        ]
    trained = subprocess.run(command, capture_output=True, text=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()][logged_before:] if log.exists() else []
    if trained.returncode or not rows:
        raise SystemExit(f"training failed:\n{(trained.stdout + trained.stderr)[-3000:]}")
    steady = rows[len(rows) // 5 :]
    # D reads one real batch per step (D_main) plus one every r1_interval steps (D_reg).
    real_per_step = 32 * (1 + 1 / 16)
    steps_per_s = sum(r["steps_per_s"] for r in steady) / len(steady)
    result = {
        "minutes": args.train_minutes,
        "first_step": rows[0]["step"],
        "steps": rows[-1]["step"] + 1,
        "steps_per_s": steps_per_s,
        "kimg_per_s": steps_per_s * real_per_step / 1e3,
        "data_wait_fraction": sum(r["data_wait_fraction"] for r in steady) / len(steady),
        **{f"{part}_seconds": sum(r[f"{part}_seconds"] for r in steady) / len(steady)
           for part in ("forward", "backward", "optimizer")},
    }  # fmt: skip
    if args.grid:
        evaluated = subprocess.run(
            [sys.executable, "-m", "renderloop.cli", "eval", "method=stylegan2", f"run_dir={run_dir}",
             f"device={args.device}"], capture_output=True, text=True,
        )  # fmt: skip
        grid = run_dir / "eval" / "samples.png"
        if evaluated.returncode or not grid.exists():
            raise SystemExit(f"evaluation failed:\n{(evaluated.stdout + evaluated.stderr)[-3000:]}")
        Path(args.grid).write_bytes(grid.read_bytes())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolutions", type=int, nargs="*", default=[64])
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="images per batch at 256² (more below)")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--variants", nargs="*", default=["eager"], choices=VARIANTS)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--profile", action="store_true", help="also print each variant's top kernels")
    p.add_argument("--profile-training", action="store_true", help="time and profile each training phase")
    p.add_argument("--train-minutes", type=float, default=0.0, help="> 0 also trains for this long")
    p.add_argument("--shards", type=int, default=0, help="> 0: train on this many samples made beforehand")
    p.add_argument("--sync-timing", action="store_true", help="time forward/backward/optimizer apart on the device")
    p.add_argument("--work", default=None, help="keep the run here; run again with it to continue training")
    p.add_argument("--grid", default=None, help="write the sample grid after training here")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    report = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.stylegan2 " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "generation": generation(args) if args.resolutions else [],
    }
    if args.profile_training:
        report["training_phases"] = profile_training(args)
    if args.train_minutes > 0:
        report["training"] = training(args)
        print(json.dumps(report["training"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
