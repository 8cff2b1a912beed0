"""StyleGAN2 generation throughput against its roofline, and training speed.

    python -m bench.stylegan2                                     # CPU, small
    python -m bench.stylegan2 --device cuda --resolutions 64 128 256 --out stylegan2-gen.json
    python -m bench.stylegan2 --device cuda --train-minutes 10 --grid sg2-grid.png --out stylegan2-train.json

Generation: images/s of the full generator (mapping + synthesis, ``noise_mode=const``) at each
resolution and precision, after warm-up, against the roofline ``peak FLOP/s ÷ FLOPs per image``;
FLOPs are counted by ``torch.utils.flop_counter`` on one image (a multiply-add is 2 FLOPs).
Training: ``renderloop run method=stylegan2`` on live simulator renders at 64² for a fixed time;
kimg/s is thousands of real images shown to the discriminator per second.
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

import torch
from torch.utils.flop_counter import FlopCounterMode

from renderloop.models.stylegan2 import Generator, GeneratorConfig

# Dense peak FLOP/s of the device's tensor cores (bf16) and of fp32 math without TF32.
PEAKS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12}}


def _generator(resolution: int, device: str) -> Generator:
    cfg = GeneratorConfig(img_resolution=resolution, channel_base=32768 if resolution >= 128 else 16384)
    return Generator(cfg).to(device).eval().requires_grad_(False)


def flops_per_image(G: Generator, device: str) -> float:
    z = torch.randn(1, G.z_dim, device=device)
    with FlopCounterMode(display=False) as counter:
        G(z, noise_mode="const")
    return float(counter.get_total_flops())


def images_per_second(G: Generator, batch: int, dtype: torch.dtype, device: str, seconds: float) -> float:
    z = torch.randn(batch, G.z_dim, device=device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        for _ in range(3):
            G(z, noise_mode="const")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            G(z, noise_mode="const")
            count += batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def _peak(device: str) -> dict[str, float] | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def generation(args) -> list[dict]:
    rows = []
    peak = _peak(args.device)
    for res in args.resolutions:
        G = _generator(res, args.device)
        flops = flops_per_image(G, args.device)
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            rate = images_per_second(G, args.batch, dtype, args.device, args.seconds)
            roofline = peak[precision] / flops if peak else None
            rows.append({
                "resolution": res, "precision": precision, "batch": args.batch, "gflops_per_image": flops / 1e9,
                "images_per_s": rate, "roofline_images_per_s": roofline,
                "fraction_of_roofline": rate / roofline if roofline else None,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        del G
    return rows


def training(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-sg2-"))
    run_dir = work / "run"
    command = [
        sys.executable, "-m", "renderloop.cli", "run", "method=stylegan2", f"device={args.device}",
        f"run_dir={run_dir}", f"storage.root={work / 'data'}", "engine.max_steps=1000000", "engine.log_every=50",
        "engine.progress=false", "engine.image_every=0", "engine.checkpoint_every=0", "engine.precision=bf16",
        "engine.data.batch_size=32", "engine.data.num_workers=4", "cluster.producers=4", "samples_per_shard=256",
        "metrics_port=-1",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=args.train_minutes * 60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=120)
    log = run_dir / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not rows:
        raise SystemExit(f"training logged nothing:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    steady = rows[len(rows) // 5 :]
    # D reads one real batch per step (D_main) plus one every r1_interval steps (D_reg).
    real_per_step = 32 * (1 + 1 / 16)
    steps_per_s = sum(r["steps_per_s"] for r in steady) / len(steady)
    result = {
        "steps": rows[-1]["step"] + 1,
        "steps_per_s": steps_per_s,
        "kimg_per_s": steps_per_s * real_per_step / 1e3,
    }
    if args.grid:
        subprocess.run([sys.executable, "-m", "renderloop.cli", "eval", "method=stylegan2", f"run_dir={run_dir}",
                        f"device={args.device}"], check=False, capture_output=True)  # fmt: skip
        grid = run_dir / "eval" / "samples.png"
        if grid.exists():
            Path(args.grid).write_bytes(grid.read_bytes())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolutions", type=int, nargs="*", default=[64])
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--train-minutes", type=float, default=0.0, help="> 0 also times training")
    p.add_argument("--grid", default=None, help="write the sample grid after training here")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    report = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.stylegan2 " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "generation": generation(args) if args.resolutions else [],
    }
    if args.train_minutes > 0:
        report["training"] = training(args)
        print(json.dumps(report["training"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
