"""Tiny SimGAN runs for engine tests: closed streams of 16² images and the debug configs."""

from __future__ import annotations

from pathlib import Path

from renderloop.cluster.launch import TrainConfig
from renderloop.config import load_config
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.sources import build_source, source_config
from renderloop.datasets.storage import Storage
from renderloop.trainers.evaluation import evaluate_run


def debug_config(root: Path, run_dir: Path, *overrides: str, command: str = "train") -> TrainConfig:
    return load_config(
        command,
        [
            "method=simgan_debug",
            "engine=debug",
            f"storage.root={root}",
            f"run_dir={run_dir}",
            "samples_per_shard=8",
            "device=cpu",
            *overrides,
        ],
        TrainConfig,
    )


def make_streams(cfg: TrainConfig, samples: int = 64) -> None:
    """Generate every stream of the method, closed (``follow`` then repeats them)."""
    storage = Storage(cfg.storage.root)
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        ledger = Ledger(storage, cfg.stream(role))
        Producer(build_source(name, scfg), ledger, "p0", samples_per_shard=cfg.samples_per_shard, seed=3).run(samples)
        ledger.close()


def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """What ``renderloop eval`` reports for the run ``cfg`` describes."""
    return evaluate_run(cfg.method_name, cfg.method_config, cfg.run_dir, cfg.device)


def gan_method_assets(root: Path) -> dict[str, str]:
    """What the GAN methods load: a random 16² generator file and a barely trained oracle run."""
    import torch

    from renderloop.cli import main
    from renderloop.models.stylegan2 import Generator, GeneratorConfig
    from renderloop.models.stylegan2.io import save_generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16,
                                  mapping_layers=2))  # fmt: skip
    checkpoint = save_generator(G, root / "generator.pt")
    oracle = [
        "method=oracle_debug", "engine=debug", "device=cpu", "engine.max_steps=2", "samples_per_shard=8",
        f"storage.root={root / 'oracle-data'}", f"run_dir={root / 'oracle'}",
    ]  # fmt: skip
    if main(["run", *oracle]) != 0:
        raise RuntimeError("the oracle run failed")
    return {"checkpoint": str(checkpoint), "oracle": str(root / "oracle")}
