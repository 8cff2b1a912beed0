"""Data throughput: simulator images/s with all labels, and shard write / read samples/s and MB/s.

    python -m bench.data                                  # CPU
    python -m bench.data --device cuda --compile --out data-cuda.json

*simulator* times ``Simulator.generate`` (shapes, textures, cameras, render, labels; all on the
device) at each resolution and style. *write* encodes samples to the schema and writes shards
through ``ShardWriter`` to a local folder; *read* streams them back through ``ShardStream`` with
checksums and decoding. Both are host-side and single-process.

    python -m bench.data --producers aign/sfm             # one method's streams, end to end

*producers* times a whole producer (generate, encode, write, publish) for each stream of a method's
config, with one CPU thread as ``renderloop run`` starts them beside a GPU trainer (sources on
``--device``), writing every field the source makes and then only the fields the method reads.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone

import torch

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.shards import ShardWriter
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.datasets.storage import Storage


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_simulator(res: int, batch: int, style: str, device: torch.device, compile_: bool, iters: int) -> dict:
    sim = Simulator(SimulatorConfig(resolution=res, batch_size=batch, style=style, compile=compile_), device)
    for i in range(5):  # warm-up (compilation, allocator)
        sim.generate(0, i)
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        sim.generate(1, i)
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {
        "what": "simulator",
        "resolution": res,
        "batch": batch,
        "style": style,
        "compile": compile_,
        "images_per_s": batch / seconds,
        "peak_mib": peak,
    }


def profile_simulator(res: int, batch: int, device: torch.device, compile_: bool) -> None:
    """Print the most expensive ops of two ``generate`` calls (after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    sim = Simulator(SimulatorConfig(resolution=res, batch_size=batch, compile=compile_), device)
    for i in range(5):
        sim.generate(0, i)
    _sync(device)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities, record_shapes=True) as prof:
        sim.generate(1, 0)
        sim.generate(1, 1)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=25, max_name_column_width=60))


def bench_shards(res: int, samples: int, device: torch.device) -> list[dict]:
    sim = Simulator(SimulatorConfig(resolution=res, batch_size=64), device)
    batches = [sim.generate(0, i) for i in range(max(samples // 64, 1))]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        ledger = Ledger(Storage(root), "bench")
        writer = ShardWriter(ledger, "p0", 256)
        start = time.perf_counter()
        n = 0
        for i, batch in enumerate(batches):
            keys = [f"k{i:05d}_{j:03d}" for j in range(64)]
            for sample in sim.to_samples(batch, list(range(n, n + 64)), keys):
                writer.write(sample, n)
                n += 1
        writer.close()
        seconds = time.perf_counter() - start
        total = sum(e.bytes for e in ledger.entries())
        rows.append(
            {
                "what": "write",
                "resolution": res,
                "samples_per_s": n / seconds,
                "mb_per_s": total / seconds / 1e6,
                "bytes_per_sample": total / n,
            }
        )
        stream = ShardStream(root, "bench", follow=False)
        start = time.perf_counter()
        count = sum(1 for _ in stream)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "what": "read",
                "resolution": res,
                "samples_per_s": count / seconds,
                "mb_per_s": stream.stats.bytes / seconds / 1e6,
                "bytes_per_sample": total / n,
            }
        )
    return rows


def bench_producers(method: str, samples: int, device: torch.device) -> list[dict]:
    from renderloop.cluster.launch import TrainConfig
    from renderloop.cluster.producers import ProducerSpec, build_producer
    from renderloop.config import load_config
    from renderloop.datasets.sources import source_config

    cfg = load_config("run", [f"method={method}", "device=cpu"], TrainConfig)
    torch.set_num_threads(1)
    rows = []
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        for fields in (None, cfg.fields(role)):
            with tempfile.TemporaryDirectory() as root:
                spec = ProducerSpec(name, scfg, root, role, str(device), cfg.samples_per_shard, fields=fields)
                producer = build_producer(spec, "p0")
                producer.run(cfg.samples_per_shard)  # warm-up: first batches, one shard
                start = time.perf_counter()
                stats = producer.run(samples)
                seconds = time.perf_counter() - start
            rows.append(
                {
                    "what": "producer", "method": method, "device": str(device), "role": role,
                    "fields": list(fields or ["all"]), "samples_per_s": samples / seconds,
                    "bytes_per_sample": stats.bytes / stats.samples,
                }
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="simulator batch (default: 512 on GPU, 32 on CPU)")
    parser.add_argument("--iters", type=int, default=0, help="timed batches (default: 20 on GPU, 3 on CPU)")
    parser.add_argument("--compile", action="store_true", help="also time the compiled renderer")
    parser.add_argument(
        "--shard-samples",
        type=int,
        default=1024,
        help="samples written and read per resolution (--producers: per stream and setting)",
    )
    parser.add_argument("--out", default="")
    parser.add_argument("--profile", action="store_true", help="only profile the 128² simulator")
    parser.add_argument("--producers", default="", help="only time the producers of this method's streams")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch, iters = args.batch or (512 if gpu else 32), args.iters or (20 if gpu else 3)
    if args.profile:
        profile_simulator(128, batch, device, args.compile)
        return
    rows = []
    if args.producers:
        for r in bench_producers(args.producers, args.shard_samples, device):
            rows.append(r)
            print(
                f"producer {r['role']:8s} fields {','.join(r['fields']):24s} {r['samples_per_s']:7.1f} samples/s "
                f"({r['bytes_per_sample'] / 1e3:.1f} kB/sample)",
                flush=True,
            )
    resolutions = () if args.producers else (128, 256)
    for res in resolutions:
        for style in ("synthetic", "real_like"):
            for comp in (False, True) if args.compile else (False,):
                b = batch if res == 128 else max(batch // 4, 1)
                r = bench_simulator(res, b, style, device, comp, iters)
                rows.append(r)
                print(
                    f"simulator {res}² {style:9s} batch {b:4d} compile={comp!s:5s} "
                    f"{r['images_per_s']:10.0f} images/s  peak {r['peak_mib']:.0f} MiB",
                    flush=True,
                )
    for res in resolutions:
        for r in bench_shards(res, args.shard_samples, device):
            rows.append(r)
            print(
                f"{r['what']:5s} {res}² {r['samples_per_s']:8.0f} samples/s {r['mb_per_s']:7.1f} MB/s "
                f"({r['bytes_per_sample'] / 1e3:.0f} kB/sample)",
                flush=True,
            )
    meta = {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
