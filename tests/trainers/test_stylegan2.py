"""method=stylegan2: training steps with lazy R1 and path-length regularization (double backward
through DeepSpeed at every ZeRO stage) change the weights; exact resume; the export feeds the
stylegan2 source."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets.schema import decode_sample, encode_sample
from renderloop.datasets.stylegan2 import StyleGAN2Source, StyleGAN2SourceConfig

from .helpers import evaluate, make_streams


def _config(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        ["method=stylegan2_debug", "engine=debug", f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
         "samples_per_shard=8", "device=cpu", *overrides],
        TrainConfig,
    )  # fmt: skip


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "models" / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_r1_and_path_length_train_under_zero_stages(tmp_path, stage):
    cfg = _config(tmp_path, f"engine.zero_stage={stage}", "engine.max_steps=2", "engine.checkpoint_every=2")
    make_streams(cfg)
    train(cfg, [], command="train")
    first = {name: _weights(tmp_path / "run", name) for name in ("G", "D")}
    cfg = _config(tmp_path, f"engine.zero_stage={stage}", "engine.max_steps=4", "engine.checkpoint_every=2")
    train(cfg, [], command="train")  # resumes at step 2
    for name in ("G", "D"):
        after = _weights(tmp_path / "run", name)
        changed = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], first[name][k])]
        assert changed, f"{name} did not change between steps 2 and 4"
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # Lazy regularization: on steps 0 and 2 only (across the resume), each penalty scaled by its
    # weight and by its interval, so that on average it weighs as much as one applied every step.
    m = cfg.method_config
    assert (m.r1_gamma, m.r1_interval, m.pl_weight, m.pl_interval) == (0.05, 2, 2.0, 2)  # stylegan2_debug
    for phase, penalty, scale in (("D_reg", "r1_penalty", 0.05 / 2 * 2), ("G_reg", "pl_penalty", 2.0 * 2)):
        logged = [r for r in rows if f"loss/{phase}/{penalty}" in r]
        assert [r["step"] for r in logged] == [0, 2], phase
        for r in logged:
            assert r[f"loss/{phase}/{penalty}"] > 0, (phase, r["step"])
            assert r[f"loss/{phase}/loss"] == pytest.approx(scale * r[f"loss/{phase}/{penalty}"], rel=1e-5), phase
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))


def test_the_ema_generator_is_updated_once_per_step_with_the_ramped_decay(tmp_path, monkeypatch):
    from renderloop.trainers.engine import EMA

    betas, update = [], EMA.update

    def counted(self, source, beta, zero3):
        betas.append(beta)
        update(self, source, beta, zero3)

    monkeypatch.setattr(EMA, "update", counted)
    cfg = _config(tmp_path, "engine.max_steps=4", "engine.ema_half_life=10", "engine.ema_rampup=0.5")
    make_streams(cfg)
    train(cfg, [], command="train")
    # G is updated twice on steps 0 and 2 (G_main and G_reg) and its EMA still once per step.
    assert betas == pytest.approx([cfg.engine.ema_beta(step) for step in range(4)])
    assert betas[0] == 0.0 and betas[1] == pytest.approx(0.25)  # half-life 0.5 × 1 step


def test_zero_3_trains_without_regularization_and_refuses_it_with(tmp_path):
    with pytest.raises(ConfigError, match="engine.zero_stage"):
        _config(tmp_path, "engine.zero_stage=3")
    cfg = _config(tmp_path, "engine.zero_stage=3", "method.r1_gamma=0", "method.pl_weight=0")
    make_streams(cfg)
    assert train(cfg, [], command="train")["step"] == cfg.engine.max_steps - 1
    phases = {k.split("/")[1] for r in _rows(tmp_path / "run") for k in r if k.startswith("loss/")}
    assert phases == {"G_main", "D_main"}  # the regularization phases are left out, not run at weight 0


def test_resume_continues_exactly(tmp_path):
    straight = _config(tmp_path / "a", "engine.max_steps=4", "engine.checkpoint_every=2")
    make_streams(straight)
    train(straight, [], command="train")
    split = _config(tmp_path / "b", "engine.max_steps=2", "engine.checkpoint_every=2")
    make_streams(split)
    train(split, [], command="train")
    train(_config(tmp_path / "b", "engine.max_steps=4", "engine.checkpoint_every=2"), [], command="train")
    for name in ("G", "D"):
        a, b = _weights(tmp_path / "a" / "run", name), _weights(tmp_path / "b" / "run", name)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)


def test_export_feeds_the_stylegan2_source(tmp_path):
    cfg = _config(tmp_path, "engine.max_steps=2")
    make_streams(cfg)
    train(cfg, [], command="train")
    results = evaluate(cfg)
    assert results["images"] == 4 and (tmp_path / "run" / "eval" / "samples.png").exists()
    assert results["w_avg_norm"] > 0  # starts at 0: the generator steps tracked the mean w (truncation's centre)
    # Two training steps: the samples are far from the data, farther than two real sets are from each other.
    assert results["samples"] == 32 and results["encoder"] == "random (seed 0)"
    assert results["fd"] > results["fd_real_floor"] >= 0 and results["kid"] > results["kid_real_floor"]
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
    assert json.loads((tmp_path / "run" / "eval" / "quality.json").read_text())["fd"] == results["fd"]
    source = StyleGAN2Source(
        StyleGAN2SourceConfig(
            checkpoint=str(tmp_path / "run" / "eval" / "generator.pt"), batch_size=6, views=3, view_layers=2
        )  # fmt: skip
    )
    batch = source.generate(1, 0)
    assert batch["rgb"].shape == (6, 3, 16, 16) and torch.equal(batch["rgb"], source.generate(1, 0)["rgb"])
    assert not torch.equal(batch["rgb"], source.generate(1, 1)["rgb"])
    w = batch["w"].view(2, 3, *batch["w"].shape[1:])
    assert torch.equal(w[:, :, 2:], w[:, :1, 2:].expand_as(w[:, :, 2:]))  # one object per group
    assert not torch.equal(w[:, 0, :2], w[:, 1, :2])  # several view codes
    samples = source.to_samples(batch, [1] * 6, [f"k{i}" for i in range(6)])
    decoded = decode_sample(encode_sample(samples[4]))
    view = int(batch["view"][4])  # a pool of 3 codes: every group has all three, in its own order
    assert sorted(batch["view"][3:].tolist()) == [0, 1, 2]
    assert decoded["latent.npy"].shape == (source.G.num_ws, 16) and decoded["view.txt"] == view
    assert decoded["meta.json"]["view_name"] == source.view_names[view] and decoded["meta.json"]["object"] == 1


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_the_compiled_source_makes_the_same_images(tmp_path, noise_mode):
    from renderloop.models.stylegan2 import Generator, GeneratorConfig
    from renderloop.models.stylegan2.io import save_generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16))
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)  # the noise shows in the images
    checkpoint = str(save_generator(G, tmp_path / "g.pt"))
    kw = {"checkpoint": checkpoint, "batch_size": 4, "noise_mode": noise_mode}
    eager = StyleGAN2Source(StyleGAN2SourceConfig(**kw))
    compiled = StyleGAN2Source(StyleGAN2SourceConfig(**kw, compile=True))
    assert compiled.meta == {**eager.meta, "config": compiled.config.digest()} != eager.meta
    assert torch.allclose(compiled.generate(3, 0)["rgb"], eager.generate(3, 0)["rgb"], atol=1e-5)


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_main_phases_train_like_eager(tmp_path):
    """Same seed, same data: the compiled main phases log the losses and reach the weights that
    eager ones do (steps 0 and 2 run the eager regularizers on the same weights in between)."""
    runs = {}
    for compiled in (False, True):
        cfg = _config(tmp_path / str(compiled), "engine.max_steps=3", f"method.compile={compiled}")
        make_streams(cfg)
        train(cfg, [], command="train")
        runs[compiled] = tmp_path / str(compiled) / "run"
    eager, compiled = _rows(runs[False]), _rows(runs[True])
    assert [r.keys() for r in eager] == [r.keys() for r in compiled]
    for a, b in zip(eager, compiled, strict=True):
        for key in (k for k in a if k.startswith("loss/")):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (a["step"], key)
    for name in ("G", "D"):
        a, b = _weights(runs[False], name), _weights(runs[True], name)
        assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), name
    with pytest.raises(ConfigError, match="method.compile"):
        _config(tmp_path, "engine.zero_stage=3", "method.r1_gamma=0", "method.pl_weight=0", "method.compile=true")


def test_bad_stylegan2_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="method.data.real.resolution"):
        _config(tmp_path, "method.data.real.resolution=24")
    with pytest.raises(ConfigError, match="source.checkpoint"):
        StyleGAN2Source(StyleGAN2SourceConfig(checkpoint=str(tmp_path / "missing.pt")))


def test_bf16_autocast_keeps_fp32_weights_and_trains_like_fp32(tmp_path):
    """Autocast runs the forward in bf16 while weights, optimizer and batches stay fp32: the
    losses follow the fp32 run's within bf16's precision."""
    runs = {}
    for precision in ("fp32", "bf16_autocast"):
        cfg = _config(tmp_path / precision, "engine.max_steps=2", f"engine.precision={precision}")
        make_streams(cfg)
        train(cfg, [], command="train")
        runs[precision] = _rows(tmp_path / precision / "run")
    for a, b in zip(runs["fp32"], runs["bf16_autocast"], strict=True):
        for key in (k for k in a if k.startswith("loss/")):
            assert b[key] == pytest.approx(a[key], rel=0.1, abs=0.05), (a["step"], key)
    assert _weights(tmp_path / "bf16_autocast" / "run", "G")["mapping.fc0.weight"].dtype == torch.float32


def test_a_generator_records_the_objects_it_learned_and_methods_refuse_one_that_saw_test_objects(tmp_path):
    from renderloop.datasets.category import SEED_RANGES, check_generator_held_out
    from renderloop.datasets.datasetgan import DatasetGANSourceConfig
    from renderloop.models.stylegan2 import Generator, GeneratorConfig
    from renderloop.models.stylegan2.io import generator_trained_on, load_generator, save_generator
    from renderloop.trainers.stylegan2 import StyleGAN2

    vehicle = load_config("train", ["method=stylegan2_vehicle", "device=cpu"], TrainConfig).method_config
    trained_on = StyleGAN2(vehicle, torch.device("cpu"))._trained_on()
    assert trained_on["object_seeds"] == list(SEED_RANGES["gan"]) and trained_on["category"] == "vehicle"
    G = Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, channel_base=64, channel_max=16))
    gan, leaky, plain = tmp_path / "gan.pt", tmp_path / "leaky.pt", tmp_path / "plain.pt"
    save_generator(G, gan, trained_on)
    save_generator(G, leaky, {"object_seeds": [1_999_000, 2_000_001]})  # one test object
    save_generator(G, plain)
    assert generator_trained_on(gan) == trained_on and generator_trained_on(plain) is None
    assert load_generator(leaky).cfg == G.cfg  # the record does not change what loads
    check_generator_held_out(str(gan), "method.generator")
    check_generator_held_out(str(plain), "method.generator")  # nothing recorded: nothing to prove
    with pytest.raises(ConfigError, match=r"source.checkpoint: .*include test objects \[2000000, 2010000\)"):
        DatasetGANSourceConfig(checkpoint=str(leaky), interpreter="unused.pt")
