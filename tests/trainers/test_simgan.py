"""SimGAN's parts: refiner and local discriminator shapes, the history buffer, the downstream metric."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.config import load_config
from renderloop.trainers.config import EngineConfig, lr_multiplier
from renderloop.trainers.data import worker_skips
from renderloop.trainers.downstream import angular_error_deg, train_estimator
from renderloop.trainers.simgan import HistoryBuffer, PatchDiscriminator, Refiner, SimGAN


def _simgan_cfg():
    from renderloop.train import TrainConfig

    overrides = ["method.pretrain_refiner_steps=3", "method.pretrain_discriminator_steps=2"]
    return load_config("train", overrides, TrainConfig).method_config


def test_refiner_keeps_shape_and_range_and_discriminator_is_local():
    x = torch.rand(2, 3, 32, 48)
    refined = Refiner(channels=8, blocks=2)(x)
    assert refined.shape == x.shape and refined.min() >= 0 and refined.max() <= 1
    logits = PatchDiscriminator([8, 8, 4])(x)
    assert logits.shape == (2, 8, 12)  # one decision per local patch (stride 4)
    # A change in one corner moves only nearby decisions.
    y = x.clone()
    y[:, :, :4, :4] = 1 - y[:, :, :4, :4]
    d = PatchDiscriminator([8, 8, 4])
    diff = (d(x) - d(y)).abs()[0]
    assert diff[:3, :3].sum() > 0 and diff[5:, 6:].sum() == 0


def _images(n: int, start: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()


def test_history_buffer_fills_then_mixes_half_and_replaces_half():
    torch.manual_seed(0)
    buf = HistoryBuffer(size=6, fraction=0.5)
    first = _images(4, 0)
    assert torch.equal(buf.mix(first), first) and len(buf) == 4  # filling: D sees the batch as is
    second = _images(4, 10)
    assert torch.equal(buf.mix(second), second) and len(buf) == 6  # only 2 of 4 fit
    assert sorted(buf.images[:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 10, 11]
    before = set(buf.images[:, 0, 0, 0].tolist())
    third = _images(4, 20)
    mixed = buf.mix(third)
    ids = mixed[:, 0, 0, 0].tolist()
    assert ids[:2] == [20, 21] and set(ids[2:]) <= before  # half current, half from the history
    after = buf.images[:, 0, 0, 0].tolist()
    assert len(after) == 6 and sorted(set(after) - before) == [20, 21]  # 2 slots now hold the newest
    state = buf.state_dict()
    other = HistoryBuffer(size=6)
    other.load_state_dict(state, torch.device("cpu"))
    assert torch.equal(other.images, buf.images)


def test_history_size_zero_passes_through():
    x = _images(4, 0)
    assert torch.equal(HistoryBuffer(0).mix(x), x)


def test_angular_error_against_hand_computed_values():
    pred = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 2.0], [-1.0, 0, 0]])
    target = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    assert angular_error_deg(pred, target).tolist() == pytest.approx([0, 45, 90, 180], abs=1e-3)


def test_estimator_learns_a_direction_from_shading():
    # Images whose left/right brightness encodes the x of the direction: a learnable toy.
    torch.manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.cat([torch.rand(256, 2) * 2 - 1, -torch.ones(256, 1)], 1), dim=1)
    ramp = torch.linspace(-1, 1, 16)
    images = (
        0.5 + 0.4 * dirs[:, 0, None, None] * ramp[None, None, :] + 0.4 * dirs[:, 1, None, None] * ramp[None, :, None]
    )
    images = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    model = train_estimator(images, dirs, steps=150, batch_size=32, lr=3e-3, seed=0, device="cpu")
    with torch.no_grad():
        err = angular_error_deg(model(images), dirs).mean().item()
    chance = angular_error_deg(dirs[torch.randperm(256)], dirs).mean().item()
    assert err < chance / 2


def test_lr_schedule_warmup_then_cosine_and_worker_skips():
    cfg = EngineConfig(max_steps=55, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(cfg, 0, 110) == pytest.approx(0.1) and lr_multiplier(cfg, 9, 110) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 10, 110) == pytest.approx(1.0) and lr_multiplier(cfg, 60, 110) == pytest.approx(0.55)
    assert lr_multiplier(cfg, 110, 110) == pytest.approx(0.1)
    assert lr_multiplier(EngineConfig(lr_schedule="linear", max_steps=10), 5, 10) == pytest.approx(0.5)
    # SimGAN's refiner: 3 pre-training updates, then 2 per step; the decay spans all of them.
    phases = SimGAN(_simgan_cfg(), torch.device("cpu")).phases()
    assert sum(p.updates(10) for p in phases if p.model == "R") == 3 + 2 * 5
    assert sum(p.updates(10) for p in phases if p.model == "D") == 2 + 5
    assert worker_skips(0, 2, 4) == [0, 0] and worker_skips(5, 2, 4) == [12, 8] and worker_skips(3, 0, 4) == [12]
    assert EngineConfig(ema_half_life=10).ema_beta == pytest.approx(math.pow(0.5, 0.1))


def test_method_debug_config_composes():
    cfg = load_config("train", ["method=simgan_debug"])
    assert cfg.method.name == "simgan" and cfg.method.data.real.style == "real_like"
    assert cfg.storage.stream == "simgan"
