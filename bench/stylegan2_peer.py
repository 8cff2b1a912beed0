"""StyleGAN2 training beside NVlabs' stylegan2-ada-pytorch: same images, same settings, one call.

    python -m bench.stylegan2_peer --device cuda --nvlabs PATH --resolution 64 --kimg 40 --work W --out peer.json
    python -m bench.stylegan2_peer summarize peer_s0.json peer_s1.json peer_s2.json --out peer.json   # seeds

1. Data: ``--images`` renders of the category (``source=simulator_vehicle``, the ``gan`` object
   seeds) as one closed stream, and the same RGB images unpacked into a folder of PNGs, which is
   what NVlabs' ``train.py --data`` reads.
2. NVlabs (``--nvlabs``, a checkout of stylegan2-ada-pytorch; skipped without one): its
   ``train.py``, run unchanged through ``bench.peer_compat`` (today's PyTorch), with ``--cfg auto``
   at the given batch and R1 γ, no augmentation, no mirroring, no metrics. Its log says whether
   its CUDA plugins compiled or it fell back to its reference ops; its ``stats.jsonl`` gives
   seconds per kimg per tick.
3. Ours: ``renderloop train method=stylegan2_vehicle`` on the stream with the settings ``--cfg auto``
   picks (2 mapping layers, channel_base 16384, channel_max 512, lr 0.0025, betas (0, 0.99), R1
   every 16 steps, path length weight 2 every 4 steps, an EMA half-life of its ``ema_kimg``, at
   most 5% of the images shown so far), bf16 against its fp16 layers.
4. Both are timed as kimg/s of real images shown to D after the first fifth of the run (start-up,
   compilation, cuDNN autotuning), and scored at the same kimg by ``quality_report`` (the same
   encoder, the same real images).

``--channels BASE MAX`` sets both networks' widths (NVlabs' through ``bench.peer_compat``); with
``--device cpu`` NVlabs runs on the CPU through the same shim, and both train in fp32 without
clamping (its ``--fp32``), so a small side-by-side run needs no GPU.

A call that runs out of time loses nothing finished: the same command again keeps the renders,
NVlabs' run once its last snapshot exists and our run once its models are exported, resumes our
unfinished run from its last checkpoint (``--checkpoint-every``), and scores.

``--together`` trains the two at once. That is for quality at equal kimg when time is short: each
then shares the device with the other, so its kimg/s is no peer comparison (the report says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from bench.commands import claim

STREAM = "stylegan2-real"  # method=stylegan2's real role under the default storage.stream


def auto_settings(resolution: int, batch: int) -> dict:
    """What stylegan2-ada-pytorch's ``--cfg auto`` trains at this resolution on one GPU, as our
    method's settings (``--batch`` overrides its batch; its γ comes from the batch it would pick)."""
    auto_batch = max(min(min(4096 // resolution, 32), 64), 1)
    return {
        "batch": batch,
        "r1_gamma": 0.0002 * resolution**2 / auto_batch,
        "overrides": [
            "method.mapping_layers=2", f"method.channel_base={16384 if resolution < 512 else 32768}",
            "method.channel_max=512", "method.lr=0.0025", "method.r1_interval=16", "method.pl_weight=2.0",
            "method.pl_interval=4", "method.pl_batch_shrink=2", f"method.fake_batch={batch}",
            f"method.r1_gamma={0.0002 * resolution**2 / auto_batch}",
            f"engine.ema_half_life={auto_batch * 10 / 32 * 1000 / batch}",  # its G_ema: half-life of ema_kimg
            "engine.ema_rampup=0.05",  # ... capped at 5% of the images shown so far
        ],
    }  # fmt: skip


def make_data(work: Path, resolution: int, images: int, device: str) -> Path:
    """The stream both trainers learn from, and its RGB as ``work/images/<key>.png``."""
    from renderloop.datasets.reader import ShardStream

    folder = work / "images"
    if not (work / "data" / STREAM).exists():
        generate = [
            "generate", "source=simulator_vehicle", "source.style=synthetic", f"source.resolution={resolution}",
            "source.object_seeds=gan", f"num_samples={images}", "samples_per_shard=256",
            f"storage.root={work / 'data'}", f"storage.stream={STREAM}", f"device={device}",
        ]  # fmt: skip
        subprocess.run([sys.executable, "-m", "renderloop.cli", *generate], check=True, capture_output=True)
    if not folder.exists():
        tmp = work / "images.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for sample in ShardStream(str(work / "data"), STREAM, follow=False, fields=["rgb.png"]):
            rgb = (sample["rgb.png"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(rgb).save(tmp / f"{sample['__key__']}.png")
        tmp.rename(folder)
    return folder


def nvlabs_plugins(log: str) -> dict[str, str]:
    """Which implementation each NVlabs custom op ran: ``cuda`` (its plugin compiled) or
    ``reference`` (the build failed and it fell back to plain PyTorch ops)."""
    found = dict(re.findall(r'Setting up PyTorch plugin "(\w+)"\.\.\. (Done|Failed)', log))
    return {name: "cuda" if status == "Done" else "reference" for name, status in found.items()}


def nvlabs_seconds_per_kimg(stats_jsonl: str) -> list[float]:
    """Seconds per kimg of each tick after the first (tick 0 holds the start-up) from ``stats.jsonl``."""
    ticks = [json.loads(line) for line in stats_jsonl.splitlines() if line.strip()]
    return [t["Timing/sec_per_kimg"]["mean"] for t in ticks if t.get("Progress/tick", {}).get("mean", 0) >= 1]


def run_nvlabs(args, folder: Path, settings: dict) -> dict:
    outdir, kimg = Path(args.work) / "nvlabs", max(round(args.kimg), 1)
    command = [
        sys.executable, "-m", "bench.peer_compat", str(Path(args.nvlabs) / "train.py"), f"--outdir={outdir}",
        f"--data={folder}", "--gpus=1",
        "--cfg=auto", f"--batch={settings['batch']}", f"--gamma={settings['r1_gamma']}", "--mirror=0",
        "--aug=noaug", "--metrics=none", f"--kimg={kimg}", "--snap=1000", f"--seed={args.seed}",
    ]  # fmt: skip
    finished = sorted(outdir.glob(f"*/network-snapshot-{kimg:06d}.pkl"))
    if finished:  # a call that ran out of time after training: keep the run, time it from its own log
        return _nvlabs_report(finished[-1].parent, (finished[-1].parent / "log.txt").read_text())
    env = dict(os.environ)
    if args.channels:
        env["PEER_CHANNELS"] = ",".join(str(c) for c in args.channels)
    if args.device == "cpu":  # its mixed precision is fp16 on CUDA: both run fp32 without clamping there
        env["PEER_DEVICE"] = "cpu"
        command.append("--fp32=true")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log = done.stdout + done.stderr
    runs = sorted(outdir.glob("*/stats.jsonl"))
    if done.returncode or not runs:
        raise SystemExit(f"stylegan2-ada-pytorch failed:\n{log[-3000:]}")
    return _nvlabs_report(runs[-1].parent, log)


def _nvlabs_report(run: Path, log: str) -> dict:
    seconds = nvlabs_seconds_per_kimg((run / "stats.jsonl").read_text())
    steady = seconds[len(seconds) // 5 :] or seconds
    snapshots = sorted(run.glob("network-snapshot-*.pkl"))
    return {
        "plugins": nvlabs_plugins(log),
        "kimg_per_s": len(steady) / sum(steady),
        "ticks": len(seconds),
        "snapshot": str(snapshots[-1]) if snapshots else None,
    }


def run_ours(args, settings: dict) -> dict:
    run_dir = Path(args.work) / "ours"
    log = run_dir / "train_log.jsonl"
    if (run_dir / "models" / "G.pt").exists() and log.exists():  # trained by an earlier call
        return _ours_report(run_dir, log, settings)
    steps = max(int(args.kimg * 1000 / settings["batch"]), 1)
    command = [
        sys.executable, "-m", "renderloop.cli", "train", "method=stylegan2_vehicle", f"device={args.device}",
        f"run_dir={run_dir}", f"storage.root={Path(args.work) / 'data'}",
        f"method.data.real.resolution={args.resolution}",
        f"method.data.real.batch_size={settings['batch']}", f"engine.data.batch_size={settings['batch']}",
        f"engine.max_steps={steps}", "engine.log_every=20", "engine.progress=false", "engine.tensorboard=false",
        f"engine.checkpoint_every={args.checkpoint_every}", "engine.precision=bf16", "engine.data.num_workers=4",
        "metrics_port=-1",
        "engine.data.follow=false", f"engine.seed={args.seed}", *settings["overrides"], *_matched(args), *args.set,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode or not log.exists():
        raise SystemExit(f"renderloop train failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return _ours_report(run_dir, log, settings)


def _ours_report(run_dir: Path, log: Path, settings: dict) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    if not rows:
        raise SystemExit(f"renderloop train logged no window in {run_dir}: train for more --kimg")
    steady = steady_windows(rows)
    steps_per_s = sum(r["steps_per_s"] for r in steady) / len(steady)
    return {
        "kimg_per_s": steps_per_s * settings["batch"] / 1e3,
        "steps": rows[-1]["step"] + 1,
        "data_wait_fraction": sum(r["data_wait_fraction"] for r in steady) / len(steady),
        "run_dir": str(run_dir),
    }


def steady_windows(rows: list[dict]) -> list[dict]:
    """The log's windows after the first fifth, less each process's first window: a call that
    resumed a killed run starts up and compiles again."""
    later = rows[len(rows) // 5 :] or rows
    return [r for r in later if r.get("window", 2) > 1] or later


def _matched(args) -> list[str]:
    """Our overrides for ``--channels`` and the CPU (fp32, no clamping, as NVlabs' ``--fp32``)."""
    out = [f"method.channel_base={args.channels[0]}", f"method.channel_max={args.channels[1]}"] if args.channels else []
    return out + (["engine.precision=fp32", "method.conv_clamp=null"] if args.device == "cpu" else [])


def score(args, nvlabs: dict | None, ours: dict) -> dict:
    """Both generators' feature distances to the same real images (``quality_report``)."""
    import torch

    from renderloop.cluster.launch import TrainConfig
    from renderloop.config import load_config
    from renderloop.models.stylegan2.checkpoints import load_nvlabs_pickle
    from renderloop.trainers.evaluation import load_run
    from renderloop.trainers.stylegan2_quality import quality_report

    overrides = ["method=stylegan2_vehicle", f"method.data.real.resolution={args.resolution}", *_matched(args),
                 *args.set]  # fmt: skip
    cfg = load_config("train", overrides, TrainConfig).method_config
    device = torch.device(args.device)
    _, nets = load_run("stylegan2", None, ours["run_dir"], args.device)
    scores = {"ours": quality_report(nets["G"], cfg.data["real"], cfg.evaluation, device)}
    if nvlabs and nvlabs["snapshot"]:
        G = load_nvlabs_pickle(nvlabs["snapshot"], which="G_ema").to(device)
        scores["nvlabs"] = quality_report(G, cfg.data["real"], cfg.evaluation, device)
    return scores


QUALITY = ("fd", "kid", "precision", "recall")


def summarize(reports: list[dict]) -> dict:
    """Seeds' reports of one setting → each trainer's mean ± 95% interval of kimg/s and quality, and
    ours − NVlabs paired by seed (the same data and seed in both)."""
    from renderloop.stats import mean_ci95

    both = [r for r in reports if r["nvlabs"] and r["quality"] and "nvlabs" in r["quality"]]
    if not both:
        raise ValueError("summarize(): no report has both trainers scored")
    out = {"seeds": len(both), "trained_together": any(r.get("trained_together") for r in both), "trainers": {},
           "ours_minus_nvlabs": {}}  # fmt: skip
    for trainer in ("nvlabs", "ours"):
        row = {"kimg_per_s": tuple(mean_ci95([r[trainer]["kimg_per_s"] for r in both]))}
        row |= {m: tuple(mean_ci95([r["quality"][trainer][m] for r in both])) for m in QUALITY}
        out["trainers"][trainer] = row
    for m in QUALITY:
        per_seed = [r["quality"]["ours"][m] - r["quality"]["nvlabs"][m] for r in both]
        summary = mean_ci95(per_seed)
        out["ours_minus_nvlabs"][m] = {"per_seed": per_seed, "mean": summary.mean, "ci95": summary.half_width,
                                       "exceeds_interval": summary.excludes(0.0)}  # fmt: skip
    return out


def main() -> None:
    if sys.argv[1:2] == ["summarize"]:
        p = argparse.ArgumentParser(prog="bench.stylegan2_peer summarize", description=summarize.__doc__)
        p.add_argument("reports", nargs="+", help="one report per seed, of one setting")
        p.add_argument("--out", default=None)
        args = p.parse_args(sys.argv[2:])
        summary = summarize([json.loads(Path(f).read_text()) for f in args.reports])
        print(json.dumps(summary, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--nvlabs", default="", help="a stylegan2-ada-pytorch checkout (empty: ours alone)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--kimg", type=float, default=40, help="real images shown to D, in thousands, per trainer")
    p.add_argument("--images", type=int, default=20000, help="renders in the training set")
    p.add_argument(
        "--channels",
        nargs=2,
        type=int,
        default=None,
        metavar=("BASE", "MAX"),
        help="channel_base and channel_max of both trainers' networks (default: --cfg auto's)",
    )
    p.add_argument("--seed", type=int, default=0, help="both trainers' seed")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for our run")
    p.add_argument("--no-score", action="store_true", help="time only")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="our run's checkpoint interval: a call that runs out of time is then resumed by the next one "
        "(0: none; a checkpoint counts in the window it falls in)",
    )
    p.add_argument(
        "--together",
        action="store_true",
        help="train NVlabs' and ours at once (quality at equal kimg; their speeds then share the device)",
    )
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.work = args.work or tempfile.mkdtemp(prefix="bench-sg2-peer-")
    claim(Path(args.work), [f"{key}={getattr(args, key)}" for key in ("device", "nvlabs", "resolution", "batch", "kimg",
                                                                    "images", "channels", "seed", "set")])  # fmt: skip
    settings = auto_settings(args.resolution, args.batch)
    folder = make_data(Path(args.work), args.resolution, args.images, args.device)
    if args.nvlabs and args.together:
        with ThreadPoolExecutor(2) as pool:
            nvlabs_run = pool.submit(run_nvlabs, args, folder, settings)
            ours_run = pool.submit(run_ours, args, settings)
            nvlabs, ours = nvlabs_run.result(), ours_run.result()
    else:
        nvlabs = run_nvlabs(args, folder, settings) if args.nvlabs else None
        ours = run_ours(args, settings)
    report = {
        "machine": platform.node(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.stylegan2_peer " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "settings": settings,
        "nvlabs": nvlabs,
        "ours": ours,
        "trained_together": bool(args.nvlabs and args.together),
        "ours_vs_nvlabs": ours["kimg_per_s"] / nvlabs["kimg_per_s"] if nvlabs else None,
        "quality": None if args.no_score else score(args, nvlabs, ours),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
