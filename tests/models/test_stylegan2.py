"""Our StyleGAN2: shapes, FIR resampling against hand-computed values, truncation, style mixing,
view codes, W offsets and per-pixel features."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from renderloop.models.stylegan2 import Discriminator, Generator, GeneratorConfig, channels_for
from renderloop.models.stylegan2.latents import (
    MappingTail,
    ViewCodes,
    feature_channels,
    mix_styles,
    offset_ws,
    pixel_features,
    sample_ws,
    view_group,
)
from renderloop.models.stylegan2.layers import conv2d_resample, fir_filter, modulated_conv2d, upfirdn2d, upsample2d


def _tiny(res: int = 16, **kw) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        z_dim=32, w_dim=32, img_resolution=res, channel_base=256, channel_max=32, mapping_layers=2, **kw
    )
    return Generator(cfg).eval()


@pytest.mark.parametrize("res", [8, 16, 32, 64])
@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
def test_shapes_at_several_resolutions(res, architecture):
    G = _tiny(res, architecture=architecture)
    img = G(torch.randn(3, 32))
    assert img.shape == (3, 3, res, res) and torch.isfinite(img).all()
    assert G.num_ws == 2 * (res.bit_length() - 1) - 2  # 2·log2(res) − 2
    D = Discriminator(res, channel_base=256, channel_max=32)
    assert D(img).shape == (3, 1)


def test_channels_follow_base_and_max():
    assert channels_for(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}


def test_fir_upsampling_and_downsampling_against_hand_values():
    f = fir_filter()
    assert f.sum().item() == pytest.approx(1.0) and f[0, 0].item() == pytest.approx(1 / 64)
    flat = torch.full((1, 1, 4, 4), 2.0)
    up = upsample2d(flat, f)
    assert up.shape == (1, 1, 8, 8) and torch.allclose(up[..., 1:-1, 1:-1], torch.full((6, 6), 2.0))
    # An impulse upsampled spreads 4 × the separable filter (taps 1, 3, 3, 1 over 8) around it.
    impulse = torch.zeros(1, 1, 4, 4)
    impulse[..., 1, 1] = 1.0
    row = upsample2d(impulse, f)[0, 0, 2]
    assert row[:6].tolist() == pytest.approx([0, 4 * 3 / 64, 4 * 9 / 64, 4 * 9 / 64, 4 * 3 / 64, 0])
    assert upsample2d(impulse, f).sum().item() == pytest.approx(4.0)
    down = upfirdn2d(flat, f, down=2, padding=[1, 1, 1, 1])
    assert down.shape == (1, 1, 2, 2)
    # A 3×3 box convolution with 2× down keeps a constant's interior constant (×9).
    x = torch.ones(1, 1, 8, 8)
    y = conv2d_resample(x, torch.ones(1, 1, 3, 3), f=f, down=2, padding=1)
    assert y.shape == (1, 1, 4, 4) and y[..., 1:-1, 1:-1].allclose(torch.full((2, 2), 9.0))
    y = conv2d_resample(x, torch.ones(1, 1, 3, 3), f=f, up=2, padding=1)
    assert y.shape == (1, 1, 16, 16) and y[..., 2:-2, 2:-2].allclose(torch.full((12, 12), 9.0))


@pytest.mark.parametrize("down", [1, 2])
def test_fir_as_shifted_taps_equals_the_depthwise_convolution(down):
    from renderloop.models.stylegan2.layers import _filter_taps

    torch.manual_seed(0)
    x, f = torch.randn(2, 3, 11, 9, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    expected = F.conv2d(x, f[None, None].repeat(3, 1, 1, 1), groups=3, stride=down)
    assert torch.allclose(_filter_taps(x, f, down), expected)


@pytest.mark.parametrize("down", [1, 2])
@pytest.mark.parametrize("size", [9, 10])
def test_fir_gradients_of_every_order_are_exact(down, size):
    """The filter's backward is its adjoint (and that one's backward the filter), as R1 needs."""
    from renderloop.models.stylegan2.layers import _DepthwiseFilter

    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64, requires_grad=True)
    f = torch.randn(4, 4, dtype=torch.float64)

    def fir(x):
        return _DepthwiseFilter.apply(x, f, down, False, None)

    assert torch.allclose(fir(x), F.conv2d(x, f[None, None].repeat(3, 1, 1, 1), groups=3, stride=down))
    assert torch.autograd.gradcheck(fir, (x,)) and torch.autograd.gradgradcheck(fir, (x,))


def test_fir_backward_after_autocast():
    """Under autocast the filter runs in bf16; a backward outside the autocast block still works."""
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upfirdn2d(x, fir_filter(), down=2, padding=[1, 1, 1, 1])
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.shape == x.shape and x.grad.abs().sum() > 0


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_networks_equal_eager():
    """Under ``torch.compile`` the FIR filters take the shifted-taps form: same images, same logits."""
    G, D = _tiny(), Discriminator(16, 3, channel_base=256, channel_max=32).eval()
    z = torch.randn(2, 32)
    with torch.no_grad():
        img = G(z, noise_mode="const")
        assert torch.allclose(torch.compile(G)(z, noise_mode="const"), img, atol=1e-5)
        assert torch.allclose(torch.compile(D)(img), D(img), atol=1e-5)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_modulated_conv_unfused_equals_the_grouped_weights(up, demodulate, channels_last):
    torch.manual_seed(0)
    x, weight = torch.randn(3, 8, 6, 6, dtype=torch.float64), torch.randn(5, 8, 3, 3, dtype=torch.float64)
    styles, noise = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 1, 6 * up, 6 * up, dtype=torch.float64)
    kw = {"up": up, "padding": 1, "f": fir_filter().double(), "demodulate": demodulate, "noise": noise}
    fused = modulated_conv2d(x, weight, styles, fused=True, **kw)
    if channels_last:
        x, weight = x.to(memory_format=torch.channels_last), weight.to(memory_format=torch.channels_last)
    unfused = modulated_conv2d(x, weight, styles, **kw)
    assert unfused.shape == (3, 5, 6 * up, 6 * up) and torch.allclose(unfused, fused, atol=1e-10)
    if demodulate:  # demodulated outputs have unit-variance weights per output: scale-free in styles
        assert torch.allclose(modulated_conv2d(x, weight, 7 * styles, **kw), unfused, atol=1e-10)


def test_truncation_psi_zero_gives_the_mean_image():
    G = _tiny()
    G.mapping.w_avg.copy_(torch.randn(32))
    a = G(torch.randn(2, 32), truncation_psi=0.0, noise_mode="const")
    b = G(torch.randn(2, 32), truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[0], a[1], atol=1e-5)
    ws = sample_ws(G, torch.randn(2, 32), psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    z = torch.randn(2, 32)
    cut, free = sample_ws(G, z, psi=0.0, cutoff=2), sample_ws(G, z)  # only the first two styles truncated
    assert torch.allclose(cut[:, :2], G.mapping.w_avg.expand(2, 2, 32)) and torch.equal(cut[:, 2:], free[:, 2:])


def test_w_avg_tracks_the_mapping_in_training():
    G = _tiny()
    G.mapping(torch.randn(64, 32), update_emas=True)
    assert G.mapping.w_avg.abs().sum() > 0


def test_style_mixing_takes_layers_from_the_crossover_on():
    G = _tiny()
    a, b = sample_ws(G, torch.randn(2, 32)), sample_ws(G, torch.randn(2, 32))
    mixed = mix_styles(a, b, 3)
    assert torch.equal(mixed[:, :3], a[:, :3]) and torch.equal(mixed[:, 3:], b[:, 3:])
    per_sample = mix_styles(a, b, torch.tensor([1, 4]))
    assert torch.equal(per_sample[0, 1:], b[0, 1:]) and torch.equal(per_sample[1, :4], a[1, :4])
    # Coarse layers set the coarse image: mixing only the last layer changes the image little.
    img_a = G.synthesis(a, noise_mode="const")
    img_late = G.synthesis(mix_styles(a, b, G.num_ws - 1), noise_mode="const")
    img_early = G.synthesis(mix_styles(b, a, 1), noise_mode="const")
    assert (img_late - img_a).abs().mean() < (img_early - img_a).abs().mean()


def test_view_groups_keep_the_view_layer_styles_fixed(tmp_path):
    G = _tiny()
    codes = ViewCodes(view_layers=2)
    codes.add_sampled(G, 3, seed=1)
    content = sample_ws(G, torch.randn(4, 32))
    ws = view_group(content, codes.stack())  # (4 objects × 3 views)
    assert ws.shape == (12, G.num_ws, 32)
    grouped = ws.view(4, 3, G.num_ws, 32)
    for v, name in enumerate(codes.names()):
        assert torch.equal(grouped[:, v, :2], codes.codes[name].expand(4, 2, 32))  # view layers: the code
    assert torch.equal(grouped[:, :, 2:], content[:, None, 2:].expand(4, 3, G.num_ws - 2, 32))  # the rest: the object
    drawn = torch.tensor([[2, 0], [1, 2], [0, 1], [2, 1]])  # each object its own codes
    own = view_group(content, codes.stack()[drawn]).view(4, 2, G.num_ws, 32)
    assert torch.equal(own[:, :, :2], codes.stack()[drawn]) and torch.equal(own[:, :, 2:], grouped[:, :2, 2:])
    codes.save(tmp_path / "views.pt")
    again = ViewCodes.load(tmp_path / "views.pt")
    assert again.names() == codes.names() and torch.equal(again.stack(), codes.stack())
    with pytest.raises(KeyError, match="no view code named"):
        codes.stack(["front"])


def test_offsets_move_only_the_chosen_layers():
    ws = torch.zeros(2, 6, 4)
    moved = offset_ws(ws, torch.ones(2, 4), layers=slice(0, 2))
    assert moved[:, :2].eq(1).all() and moved[:, 2:].eq(0).all()
    assert offset_ws(ws, torch.ones(2, 4)).eq(1).all()


def test_a_mapping_tail_offset_starts_at_zero_and_reaches_what_the_mapping_makes():
    torch.manual_seed(0)
    G = Generator(
        GeneratorConfig(z_dim=32, w_dim=32, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=4)
    )
    assert torch.allclose(MappingTail(G, 0)(torch.ones(3, 32)), torch.ones(3, 32))  # depth 0: a plain W offset
    tail = MappingTail(G, 2, samples=256)
    assert tail(torch.zeros(3, tail.hidden_dim)).abs().max() < 1e-6
    # Moving the hidden code from its mean to z's lands on z's w: w̄ + Δw = mapping(z).
    z = torch.randn(5, 32)
    from renderloop.models.stylegan2.layers import normalize_2nd_moment

    h = G.mapping.fc1(G.mapping.fc0(normalize_2nd_moment(z)))
    delta = tail(h - tail.hidden_mean)
    w_mean = tail._tail(tail.hidden_mean[None])
    assert torch.allclose(w_mean + delta, G.mapping(z)[:, 0], atol=1e-5)
    e = torch.zeros(2, tail.hidden_dim, requires_grad=True)
    tail(e).sum().backward()
    assert e.grad.abs().sum() > 0  # the encoder learns through G's frozen layers
    with pytest.raises(ValueError, match="depth must be in"):
        MappingTail(G, 5)


def test_pixel_features_dimensions_and_subsets_match_the_full_map():
    G = _tiny(16)
    ws = sample_ws(G, torch.randn(2, 32))
    full, image = pixel_features(G, ws)
    assert full.shape == (2, 16 * 16, feature_channels(G)) and image.shape == (2, 3, 16, 16)
    assert feature_channels(G) == 32 + 2 * 32 + 2 * 16  # b4: conv1; b8, b16: conv0 + conv1 (16 wide)
    pixels = torch.randint(256, (2, 40))
    subset, _ = pixel_features(G, ws, pixels)
    assert subset.shape == (2, 40, feature_channels(G))
    expected = torch.gather(full, 1, pixels.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert torch.allclose(subset, expected, atol=1e-5)
