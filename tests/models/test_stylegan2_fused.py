"""The fused 2× upsampling epilogue (``upsample_act``): the kernel against the composed layers, on
CUDA where there is one, otherwise on the CPU in Triton's interpreter (``conftest`` sets
``TRITON_INTERPRET=1`` without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from renderloop.models.stylegan2 import Generator, GeneratorConfig, upsample_act
from renderloop.models.stylegan2.layers import bias_act, fir_filter, upfirdn2d
from renderloop.models.stylegan2.networks import SynthesisLayer

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _composed(x, f, padding, gain, dcoefs, noise, bias, act_gain, clamp, out_scale):
    y = upfirdn2d(x, f, padding=padding, gain=gain) * dcoefs[:, :, None, None]
    y = bias_act(y + noise if noise is not None else y, bias, "lrelu", gain=act_gain, clamp=clamp)
    return y * out_scale[:, :, None, None] if out_scale is not None else y


def _case(B, C, H, W, padding):
    """Inputs with an asymmetric filter, so a flipped or transposed filter shows."""
    f = fir_filter((1, 2, 3, 1)) * torch.arange(1.0, 17.0).reshape(4, 4) / 8
    Ho, Wo = H + padding[2] + padding[3] - 3, W + padding[0] + padding[1] - 3
    case = {
        "x": torch.randn(B, C, H, W), "f": f, "padding": padding, "gain": 4.0, "dcoefs": torch.rand(B, C),
        "noise": torch.randn(B, 1, Ho, Wo), "bias": torch.randn(C), "act_gain": math.sqrt(2), "clamp": None,
        "out_scale": torch.rand(B, C),
    }  # fmt: skip
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


@pytest.mark.parametrize(
    "shape, padding",
    [((2, 5, 9, 11), [1, 1, 1, 1]), ((1, 70, 17, 17), [1, 1, 1, 1]), ((2, 3, 8, 6), [2, 1, 0, -1])],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_equals_the_composed_layers(shape, padding, channels_last):
    """Odd sizes, more channels than one block, cropping (negative padding), either layout."""
    torch.manual_seed(0)
    case = _case(*shape, padding)
    expected = _composed(**case)
    if channels_last:
        case["x"] = case["x"].to(memory_format=torch.channels_last)
    y = upsample_act.fir_bias_act(**case)
    assert y.shape == expected.shape and torch.allclose(y, expected, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)  # whatever the input's layout


def test_kernel_options_shared_noise_clamp_no_scale_bf16():
    torch.manual_seed(0)
    case = _case(2, 6, 10, 10, [1, 1, 1, 1])
    case.update(noise=torch.randn(9, 9, device=DEVICE), clamp=0.5, out_scale=None)
    expected = _composed(**case)
    assert expected.abs().max() == 0.5  # the clamp is active
    assert torch.allclose(upsample_act.fir_bias_act(**case), expected, atol=1e-5)
    case.update(x=case["x"].bfloat16(), noise=case["noise"].bfloat16())
    y = upsample_act.fir_bias_act(**case)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), expected, atol=0.02)


def test_registered_op_passes_torch_opcheck():
    """Schema, fake (meta) implementation and no autograd registration, as ``torch.compile`` needs."""
    case = _case(1, 3, 7, 7, [1, 1, 1, 1])
    taps = (case["f"] * 4).flip([0, 1]).contiguous()
    noise = case["noise"].reshape(1, 6, 6)
    args = (case["x"], taps, [1, 1, 1, 1], case["dcoefs"], noise, case["bias"], case["out_scale"], 1.4, None, True)
    torch.library.opcheck(torch.ops.renderloop.fir_bias_act.default, args)


def _generator(**kw) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, channel_base=256, channel_max=32, **kw)
    G = Generator(cfg).eval().to(DEVICE)
    with torch.no_grad():  # noise strengths and biases start at zero: make them count
        for p in G.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return G


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Let ``SynthesisLayer`` take the kernel on CPU tensors too (it does so on CUDA only); fp32
    convolutions stay fp32 on CUDA (the kernel's NHWC output gets other cuDNN algorithms, whose
    TF32 rounding would differ by about 1e-4)."""
    monkeypatch.setattr(upsample_act, "available", lambda x, f: tuple(f.shape) == (4, 4))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _both(G, *args, **kw):
    """The generator's output with the 2× layers composed, then fused, from the same noise seed."""
    out = []
    for fused in (False, True):
        for layer in G.modules():
            if isinstance(layer, SynthesisLayer):
                layer.fused_epilogue = fused
        torch.manual_seed(1)
        out.append(G(*args, **kw))
    return out


@pytest.mark.parametrize("noise_mode", ["const", "random"])
@pytest.mark.parametrize("architecture, conv_clamp", [("skip", None), ("skip", 0.3), ("resnet", None)])
def test_generator_fused_equals_composed(fused_on_cpu, noise_mode, architecture, conv_clamp):
    G = _generator(architecture=architecture, conv_clamp=conv_clamp)
    with torch.no_grad():
        composed, fused = _both(G, torch.randn(3, 32, device=DEVICE), noise_mode=noise_mode)
    assert torch.allclose(fused, composed, atol=1e-5) and composed.abs().max() > 0.5


def test_fused_kernel_only_where_no_gradient_is_needed(fused_on_cpu):
    """Training (weights or inputs that need gradients) keeps the composed, differentiable layers."""
    G, z = _generator(), torch.randn(2, 32, device=DEVICE)
    conv0 = G.synthesis.b8.conv0
    x = torch.randn(2, conv0.weight.shape[1], 4, 4, device=DEVICE)
    assert not conv0.fusable(x)
    with torch.no_grad():
        assert conv0.fusable(x)
    G.requires_grad_(False)
    assert conv0.fusable(x) and not conv0.fusable(x.requires_grad_())
    assert not G.synthesis.b8.conv1.fusable(x)  # not a 2× layer
    G.requires_grad_(True)
    G(z, noise_mode="const").square().mean().backward()
    assert conv0.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="out_scale needs the fused kernel"):
        conv0(x, z, out_scale=torch.ones(2, conv0.weight.shape[0], device=DEVICE))


def test_flops_are_counted_as_the_filter_it_replaces(fused_on_cpu):
    """The roofline's FLOP count does not change with the kernel (``bench/stylegan2.py``)."""
    G = _generator().requires_grad_(False)
    z = torch.randn(1, 32, device=DEVICE)
    counts = []
    for fused in (False, True):
        for layer in G.modules():
            if isinstance(layer, SynthesisLayer):
                layer.fused_epilogue = fused
        with FlopCounterMode(display=False) as counter:
            G(z, noise_mode="const")
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.gpu
def test_generator_fused_equals_composed_on_cuda_in_bf16_and_compiled():
    G = _generator(conv_clamp=256)
    z = torch.randn(4, 32, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        composed, fused = _both(G, z, noise_mode="const")
        compiled = torch.compile(G)(z, noise_mode="const")
    for y in (fused, compiled):  # bf16 rounds the composed layers' every intermediate
        assert (y.float() - composed.float()).norm() / composed.float().norm() < 0.02
