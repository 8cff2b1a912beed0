"""SimGAN's parts: the refiner's locality and output, the local discriminator, the history buffer, the
downstream metric and estimator."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.config import ConfigError, load_config
from renderloop.trainers.config import EngineConfig, lr_multiplier
from renderloop.trainers.data import worker_skips
from renderloop.trainers.downstream import angular_error_deg, train_estimator
from renderloop.trainers.simgan import HistoryBuffer, PatchDiscriminator, Refiner, SimGAN


def _simgan_cfg():
    from renderloop.cluster.launch import TrainConfig

    overrides = ["method.pretrain_refiner_steps=3", "method.pretrain_discriminator_steps=2"]
    return load_config("train", overrides, TrainConfig).method_config


def test_refiner_is_local_and_its_output_is_an_image():
    torch.manual_seed(0)
    refiner = Refiner(channels=8, blocks=2)
    x = torch.rand(1, 3, 32, 48)
    assert refiner(x).shape == x.shape
    # Receptive field: a 3×3 stem, two 3×3 convolutions in each of 2 blocks, a 1×1 head: a pixel
    # reaches exactly 1 + 2 · 2 = 5 pixels each way (11 × 11), no more (no global operation) and
    # no less (every block is applied).
    y = x.clone()
    y[:, :, 16, 20] = 1 - y[:, :, 16, 20]
    with torch.no_grad():
        diff = (refiner(x) - refiner(y)).abs().sum(1)[0]
    rows, cols = diff.sum(1).nonzero().flatten(), diff.sum(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (11, 21, 15, 25)
    # The output is (tanh(head) + 1) / 2: a head that outputs -20, 0 and 0.5 everywhere gives
    # black, mid-grey and sigmoid(1) = 0.7311, whatever the input.
    with torch.no_grad():
        refiner.head.weight.zero_()
        refiner.head.bias.copy_(torch.tensor([-20.0, 0.0, 0.5]))
        out = refiner(x)
    expected = torch.tensor([0.0, 0.5, 0.7310586]).view(1, 3, 1, 1).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-6)


def test_a_linear_refiner_output_is_the_head_unbounded():
    refiner = Refiner(channels=8, blocks=1, output="linear")
    with torch.no_grad():
        refiner.head.weight.zero_()
        refiner.head.bias.copy_(torch.tensor([-20.0, 0.0, 0.5]))
        out = refiner(torch.rand(1, 3, 8, 8))
    expected = torch.tensor([-9.5, 0.5, 0.75]).view(1, 3, 1, 1).expand_as(out)  # (head + 1) / 2
    assert torch.equal(out, expected)
    from renderloop.cluster.launch import TrainConfig

    with pytest.raises(ConfigError, match="method.output.*must be tanh or linear; got 'relu'"):
        load_config("train", ["method.output=relu"], TrainConfig)


def test_discriminator_decides_per_local_patch():
    x = torch.rand(2, 3, 32, 48)
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


def test_a_history_smaller_than_the_share_it_replaces_is_overwritten_whole():
    """simgan_debug's 8 images against half of the default engine batch of 32: every slot takes a
    new image each step (it failed with a shape mismatch)."""
    buffer = HistoryBuffer(8, 0.5)
    for step in range(3):
        out = buffer.mix(torch.full((32, 3, 4, 4), float(step)))
        assert out.shape == (32, 3, 4, 4) and len(buffer) == 8
        assert buffer.images.unique().tolist() == [float(step)]
    assert (out[:16] == 2).all() and (out[16:] == 1).all()  # the drawn half is last step's


def test_history_size_zero_passes_through():
    x = _images(4, 0)
    assert torch.equal(HistoryBuffer(0).mix(x), x)


def test_angular_error_against_hand_computed_values():
    pred = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 2.0], [-1.0, 0, 0]])
    target = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    assert angular_error_deg(pred, target).tolist() == pytest.approx([0, 45, 90, 180], abs=1e-3)


def _shaded(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose left/right and top/bottom brightness encode x and y of a direction: a learnable toy."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.cat([torch.rand(count, 2, generator=gen) * 2 - 1, -torch.ones(count, 1)], 1)
    dirs = torch.nn.functional.normalize(dirs, dim=1)
    ramp = torch.linspace(-1, 1, 16)
    images = 0.5 + 0.4 * dirs[:, 0, None, None] * ramp[None, None, :] + 0.4 * dirs[:, 1, None, None] * ramp[:, None]
    return images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), dirs


def test_estimator_learns_a_direction_from_shading():
    images, dirs = _shaded(256, seed=0)
    model = train_estimator(images, dirs, steps=100, batch_size=32, lr=3e-3, seed=0, device="cpu")
    held_out, truth = _shaded(256, seed=1)  # other directions: scored on images it never saw
    with torch.no_grad():
        err = angular_error_deg(model(held_out), truth).mean().item()
    # The best image-blind answer: the mean training direction (about 36° off on average).
    constant = torch.nn.functional.normalize(dirs.mean(0), dim=0).expand_as(truth)
    baseline = angular_error_deg(constant, truth).mean().item()
    assert err < 0.25 * baseline, (err, baseline)


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
    assert EngineConfig(ema_half_life=10).ema_beta(0) == pytest.approx(math.pow(0.5, 0.1))


def test_the_ema_half_life_ramps_up_with_the_steps_done():
    fixed, ramped = EngineConfig(ema_half_life=10), EngineConfig(ema_half_life=10, ema_rampup=0.05)
    assert fixed.ema_beta(0) == fixed.ema_beta(10**6) == pytest.approx(0.5**0.1)
    assert ramped.ema_beta(0) == 0.0  # the first update copies the model
    assert ramped.ema_beta(100) == pytest.approx(0.5 ** (1 / 5))  # half-life 0.05 × 100 steps
    assert ramped.ema_beta(200) == ramped.ema_beta(10**6) == pytest.approx(0.5**0.1)  # capped by the half-life
    assert EngineConfig(ema_half_life=0, ema_rampup=0.05).ema_beta(100) == 0.0


def test_method_debug_config_composes():
    cfg = load_config("train", ["method=simgan_debug"])
    assert cfg.method.name == "simgan" and cfg.method.data.real.style == "real_like"
    assert cfg.storage.stream == "simgan"


def test_discriminator_follows_the_paper_layout_and_a_global_one_decides_per_image():
    d = PatchDiscriminator([96, 64, 32, 32])
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    # 3×3 s2, 3×3 s2, (max-pool), 3×3, 1×1, then the 1×1 decision
    assert [(c.kernel_size[0], c.stride[0]) for c in convs] == [(3, 2), (3, 2), (3, 1), (1, 1), (1, 1)]
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in d.net)
    x = torch.rand(3, 3, 28, 28)
    assert d(x).shape == (3, 7, 7)
    g = PatchDiscriminator([8, 8, 4], whole_image=(28, 28))
    assert g(x).shape == (3, 1, 1)
    y = x.clone()
    y[:, :, :4, :4] = 1 - y[:, :, :4, :4]
    assert (g(x) - g(y)).abs().sum() > 0  # a corner reaches the one decision


def test_digit_metrics_against_hand_computed_values():
    from renderloop.trainers.simgan_digits import error_rate, gap_closed

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert error_rate(logits, torch.tensor([0, 1, 2, 2])) == 0.25
    assert gap_closed(0.5, 0.3, 0.1) == pytest.approx(0.5)  # (0.5 - 0.3) / (0.5 - 0.1)
    assert gap_closed(0.5, 0.1, 0.1) == pytest.approx(1.0)
    assert gap_closed(0.4, 0.6, 0.2) == pytest.approx(-1.0)  # refinement made it worse
    assert math.isnan(gap_closed(0.2, 0.2, 0.3))  # synthetic already as good as real: no gap


def test_digit_classifier_learns_to_tell_strokes_apart():
    from renderloop.trainers.simgan_digits import error_rate, train_classifier

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 16, 16, generator=gen) * 0.2
    y = torch.randint(2, (256,), generator=gen)
    x[y == 0, :, 4:12, 7:9] += 0.8  # a vertical bar
    x[y == 1, :, 7:9, 4:12] += 0.8  # a horizontal bar
    model = train_classifier(x[:192], y[:192], steps=60, batch_size=32, lr=3e-3, seed=0, device="cpu", classes=2)
    with torch.no_grad():
        assert error_rate(model(x[192:]), y[192:]) < 0.1
