"""The fused 2× upsampling epilogue (``upsample_act``): the kernel against the composed layers, on
CUDA where there is one, otherwise on the CPU in Triton's interpreter (``conftest`` sets
``TRITON_INTERPRET=1`` without CUDA)."""

from __future__ import annotations

import math
import shutil

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
    args = (case["x"], taps, [1, 1, 1, 1], case["dcoefs"], noise, case["bias"], case["out_scale"], 1.4, None)
    torch.library.opcheck(torch.ops.renderloop.fir_bias_act.default, args)


def test_bad_inputs_are_refused_with_their_names():
    case = _case(2, 3, 7, 7, [1, 1, 1, 1])
    for key, bad, message in [
        ("f", torch.ones(3, 3), r"f must have shape \[4, 4\]"),
        ("dcoefs", torch.ones(3, 3), r"dcoefs must have shape \[2, 3\]"),
        ("noise", torch.ones(2, 1, 7, 7), r"noise must have shape \[\*, 1, 6, 6\]"),
        ("noise", torch.ones(3, 1, 6, 6), "noise must have batch 1 or 2"),
        ("padding", [1, 1, 1], "padding must be"),
        ("padding", [1, 1, -3, -3], "leaves no output"),
    ]:
        with pytest.raises(ValueError, match=message):
            upsample_act.fir_bias_act(**{**case, key: bad})


def _generator(**kw) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, channel_base=256, channel_max=32, **kw)
    G = Generator(cfg).eval().to(DEVICE)
    with torch.no_grad():  # noise strengths and biases start at zero: make them count
        for p in G.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return G


def _count_launches(monkeypatch) -> list:
    """The input shape of every kernel launch from here on."""
    launches, launch = [], upsample_act.launch
    monkeypatch.setattr(upsample_act, "launch", lambda x, *args: launches.append(tuple(x.shape)) or launch(x, *args))
    return launches


@pytest.fixture
def kernel(monkeypatch):
    """The kernel on CPU tensors too (``SynthesisLayer`` takes it on CUDA only); returns its
    launches. fp32 convolutions stay fp32 on CUDA: the kernel's NHWC output gets other cuDNN
    algorithms, whose TF32 rounding would differ by about 1e-4."""
    monkeypatch.setattr(upsample_act, "available", lambda x, f: tuple(f.shape) == (4, 4))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return _count_launches(monkeypatch)


def _both(monkeypatch, G, *args, **kw):
    """The generator's output with the 2× layers composed, then as the kernel (in eager mode), from
    the same noise seed."""
    out = []
    for mode in ("never", "always"):
        monkeypatch.setattr(SynthesisLayer, "triton_epilogue", mode)
        torch.manual_seed(1)
        out.append(G(*args, **kw))
    return out


@pytest.mark.parametrize("noise_mode", ["const", "random"])
@pytest.mark.parametrize("architecture, conv_clamp", [("skip", None), ("skip", 0.3), ("orig", None), ("resnet", None)])
def test_generator_with_the_kernel_equals_composed(kernel, monkeypatch, noise_mode, architecture, conv_clamp):
    G = _generator(architecture=architecture, conv_clamp=conv_clamp)
    with torch.no_grad():
        composed, fused = _both(monkeypatch, G, torch.randn(3, 32, device=DEVICE), noise_mode=noise_mode)
    assert kernel == [(3, 32, 9, 9), (3, 16, 17, 17)]  # b8's and b16's conv0, once each
    assert torch.allclose(fused, composed, atol=1e-5) and composed.abs().max() > 0.5


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_generator_takes_the_kernel_and_eager_does_not(kernel):
    """By default (``triton_epilogue="compiled"``) the kernel runs where ``torch.compile`` traces the
    layers, and eager generation keeps the composed layers."""
    G, z = _generator(), torch.randn(2, 32, device=DEVICE)
    with torch.no_grad():
        eager = G(z, noise_mode="const")
        assert kernel == []
        compiled = torch.compile(G)(z, noise_mode="const")
    assert len(kernel) == 2 and torch.allclose(compiled, eager, atol=1e-4)


def test_kernel_only_where_no_gradient_is_needed(kernel, monkeypatch):
    """Training or fine-tuning any parameter that reaches the kernel's output keeps the composed,
    differentiable layers."""
    monkeypatch.setattr(SynthesisLayer, "triton_epilogue", "always")
    G, z = _generator(), torch.randn(2, 32, device=DEVICE)
    block = G.synthesis.b8
    x = torch.randn(2, block.conv0.weight.shape[1], 4, 4, device=DEVICE)
    assert not block.conv0.fusable(x)
    with torch.no_grad():
        assert block.conv0.fusable(x)
    G.requires_grad_(False)
    assert block.conv0.fusable(x, block.conv1) and not block.conv0.fusable(x.clone().requires_grad_())
    assert not block.conv1.fusable(x)  # not a 2× layer
    block.conv1.affine.requires_grad_(True)  # its styles would be the kernel's out_scale
    assert block.conv0.fusable(x) and not block.conv0.fusable(x, block.conv1)
    G.requires_grad_(False)
    block.conv0.bias.requires_grad_(True)  # fine-tuning biases only
    assert not block.conv0.fusable(x)
    G(z, noise_mode="const").square().mean().backward()
    assert block.conv0.bias.grad.abs().sum() > 0 and kernel == []
    with pytest.raises(ValueError, match="out_scale needs the Triton kernel"):
        block.conv0(x, z, out_scale=torch.ones(2, block.conv0.weight.shape[0], device=DEVICE))


def test_kernel_not_taken_in_fp16_or_fp64(kernel, monkeypatch):
    """fp16 (autocast or not) keeps the composed layers, whose fp16 safeguards the kernel lacks."""
    monkeypatch.setattr(SynthesisLayer, "triton_epilogue", "always")
    G = _generator().requires_grad_(False)
    conv0, x = G.synthesis.b8.conv0, torch.randn(2, 32, 4, 4, device=DEVICE)
    assert conv0.fusable(x) and not conv0.fusable(x.double()) and not conv0.fusable(x.half())
    with torch.autocast(DEVICE, dtype=torch.float16):
        assert not conv0.fusable(x)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert conv0.fusable(x)
    with pytest.raises(ValueError, match="triton_epilogue must be"):
        monkeypatch.setattr(SynthesisLayer, "triton_epilogue", True)
        conv0.fusable(x)


def test_flops_are_counted_as_the_filter_it_replaces(kernel, monkeypatch):
    """The roofline's FLOP count does not change with the kernel (``bench/stylegan2.py``)."""
    G = _generator().requires_grad_(False)
    z = torch.randn(1, 32, device=DEVICE)
    counts = []
    for mode in ("never", "always"):
        monkeypatch.setattr(SynthesisLayer, "triton_epilogue", mode)
        with FlopCounterMode(display=False) as counter:
            G(z, noise_mode="const")
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0 and len(kernel) == 2


@pytest.mark.gpu
def test_generator_with_the_kernel_on_cuda_in_bf16_and_compiled(monkeypatch):
    launches = _count_launches(monkeypatch)
    G = _generator(conv_clamp=256)
    z = torch.randn(4, 32, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        composed, fused = _both(monkeypatch, G, z, noise_mode="const")
        assert len(launches) == 2
        monkeypatch.setattr(SynthesisLayer, "triton_epilogue", "compiled")
        compiled = torch.compile(G)(z, noise_mode="const")
        assert len(launches) == 4
    for y in (fused, compiled):  # bf16 rounds the composed layers' every intermediate
        assert (y.float() - composed.float()).norm() / composed.float().norm() < 0.02
