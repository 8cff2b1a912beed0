"""Labelled images/s of the DatasetGAN source: the generator, the style interpreter's vote and the
uncertainty filter, per batch, without writing shards.

    python -m bench.datasetgan_source                                  # CPU
    python -m bench.datasetgan_source --device cuda --batch 16 64 256 --out datasetgan_source.json

Random weights of the shapes the experiment uses (``method=stylegan2_vehicle``'s generator at
64², an interpreter of ``--members`` members over its per-pixel features, 11 classes): the cost
does not depend on what the weights learned. Each point is the best of ``--repeats`` timed calls
of ``generate`` after one warm-up call; images/s counts the kept samples (a pool of
``ceil(B / (1 - drop_share))`` is drawn per batch of B). Operators per batch are counted in the
warm-up call: on a GPU each is about one kernel launch, which bounds small batches.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from bench.operators import OperatorCount
from bench.reports import write_report
from bench.timing import synchronize
from renderloop.datasets.datasetgan import DatasetGANSource, DatasetGANSourceConfig
from renderloop.models.style_interpreter import StyleInterpreter, save_interpreter
from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.models.stylegan2.io import save_generator
from renderloop.models.stylegan2.latents import feature_channels


def _assets(folder: Path, resolution: int, members: int, classes: int) -> tuple[Path, Path]:
    """A random category-GAN generator and a random interpreter over its features."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(img_resolution=resolution, channel_base=16384, channel_max=256))
    interpreter = StyleInterpreter(feature_channels(G), classes, members)
    with torch.no_grad():  # batch-norm statistics of a trained network, not the identity
        for module in interpreter.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return save_generator(G, folder / "generator.pt"), save_interpreter(interpreter.eval(), folder / "i.pt", {})


def measure(source: DatasetGANSource, repeats: int) -> tuple[float, int]:
    """Kept images per second (the best of ``repeats`` calls of ``generate`` after a warm-up) and
    the operators one call runs."""
    with OperatorCount() as count:
        source.generate(0, 0)
    best = float("inf")
    for i in range(repeats):
        synchronize(source.device)
        start = time.perf_counter()
        source.generate(0, i + 1)
        synchronize(source.device)
        best = min(best, time.perf_counter() - start)
    return source.config.batch_size / best, count.total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", nargs="*", type=int, default=[16])
    p.add_argument("--members", nargs="*", type=int, default=[10, 1], help="voting members (the ablation: 1)")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument(
        "--pixel-chunk",
        nargs="*",
        type=int,
        default=[DatasetGANSourceConfig.pixel_chunk],
        help="source.pixel_chunk values",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        generator, interpreter = _assets(Path(folder), args.resolution, max(args.members), args.classes)
        for members, batch, chunk in itertools.product(args.members, args.batch, args.pixel_chunk):
            config = DatasetGANSourceConfig(checkpoint=str(generator), interpreter=str(interpreter),
                                            batch_size=batch, members=members, pixel_chunk=chunk)  # fmt: skip
            rate, ops = measure(DatasetGANSource(config, args.device), args.repeats)
            rows.append({"members": members, "batch": batch, "pixel_chunk": chunk, "images_per_s": rate,
                         "operators_per_batch": ops})  # fmt: skip
            print(f"members {members:>2} batch {batch:>4} pixel_chunk {chunk:>6}: {rate:,.1f} labelled images/s, "
                  f"{ops:,} operators per batch", flush=True)  # fmt: skip
    if args.out:
        write_report(args.out, device=str(args.device), torch=torch.__version__, rows=rows)


if __name__ == "__main__":
    main()
