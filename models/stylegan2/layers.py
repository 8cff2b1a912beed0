"""StyleGAN2 building blocks: equalized-learning-rate layers, FIR resampling, modulated convolution.

Parameter names and storage conventions follow the published StyleGAN2 checkpoints (weights are
stored unscaled and multiplied by their gain at run time), so their tensors load by name. Images
and feature maps are ``[B, C, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "fir_filter",
    "upfirdn2d",
    "upsample2d",
    "bias_act",
    "conv2d_resample",
    "conv_transpose_unfiltered",
    "demodulation",
    "modulated_conv2d",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "normalize_2nd_moment",
]

LRELU_GAIN = math.sqrt(2)


def fir_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Separable 2D low-pass filter ``[k, k]`` with unit sum, from 1D ``taps``."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0):
    """Upsample by zero insertion, pad (``x0, x1, y0, y1``; negative crops), filter with ``f``
    (true convolution) times ``gain``, keep every ``down``-th pixel."""
    B, C, H, W = x.shape
    if up > 1:
        x = x.reshape(B, C, H, 1, W, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(B, C, H * up, W * up)
    x0, x1, y0, y1 = padding
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    f = (f * gain).flip([0, 1]).to(x.dtype)
    if torch.compiler.is_compiling():
        return _filter_taps(x, f, down)
    return _DepthwiseFilter.apply(x, f, down, False, None)


class _DepthwiseFilter(torch.autograd.Function):
    """Per-channel correlation with a fixed filter ``f`` and stride ``down`` (or, ``transposed``,
    its adjoint, to ``size``). Each one's backward is the other, so gradients of every order stay
    single depthwise kernels: autograd's own double backward of a grouped convolution (R1's) runs
    one convolution per channel."""

    @staticmethod
    def forward(ctx, x, f, down, transposed, size):
        if f.requires_grad:
            raise ValueError("upfirdn2d: the FIR filter is fixed (it takes no gradient)")
        ctx.f, ctx.down, ctx.transposed, ctx.size = f, down, transposed, x.shape[2:]
        kernel = f.to(x.dtype)[None, None].expand(x.shape[1], 1, *f.shape).contiguous()
        if not transposed:
            return F.conv2d(x, kernel, stride=down, groups=x.shape[1])
        extra = [size[i] - ((x.shape[2 + i] - 1) * down + f.shape[i]) for i in range(2)]
        return F.conv_transpose2d(x, kernel, stride=down, groups=x.shape[1], output_padding=extra)

    @staticmethod
    def backward(ctx, grad):
        return _DepthwiseFilter.apply(grad, ctx.f, ctx.down, not ctx.transposed, ctx.size), None, None, None, None


def _filter_taps(x: torch.Tensor, f: torch.Tensor, down: int = 1) -> torch.Tensor:
    """``x`` correlated with ``f`` per channel (no padding), every ``down``-th pixel, as a sum of
    shifted views: what ``upfirdn2d`` runs under ``torch.compile``, which fuses the sum and the
    elementwise work around it into one kernel instead of a separate depthwise convolution."""
    kh, kw = f.shape
    H, W = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    taps = [f[i, j] * x[:, :, i : i + H : down, j : j + W : down] for i in range(kh) for j in range(kw)]
    return sum(taps[1:], taps[0])


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """``up``× upsampling with the FIR filter ``f`` (the skip images of the synthesis network)."""
    k = f.shape[-1]
    pad = [(k + up - 1) // 2, (k - up) // 2]
    return upfirdn2d(x, f, up=up, padding=[pad[0], pad[1], pad[0], pad[1]], gain=up * up)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0, clamp=None):
    """Add a per-channel bias, apply ``linear`` or ``lrelu`` (slope 0.2), scale by ``gain``, clamp."""
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(x, w, f=None, up: int = 1, down: int = 1, padding: int = 0, groups: int = 1):
    """2D convolution with an optional 2× FIR upsampling (transposed convolution, then filter) or
    downsampling (filter, then strided convolution); ``w`` is ``[O, I/groups, k, k]``."""
    k = w.shape[-1]
    if up > 1:  # transposed convolution, then the filter removes its checkerboard
        x, pad = conv_transpose_unfiltered(x, w, f, up, padding, groups)
        return upfirdn2d(x, f, padding=pad, gain=up * up)
    if down > 1:
        fk = f.shape[-1]
        p0, p1 = padding + (fk - down + 1) // 2, padding + (fk - down) // 2
        if k == 1:  # filter and subsample together, then the 1×1 convolution
            x = upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1])
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=[p0, p1, p0, p1])
        return F.conv2d(x, w, stride=down, groups=groups)
    return F.conv2d(x, w, padding=padding, groups=groups)


def conv_transpose_unfiltered(x, w, f, up: int, padding: int, groups: int = 1):
    """The transposed convolution of an ``up``× ``conv2d_resample`` and the padding ``[x0, x1, y0,
    y1]`` the FIR filter ``f`` then takes (with gain ``up²``) to finish it."""
    out, per_group, k = w.shape[0], w.shape[1], w.shape[-1]
    w = w.reshape(groups, out // groups, per_group, k, k).transpose(1, 2)
    w = w.reshape(groups * per_group, out // groups, k, k)
    x = F.conv_transpose2d(x, w, stride=up, groups=groups)
    p0 = padding + (f.shape[-1] + up - 1) // 2 - (k - 1)
    p1 = padding + (f.shape[-1] - up) // 2 - (k - up)
    return x, [p0, p1, p0, p1]


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """``[B, O]``: one over the norm of each sample's modulated weights ``weight ⊙ style`` per
    output channel; ``|weight ⊙ style|²`` summed over inputs and taps is ``styles² @ Σ_taps weight²``."""
    return (styles.square() @ weight.to(styles.dtype).square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()


def modulated_conv2d(
    x, weight, styles, noise=None, up: int = 1, padding: int = 0, f=None, demodulate=True, fused=False,
    modulated_input=False,
):  # fmt: skip
    """Convolution with per-sample weights ``weight ⊙ style`` (``[B, I]`` styles scale input
    channels), divided by their norm when ``demodulate``; ``noise`` is added after it.

    ``fused`` builds the per-sample weights and runs one grouped convolution; otherwise (the
    default, and much faster on tensor cores) the input is scaled by the styles, convolved with the
    shared weight and the output scaled by the demodulation coefficients: the same function.
    ``modulated_input``: ``x`` is already scaled by the styles (by the kernel that made it)."""
    B = x.shape[0]
    cout, cin, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # keep fp16 activations in range
        weight = weight * (1 / math.sqrt(cin * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if modulated_input and (fused or x.dtype == torch.float16):
        raise ValueError("modulated_conv2d(): modulated_input needs fused=False and a non-fp16 input")
    if not fused:
        if not modulated_input:
            x = x * styles.to(x.dtype).reshape(B, cin, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=f, up=up, padding=padding)
        if not demodulate:
            return x + noise if noise is not None else x
        dcoefs = demodulation(weight, styles).to(x.dtype).reshape(B, cout, 1, 1)
        return torch.addcmul(noise, x, dcoefs) if noise is not None else x * dcoefs
    w = weight.unsqueeze(0) * styles.reshape(B, 1, cin, 1, 1)  # (B, out, in, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(B, cout, 1, 1, 1)
    x = x.reshape(1, B * cin, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(B * cout, cin, kh, kw).to(x.dtype), f=f, up=up, padding=padding, groups=B)
    x = x.reshape(B, cout, *x.shape[2:])
    return x + noise if noise is not None else x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalized learning rate: ``weight`` is stored ``× 1/lr_multiplier``."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = x.matmul(w.t())
        return bias_act(x, b, self.activation, gain=LRELU_GAIN if self.activation == "lrelu" else 1.0)


class Conv2dLayer(nn.Module):
    """Convolution with equalized learning rate, optional 2× FIR up/downsampling, bias and lrelu."""

    def __init__(
        self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1, conv_clamp=None
    ):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)
