"""Data throughput: simulator images/s with all labels, and both shard formats side by side.

    python -m bench.data                                  # CPU
    python -m bench.data --device cuda --compile --out data-cuda.json
    python -m bench.data --formats --resolutions 64,128   # only the shard formats

*simulator* times ``Simulator.generate`` (shapes, textures, cameras, render, labels; all on the
device) at each resolution and style. *formats* compares per-sample shards (version 1: PNG, NPY,
sha256) with chunked ones (version 2: one record per batch, quantized arrays, xxh3), every field
written, on batches generated beforehand (on ``--device``), so that it times only what follows
generation:

* producer: host milliseconds per sample of ``Producer.run`` (quantize where the batch is, copy
  to the host, encode, tar, hash, write, publish) and bytes per sample;
* reader: samples/s of one loader process (``ShardStream``: read, verify, parse, shuffle, and
  either decode and collate samples (v1, as trainers did) or assemble host batches (v2));
* trainer: batches/s of ``StreamBatches`` handing batches to ``to_device`` (decoded on ``--device``).

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

from bench.timing import synchronize
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.datasets.storage import Storage


def bench_simulator(res: int, batch: int, style: str, device: torch.device, compile_: bool, iters: int) -> dict:
    sim = Simulator(SimulatorConfig(resolution=res, batch_size=batch, style=style, compile=compile_), device)
    for i in range(5):  # warm-up (compilation, allocator)
        sim.generate(0, i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(iters):
        sim.generate(1, i)
    synchronize(device)
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
    synchronize(device)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities, record_shapes=True) as prof:
        sim.generate(1, 0)
        sim.generate(1, 1)
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=25, max_name_column_width=60))


class _Replay:
    """A source that hands out batches generated beforehand, so a producer's time is its own.
    ``columns`` keeps the source's ``to_columns`` hook (without it, ``to_samples`` is used)."""

    def __init__(self, source, batches: list[dict], columns: bool = False) -> None:
        self.source, self.batches = source, batches
        self.config, self.name = source.config, source.name
        if columns:
            self.to_columns = source.to_columns

    def generate(self, seed: int, batch_index: int) -> dict:
        return self.batches[batch_index % len(self.batches)]

    def to_samples(self, batch, seeds, keys):
        return self.source.to_samples(batch, seeds, keys)


FORMATS = {
    "v1": ("sample", "sha256", False),
    "v2": ("chunk", "xxh3_128", True),
    "v2 to_samples": ("chunk", "xxh3_128", False),  # a source without to_columns: producer only
}


def _produce(root: str, sim, batches: list[dict], record: str, checksum: str, columns: bool, samples: int) -> dict:
    """Milliseconds per sample of ``Producer.run`` on replayed batches, one batch per shard: wall,
    this process's CPU, and the part spent quantizing and copying (``quantize_batch``: device work
    on a GPU host). The wall time includes every shard's fsync, so where the shards are stored
    (the disk, or tmpfs through ``TMPDIR``) is part of what is measured."""
    import renderloop.datasets.producer as producer_module

    batch = len(next(iter(batches[0].values())))
    producer = Producer(_Replay(sim, batches, columns), Ledger(Storage(root), "s"), "p0", samples_per_shard=batch,
                        record=record, checksum=checksum)  # fmt: skip
    producer.run(batch)  # warm-up: allocations, the pinned buffer
    quantize, spent = producer_module.quantize_batch, [0.0]

    def timed(*args):
        t0 = time.perf_counter()
        try:
            return quantize(*args)
        finally:
            spent[0] += time.perf_counter() - t0

    producer_module.quantize_batch = timed
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        stats = producer.run(samples)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        producer_module.quantize_batch = quantize
    entries = producer.ledger.entries()
    return {
        "producer_ms_per_sample": wall / stats.samples * 1e3,
        "producer_cpu_ms_per_sample": cpu / stats.samples * 1e3,
        "producer_quantize_ms_per_sample": spent[0] / stats.samples * 1e3,
        "bytes_per_sample": sum(e.bytes for e in entries) / sum(e.count for e in entries),
    }


