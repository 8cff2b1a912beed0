"""The 2× upsampling layer's epilogue in one kernel: the 4×4 FIR filter after the transposed
convolution, then demodulation, noise, bias, leaky ReLU, gain, clamp and optionally the next
layer's input modulation, reading the convolution's output once and writing once.

Under ``torch.compile`` the composed layers become one Inductor kernel too, but one that gathers
each input pixel sixteen times at flat NHWC offsets; this one walks down the image, filtering each
input row horizontally and adding it into the four output rows it belongs to, held in registers
(``_fir_kernel``). Inference only (no autograd): ``SynthesisLayer.fusable`` says where the
generator takes it. Its block sizes are autotuned on the first call per layer shape (seconds).
With ``TRITON_INTERPRET=1`` it runs on CPU tensors in Triton's interpreter (slow; the tests do).
"""

from __future__ import annotations

import importlib.util

import torch
from torch.utils.flop_counter import register_flop_formula

from renderloop.checks import check_shape

__all__ = ["available", "fir_bias_act"]


HAS_TRITON = importlib.util.find_spec("triton") is not None
# Inductor may hand the op its input in the layout it chose (the output's is fixed: NHWC).
_TAGS = (torch.Tag.flexible_layout,) if hasattr(torch.Tag, "flexible_layout") else ()


def available(x: torch.Tensor, f: torch.Tensor) -> bool:
    """Whether ``fir_bias_act`` runs ``x`` as a GPU kernel: CUDA, Triton installed, a 4×4 filter."""
    return HAS_TRITON and x.is_cuda and tuple(f.shape) == (4, 4)


def fir_bias_act(x, f, padding, gain, dcoefs, noise, bias, act_gain, clamp=None, out_scale=None) -> torch.Tensor:
    """``upfirdn2d(x, f, padding=padding, gain=gain)`` (``padding`` is ``[x0, x1, y0, y1]``), times
    ``dcoefs [B, C]``, plus ``noise`` (``[H, W]`` or ``[B, 1, H, W]``, or None), then
    ``bias_act(·, bias, "lrelu", act_gain, clamp)``, times ``out_scale [B, C]`` if given. The
    output is NHWC (``channels_last``) whatever the input's layout."""
    op = "fir_bias_act"
    check_shape(op, "x", x, ["B", "C", ">0", ">0"])
    check_shape(op, "f", f, [4, 4])
    B, C, H, W = x.shape
    if len(padding) != 4:
        raise ValueError(f"{op}(): padding must be [x0, x1, y0, y1]; got {list(padding)}")
    size = _output_size(H, W, padding)
    if min(size) < 1:
        raise ValueError(f"{op}(): padding {list(padding)} leaves no output of a {H}×{W} input")
    check_shape(op, "dcoefs", dcoefs, [B, C])
    check_shape(op, "bias", bias, [C])
    if out_scale is not None:
        check_shape(op, "out_scale", out_scale, [B, C])
        out_scale = out_scale.contiguous()
    if noise is not None:
        check_shape(op, "noise", noise, [*([None, 1] if noise.dim() == 4 else []), *size])
        noise = noise.reshape(-1, *size)  # [1 or B, H, W]
        if noise.shape[0] not in (1, B):
            raise ValueError(f"{op}(): noise must have batch 1 or {B}; got {noise.shape[0]}")
    taps = (f * gain).flip([0, 1]).float().contiguous()  # true convolution → correlation order
    return torch.ops.renderloop.fir_bias_act(
        x, taps, list(padding), dcoefs.contiguous(), noise, bias.contiguous(), out_scale, float(act_gain), clamp
    )


def _output_size(H: int, W: int, padding) -> tuple[int, int]:
    """Rows and columns the 4×4 filter leaves of an ``H × W`` input padded by ``[x0, x1, y0, y1]``."""
    x0, x1, y0, y1 = padding
    return H + y0 + y1 - 3, W + x0 + x1 - 3


def _output(x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """Always NHWC, whatever the input's layout: the layout the convolutions around it want, and one
    ``torch.compile`` can rely on while it passes the input in the layout it chose."""
    B, C, H, W = x.shape
    size = (B, C, *_output_size(H, W, padding))
    return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("renderloop::fir_bias_act", mutates_args=(), tags=_TAGS)
def _fir_bias_act(
    x: torch.Tensor,
    taps: torch.Tensor,
    padding: list[int],
    dcoefs: torch.Tensor,
    noise: torch.Tensor | None,
    bias: torch.Tensor,
    out_scale: torch.Tensor | None,
    act_gain: float,
    clamp: float | None,
) -> torch.Tensor:
    y = _output(x, padding)
    launch(x, taps, padding, dcoefs, noise, bias, out_scale, act_gain, clamp, y)
    return y


@_fir_bias_act.register_fake
def _(x, taps, padding, dcoefs, noise, bias, out_scale, act_gain, clamp):
    return _output(x, padding)


@register_flop_formula(torch.ops.renderloop.fir_bias_act)
def _flops(x_shape, taps_shape, padding, *args, out_shape=None, **kwargs) -> int:
    """Counted as the depthwise convolution it replaces (a multiply-add is 2)."""
    B, C, H, W = out_shape
    return 2 * B * C * H * W * taps_shape[0] * taps_shape[1]


def launch(x, taps, padding, dcoefs, noise, bias, out_scale, act_gain, clamp, y) -> None:
    """Run the kernel into ``y``: autotuned block sizes on the GPU, a small fixed set on the CPU."""
    from ._fir_kernel import fir_bias_act_rows, fir_bias_act_tuned

    B, C, H, W = x.shape
    Ho, Wo = y.shape[2:]
    if x.is_cuda:
        kernel, config = fir_bias_act_tuned, {}
    else:
        kernel, config = fir_bias_act_rows, {"ROWS": 8, "BLOCK_W": 8, "BLOCK_C": 32}

    def grid(meta):
        return B * -(-C // meta["BLOCK_C"]), -(-Wo // meta["BLOCK_W"]), -(-Ho // meta["ROWS"])

    n = noise if noise is not None else y  # any pointer; unused without noise
    kernel[grid](
        x, taps, dcoefs, n, bias, out_scale if out_scale is not None else dcoefs, y,
        C, H, W, Ho, Wo, padding[2], padding[0], act_gain, clamp if clamp is not None else 0.0,
        *x.stride(), *y.stride(), n.stride(0) if n.shape[0] > 1 else 0, n.stride(-2), n.stride(-1),
        HAS_NOISE=noise is not None, HAS_SCALE=out_scale is not None, HAS_CLAMP=clamp is not None, **config,
    )  # fmt: skip
