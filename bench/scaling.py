"""Scaling of live training from one device to two: each method's job (``bench.cluster``) on one
GPU with one Ray Train worker, then on two with two, at each ZeRO stage; consumed samples/s, their
ratio and data-wait. The batch per rank stays the same (weak scaling), and producers grow with the
GPUs, so the ratio's ideal is 2.

    python -m bench.scaling --gpus 2 --out scaling.json          # two GPUs: 1 → 2 for every method
    python -m bench.scaling                                      # CPU rehearsal: 1 → 2 workers, tiny

Producers per GPU and role (``--producers-per-device``) default to what kept SimGAN's backlog full
on one H200 (BENCHMARKS.md, Cluster operation: 3 + 1) and to one per role for the other methods.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import cluster
from bench.reports import write_report

PRODUCERS_PER_DEVICE = {"simgan": {"synthetic": 3, "real": 1}}
"""Producers per GPU (or per worker on the CPU) and role; roles not listed get one."""


def _producers(method: str, devices: int, override: str) -> str:
    _, roles = cluster.method_streams(method)
    per_device = {**dict.fromkeys(roles, 1), **PRODUCERS_PER_DEVICE.get(method, {})}
    for item in filter(None, override.split(",")):
        role, _, n = item.partition("=")
        per_device[role] = int(n)
    return ",".join(f"{role}={n * devices}" for role, n in per_device.items())


def job_args(args, method: str, zero: int, devices: int) -> argparse.Namespace:
    """``bench.cluster``'s arguments for one row: ``devices`` GPUs (or CPU workers) and as many workers."""
    gpus = devices if args.gpus else 0
    argv = [
        "--method", method, "--gpus", str(gpus), "--workers", str(devices), "--zero", str(zero),
        "--producers-by-role", _producers(method, devices, args.producers_per_device),
        "--resolution", str(args.resolution), "--batch", str(args.batch), "--steps", str(args.steps),
        "--samples-per-shard", str(args.samples_per_shard), "--worker-cpus", str(args.worker_cpus),
        "--producer-cpus", str(args.producer_cpus), "--timeout", str(args.timeout),
    ]  # fmt: skip
    if args.cpus:
        argv += ["--cpus", str(args.cpus)]
    if args.trainer_batch:
        argv += ["--trainer-batch", str(args.trainer_batch)]
    if args.set:
        argv += ["--set", *args.set]
    return cluster.parser().parse_args(argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=["simgan", "aign/sfm", "stylegan2"])
    p.add_argument("--zero", nargs="*", type=int, default=[0, 2], help="ZeRO stages")
    p.add_argument("--gpus", type=int, default=0, choices=[0, 2], help="2: one and two GPUs; 0: CPU workers")
    p.add_argument("--cpus", type=int, default=0, help="CPUs the Ray head offers (0: all)")
    p.add_argument("--worker-cpus", type=float, default=1.0)
    p.add_argument("--producer-cpus", type=float, default=0.5)
    p.add_argument("--producers-per-device", default="", help="e.g. synthetic=3,real=1 (for every method)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="the producers' batch")
    p.add_argument("--trainer-batch", type=int, default=0, help="per rank and stream (0: --batch)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--set", nargs="*", default=[], help="more overrides of every job")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default="")
    return p


def main() -> None:
    args = parser().parse_args()

    rows = []
    for method in args.methods:
        for zero in args.zero:
            one, two = (cluster.run(job_args(args, method, zero, n)) for n in (1, 2))
            for result in (one, two):
                result.pop("timeline")
            rows.append({
                "method": method, "zero": zero,
                "samples_per_s": [one["consumed_samples_per_s"], two["consumed_samples_per_s"]],
                "ratio": two["consumed_samples_per_s"] / one["consumed_samples_per_s"],
                "data_wait": [one["data_wait_fraction"], two["data_wait_fraction"]],
                "startup_s": [one["startup_seconds"], two["startup_seconds"]],
                "jobs": [one, two],
            })  # fmt: skip
            r = rows[-1]
            print(
                f"{method:>10} ZeRO {zero}: {r['samples_per_s'][0]:8.0f} → {r['samples_per_s'][1]:8.0f} samples/s "
                f"({r['ratio']:.2f}×), data-wait {r['data_wait'][0]:.1%} → {r['data_wait'][1]:.1%}",
                flush=True,
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_report(args.out, rows=rows)
    print(json.dumps([{k: v for k, v in r.items() if k != "jobs"} for r in rows]))


if __name__ == "__main__":
    main()
