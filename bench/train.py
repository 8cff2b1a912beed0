"""Trainer throughput: SimGAN samples/s, the step split (data wait / forward / backward /
optimizer) and the data-wait fraction, per ZeRO stage.

    python -m bench.train                                             # CPU, small
    python -m bench.train --device cuda --zero 0 1 2 --out train-1gpu.json
    python -m bench.train --device cuda --generate-only               # make the streams once, then:
    torchrun --standalone --nproc_per_node 2 -m bench.train --device cuda --zero 2 --out train-2gpu.json
    python -m bench.train --device cuda --live --producers 4          # Ray producer actors, same host
    python -m bench.train --resolution 16 --batch 1 --operators       # tensor operators per step

By default the streams are generated first (closed, then repeated by the reader: the trainer never
waits for producers, only for reading and decoding). ``--live`` trains while producer actors
publish (``renderloop run cluster=ray``: Ray producer actors sharing the GPU with one Ray Train
worker). Throughput counts the samples of every rank; the step split
needs device synchronization (``engine.sync_timing``), so ``--split`` runs time it apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.operators import OperatorCount
from renderloop.cluster.config import ClusterConfig
from renderloop.cluster.launch import TrainConfig, run, train_worker
from renderloop.config import load_config
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.sources import build_source, source_config
from renderloop.datasets.storage import Storage


def _config(args, zero: int, run_dir: Path, sync: bool) -> TrainConfig:
    res, batch = args.resolution, args.batch
    overrides = [
        "method=simgan",
        f"method.data.synthetic.resolution={res}",
        f"method.data.real.resolution={res}",
        f"method.data.synthetic.batch_size={batch}",
        f"method.data.real.batch_size={batch}",
        f"method.channels={args.channels}",
        "method.pretrain_refiner_steps=0",
        "method.pretrain_discriminator_steps=0",
        f"engine.zero_stage={zero}",
        f"engine.precision={args.precision}",
        f"engine.max_steps={args.warmup + args.steps}",
        "engine.checkpoint_every=0",
        "engine.log_every=1",
        "engine.image_every=0",
        "engine.tensorboard=false",
        "engine.progress=false",
        "engine.resume=false",
        f"engine.sync_timing={str(sync).lower()}",
        f"engine.data.batch_size={batch}",
        f"engine.data.num_workers={args.loader_workers}",
        "engine.data.shuffle_buffer=512",
        f"storage.root={args.root}",
        f"run_dir={run_dir}",
        f"device={args.device}",
        f"samples_per_shard={batch * 4}",
        f"cluster.producers={args.producers}",
        "max_backlog_shards=64",
    ]
    return load_config("train", overrides, TrainConfig)


def generate(cfg: TrainConfig, samples: int) -> None:
    """Closed streams of ``samples`` samples each (skipped when they exist)."""
    storage = Storage(cfg.storage.root)
    for role, node in cfg.streams().items():
        ledger = Ledger(storage, cfg.stream(role))
        if ledger.closed and ledger.entries():
            continue
        name, scfg = source_config(node)
        source = build_source(name, scfg, "cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        start = time.perf_counter()
        Producer(source, ledger, "p0", samples_per_shard=cfg.samples_per_shard, seed=5).run(samples)
        ledger.close()
        print(f"generated {samples} {role} samples in {time.perf_counter() - start:.1f} s", flush=True)


def _wait_for_streams(cfg: TrainConfig) -> None:
    storage = Storage(cfg.storage.root)
    while not all(Ledger(storage, cfg.stream(r)).closed for r in cfg.streams()):
        time.sleep(1)


def measure(args, zero: int, sync: bool) -> dict | None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    run_dir = Path(args.root) / f"run-zero{zero}-w{world}-{'split' if sync else 'fast'}"
    if rank == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = _config(args, zero, run_dir, sync)
    if args.live:
        cfg.storage.stream = f"live{zero}{int(sync)}"
        gpu = args.device != "cpu"
        cfg.cluster = ClusterConfig(
            mode="ray",
            producers=args.producers,
            # All producers of both streams share half of the GPU; the trainer has the other half.
            num_gpus_per_producer=0.5 / (2 * args.producers) if gpu else 0.0,
            num_cpus_per_producer=1.0 if gpu else 0.5,
            gpus_per_worker=0.5 if gpu else 0.0,
            cpus_per_worker=1.0 if gpu else 0.5,
        )
        run(cfg, [])
    else:
        train_worker(cfg)
    if rank:
        return None
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= args.warmup]
    seconds = sum(r["step_seconds"] for r in rows)
    samples = sum(r["samples_per_s"] * r["step_seconds"] for r in rows) * world

    def ms(key: str) -> float:
        return 1e3 * sum(r[key] for r in rows) / len(rows)

    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    return {
        "zero": zero,
        "world": world,
        "live": args.live,
        "sync_timing": sync,
        "samples_per_s": samples / seconds,
        "step_ms": 1e3 * seconds / len(rows),
        "data_wait_ms": ms("data_wait_seconds"),
        "forward_ms": ms("forward_seconds"),
        "backward_ms": ms("backward_seconds"),
        "optimizer_ms": ms("optimizer_seconds"),
        "data_wait_fraction": sum(r["data_wait_seconds"] for r in rows) / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan"),
    }


def operators(args, zero: int) -> dict:
    """Tensor operators of one engine step after a few warm-up steps (each non-view operator is
    about one kernel launch on a GPU), counted on this machine."""
    from renderloop.trainers.engine import Trainer
    from renderloop.trainers.reporting import StepTimes

    cfg = _config(args, zero, Path(args.root) / f"run-zero{zero}-operators", sync=False)
    trainer = Trainer(cfg.method_name, cfg.method_config, cfg.engine, root=cfg.storage.root,
                      stream_prefix=cfg.storage.stream, run_dir=cfg.run_dir, device=cfg.device)  # fmt: skip
    trainer._open_data()
    try:
        for _ in range(3):
            trainer.train_step(StepTimes())
            trainer.step += 1
        with OperatorCount() as count:
            trainer.train_step(StepTimes())
    finally:
        for data in trainer.data.values():
            data.close()
    return {"zero": zero, "operators_per_step": count.total, "kernels_per_step": count.kernels,
            "top": dict(count.by_name.most_common(12))}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--zero", type=int, nargs="+", default=[0])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=64, help="per rank and stream")
    p.add_argument("--channels", type=int, default=64, help="refiner width")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--samples", type=int, default=8192, help="samples per generated stream")
    p.add_argument("--loader-workers", type=int, default=4, help="dataloader workers per stream")
    p.add_argument("--producers", type=int, default=2, help="--live: producer actors per stream")
    p.add_argument("--live", action="store_true")
    p.add_argument("--split", action="store_true", help="also time the step split (device syncs)")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--operators", action="store_true", help="count one step's tensor operators instead of timing")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "renderloop-bench-train"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rank = int(os.environ.get("RANK", 0))

    cfg = _config(args, 0, Path(args.root) / "gen", False)
    if not args.live:
        generate(cfg, args.samples) if rank == 0 else _wait_for_streams(cfg)
    if args.generate_only:
        return
    results = []
    for zero in args.zero:
        if args.operators:
            results.append(operators(args, zero))
            print(f"zero={zero}: {results[-1]['operators_per_step']:,} operators per step, "
                  f"{results[-1]['kernels_per_step']:,} not views", flush=True)  # fmt: skip
            continue
        for sync in (False, True) if args.split else (False,):
            row = measure(args, zero, sync)
            if row is not None:
                results.append(row)
                print(
                    f"zero={zero} world={row['world']} sync={sync}: {row['samples_per_s']:,.0f} samples/s, "
                    f"step {row['step_ms']:.1f} ms (wait {row['data_wait_ms']:.2f}, fwd {row['forward_ms']:.1f}, "
                    f"bwd {row['backward_ms']:.1f}, opt {row['optimizer_ms']:.1f}), "
                    f"data-wait {100 * row['data_wait_fraction']:.2f}%, peak {row['peak_gib']:.2f} GiB",
                    flush=True,
                )
    if rank == 0 and args.out:
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "device": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "args": vars(args),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