def _read(root: str, chunked: bool, fields: list[str] | None, batch: int) -> float:
    """Samples/s of one loader process: v1 decodes every sample and collates them (what trainers
    did), v2 assembles host batches from the chunks."""
    from renderloop.trainers.data import collate

    stream = ShardStream(
        root, "s", follow=False, shuffle_buffer=256, fields=fields, batch_size=batch if chunked else None
    )
    start, got, pending = time.perf_counter(), 0, []
    for item in stream:
        if chunked:
            got += len(item["key"])
            continue
        pending.append(item)
        if len(pending) == batch:
            got += len(collate(pending)["key"])
            pending = []
    return got / (time.perf_counter() - start)


def _train(root: str, device: torch.device, workers: int, batch: int, steps: int) -> float:
    """Batches/s that ``StreamBatches`` hands to ``to_device`` (decoded on ``device``)."""
    from renderloop.trainers.config import DataConfig
    from renderloop.trainers.data import StreamBatches, to_device

    config = DataConfig(batch_size=batch, num_workers=workers, shuffle_buffer=256, follow=False)
    data = StreamBatches(root, "s", config, fields=None, seed=0, consumer="bench", rank=0, world_size=1,
                         pin_memory=device.type == "cuda")  # fmt: skip
    try:
        for _ in range(2):  # warm-up: workers started, first shards read
            to_device(data.next()[0], device, torch.float32)
        start = time.perf_counter()
        for _ in range(steps):
            to_device(data.next()[0], device, torch.float32)
        synchronize(device)
        return steps / (time.perf_counter() - start)
    finally:
        data.close()


def bench_formats(res: int, samples: int, batch: int, device: torch.device, workers: int) -> list[dict]:
    """Producer, reader and trainer-side rates of both shard formats on the same batches."""
    sim = Simulator(SimulatorConfig(resolution=res, batch_size=batch), device)
    batches = [sim.generate(0, i) for i in range(max(min(samples // batch, 4), 1))]
    synchronize(device)
    rows, read_batch = [], 32
    for name, (record, checksum, columns) in FORMATS.items():
        with tempfile.TemporaryDirectory() as root:
            row = {"what": "formats", "format": name, "resolution": res, "batch": batch, "device": str(device)}
            row.update(_produce(root, sim, batches, record, checksum, columns, samples))
            if name != "v2 to_samples":  # the same shards as v2
                chunked = record == "chunk"
                row["reader_samples_per_s"] = _read(root, chunked, None, read_batch)
                row["reader_rgb_samples_per_s"] = _read(root, chunked, ["rgb.png"], read_batch)
                steps = max(samples // read_batch, 4)
                row["trainer_batches_per_s"] = _train(root, device, workers, read_batch, steps)
                row.update(trainer_batch=read_batch, trainer_workers=workers)
            rows.append(row)
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


def _print_formats(rows: list[dict]) -> None:
    head = ("format", "res", "ms/sample", "cpu ms", "quantize ms", "kB/sample", "read/s all", "read/s rgb", "batches/s")
    print("{:13s} {:>5s} {:>10s} {:>8s} {:>12s} {:>10s} {:>11s} {:>11s} {:>10s}".format(*head))
    for r in rows:
        reads = [
            f"{r[k]:11.0f}" if k in r else f"{'-':>11s}" for k in ("reader_samples_per_s", "reader_rgb_samples_per_s")
        ]
        trainer = f"{r['trainer_batches_per_s']:10.1f}" if "trainer_batches_per_s" in r else f"{'-':>10s}"
        print(
            f"{r['format']:13s} {r['resolution']:>4d}² {r['producer_ms_per_sample']:10.3f} "
            f"{r['producer_cpu_ms_per_sample']:8.3f} {r['producer_quantize_ms_per_sample']:12.3f} "
            f"{r['bytes_per_sample'] / 1e3:10.1f} {reads[0]} {reads[1]} {trainer}",
            flush=True,
        )


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
        help="samples written and read per resolution and format (--producers: per stream and setting)",
    )
    parser.add_argument("--resolutions", default="64,128", help="resolutions of the format comparison")
    parser.add_argument("--workers", type=int, default=1, help="dataloader workers of the trainer-side rate")
    parser.add_argument("--formats", action="store_true", help="only compare the shard formats")
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
    resolutions = () if args.producers or args.formats else (128, 256)
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
    if not args.producers:
        formats = []
        for res in (int(r) for r in args.resolutions.split(",")):
            formats += bench_formats(res, args.shard_samples, batch, device, args.workers)
        _print_formats(formats)
        rows += formats
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
