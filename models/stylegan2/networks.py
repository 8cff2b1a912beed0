"""StyleGAN2 generator and discriminator (Karras et al., CVPR 2020), written for renderloop.

Module and parameter names match the published StyleGAN2 checkpoints (``mapping.fc0.weight``,
``synthesis.b64.conv0.affine.bias``, ``b4.fc.weight``, ...), so ``load_state_dict`` takes their
tensors unchanged (see ``models/stylegan2/checkpoints.py``). ``w`` tensors are ``[B, num_ws, w_dim]``
(one style vector per layer); images are ``[B, C, H, W]`` in about ``[-1, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from . import upsample_act
from .layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    bias_act,
    conv_transpose_unfiltered,
    demodulation,
    fir_filter,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2d,
)

__all__ = [
    "GeneratorConfig",
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "Discriminator",
    "channels_for",
    "mix_styles",
]

ARCHITECTURES = ("orig", "skip", "resnet")


def channels_for(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per block resolution, ``min(channel_base / res, channel_max)``, 4 … resolution."""
    return {4 * 2**i: min(channel_base // (4 * 2**i), channel_max) for i in range(int(math.log2(resolution)) - 1)}


@dataclass
class GeneratorConfig:
    """A generator's architecture (what a checkpoint's init arguments say)."""

    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_resolution: int = 256
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channels: dict[int, int] = field(default_factory=dict)
    """Channels per block resolution; empty: ``channels_for(img_resolution, channel_base, channel_max)``."""
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "skip"
    conv_clamp: float | None = 256.0
    use_noise: bool = True

    def __post_init__(self) -> None:
        if self.img_resolution < 4 or self.img_resolution & (self.img_resolution - 1):
            raise ValueError(f"GeneratorConfig: img_resolution must be a power of two >= 4; got {self.img_resolution}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"GeneratorConfig: architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        self.channels = {int(k): int(v) for k, v in self.channels.items()} or channels_for(
            self.img_resolution, self.channel_base, self.channel_max
        )


def mix_styles(ws: torch.Tensor, other: torch.Tensor, crossover: int | torch.Tensor) -> torch.Tensor:
    """Layers ``>= crossover`` (an int, or ``[B]`` per sample) taken from ``other``: style mixing."""
    layer = torch.arange(ws.shape[1], device=ws.device)
    crossover = torch.as_tensor(crossover, device=ws.device).reshape(-1, 1)
    return torch.where((layer >= crossover).unsqueeze(-1), other, ws)


class MappingNetwork(nn.Module):
    """``z [B, z_dim]`` (and labels ``c [B, c_dim]``) → ``w [B, num_ws, w_dim]``; keeps ``w_avg``."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        embed = w_dim if c_dim else 0
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        features = [z_dim + embed] + [w_dim] * num_layers
        for i in range(num_layers):
            layer = FullyConnectedLayer(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{i}", layer)
        if num_ws is not None and w_avg_beta is not None:  # a discriminator's label mapping has none
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_emas=False) -> torch.Tensor:
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if hasattr(self, "w_avg"):  # under autocast the layers answer in bf16; w keeps the buffer's dtype
            x = x.to(self.w_avg.dtype)
        if update_emas and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally 2× up), noise, bias, lrelu."""

    triton_epilogue = "compiled"
    """Where a 2× layer runs its filter and everything after its transposed convolution as one
    Triton kernel (``upsample_act``): ``compiled``, where ``torch.compile`` traces the layer (the
    measured form, NHWC like Inductor's convolutions); ``always``, in eager mode too (its output is
    then NHWC); ``never``. In each case only on CUDA, in fp32 or bf16 (not under fp16 autocast), and
    where no gradient is needed: the kernel has no backward. A class default; set on an instance to
    compare."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, use_noise=True, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", fir_filter())
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            # [1], not a 0-dim scalar as in published checkpoints (loading reshapes): DeepSpeed
            # broadcasts parameters as bytes, which a 0-dim tensor cannot be viewed as.
            self.noise_strength = nn.Parameter(torch.zeros([1]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "noise_strength"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fusable(self, x: torch.Tensor, *followers: nn.Module) -> bool:
        """Whether this layer runs on ``x`` as the Triton kernel (then it can also take
        ``out_scale``); ``followers``: modules whose parameters would feed its output too (the next
        layer, whose styles become ``out_scale``)."""
        mode = self.triton_epilogue
        if mode not in ("compiled", "always", "never"):
            raise ValueError(f"SynthesisLayer.triton_epilogue must be compiled, always or never; got {mode!r}")
        if self.up != 2 or mode == "never" or (mode == "compiled" and not torch.compiler.is_compiling()):
            return False
        params = (p for module in (self, *followers) for p in module.parameters())
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return False
        device = x.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
            return False
        return x.dtype in (torch.float32, torch.bfloat16) and upsample_act.available(x, self.resample_filter)

    def forward(self, x, w, noise_mode="random", gain=1.0, styles=None, modulated_input=False, out_scale=None):
        """``styles``: this layer's, if already computed from ``w``; ``modulated_input``: ``x`` is
        already scaled by them; ``out_scale [B, C]``: also scale the output (the next layer's
        styles), only where ``fusable``."""
        styles = self.affine(w) if styles is None else styles
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            noise = noise * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = (self.noise_const * self.noise_strength).to(x.dtype)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.fusable(x):
            if not modulated_input:
                x = x * styles.to(x.dtype).reshape(*styles.shape, 1, 1)
            x, pad = conv_transpose_unfiltered(x, self.weight.to(x.dtype), self.resample_filter, self.up, padding=1)
            return upsample_act.fir_bias_act(
                x, self.resample_filter, pad, self.up**2, demodulation(self.weight, styles), noise, self.bias,
                math.sqrt(2) * gain, clamp, out_scale,
            )  # fmt: skip
        if out_scale is not None:
            raise ValueError("SynthesisLayer.forward(): out_scale needs the Triton kernel, not taken here (fusable)")
        f = self.resample_filter
        x = modulated_conv2d(x, self.weight, styles, noise, self.up, padding=1, f=f, modulated_input=modulated_input)
        return bias_act(x, self.bias, "lrelu", gain=math.sqrt(2) * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 convolution (no demodulation) to image channels."""

    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (2× up) conv0, conv1, and the image path (``skip``: toRGB added to the
    upsampled image; ``resnet``: a 1×1 skip on features; ``orig``: toRGB at the end only)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, cfg: GeneratorConfig):
        super().__init__()
        self.in_channels, self.resolution, self.is_last, self.architecture = (
            in_channels, resolution, is_last, cfg.architecture,
        )  # fmt: skip
        self.register_buffer("resample_filter", fir_filter())
        kw = {"use_noise": cfg.use_noise, "conv_clamp": cfg.conv_clamp}
        self.num_conv = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **kw)
            self.num_conv = 2
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **kw)
        self.num_torgb = 0
        if is_last or self.architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=cfg.conv_clamp)
            self.num_torgb = 1
        if in_channels and self.architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, up=2)

    def forward(self, x, img, ws, noise_mode="random", features=None):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, next(w_iter), noise_mode)
            if features is not None:
                features.append(x)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode)
            if features is not None:
                features.append(x)
            x = y + self.conv1(x, next(w_iter), noise_mode, gain=math.sqrt(0.5))
            if features is not None:
                features.append(x)
        elif features is None and self.conv0.fusable(x, self.conv1):  # conv0's kernel also applies conv1's styles
            w0, w1 = next(w_iter), next(w_iter)
            styles = self.conv1.affine(w1)
            x = self.conv0(x, w0, noise_mode, out_scale=styles)
            x = self.conv1(x, w1, noise_mode, styles=styles, modulated_input=True)
        else:
            x = self.conv0(x, next(w_iter), noise_mode)
            if features is not None:
                features.append(x)
            x = self.conv1(x, next(w_iter), noise_mode)
            if features is not None:
                features.append(x)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter)).float()
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """``w [B, num_ws, w_dim]`` → image; block ``b{res}`` reads ``num_conv + num_torgb`` styles
    starting at its first conv's index (a block's toRGB shares the next block's first style)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.img_resolution, cfg.img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(cfg.img_resolution)) + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = cfg.channels[res // 2] if res > 4 else 0
            is_last = res == cfg.img_resolution
            block = SynthesisBlock(in_channels, cfg.channels[res], cfg.w_dim, res, cfg.img_channels, is_last, cfg)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def block_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        out, index = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out.append(ws.narrow(1, index, block.num_conv + block.num_torgb))
            index += block.num_conv
        return out

    def forward(self, ws, noise_mode="random", features: list | None = None) -> torch.Tensor:
        x = img = None
        for res, block_ws in zip(self.block_resolutions, self.block_ws(ws), strict=True):
            x, img = getattr(self, f"b{res}")(x, img, block_ws, noise_mode, features)
        return img


class Generator(nn.Module):
    """``z [B, z_dim]`` → image ``[B, img_channels, R, R]``: mapping, then synthesis."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.c_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers, cfg.mapping_lr_multiplier, cfg.w_avg_beta
        )

    def forward(
        self,
        z,
        c=None,
        truncation_psi=1.0,
        truncation_cutoff=None,
        noise_mode="random",
        update_emas=False,
        z_mix=None,
        crossover=None,
        return_ws=False,
    ):
        """Images of ``z``; with ``z_mix`` and ``crossover`` (an int or ``[B]``), the styles from
        ``crossover`` on come from ``z_mix`` (style mixing); ``return_ws`` also returns the styles."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas)
        if z_mix is not None:
            ws = mix_styles(ws, self.mapping(z_mix, c, truncation_psi, truncation_cutoff), crossover)
        img = self.synthesis(ws, noise_mode)
        return (img, ws) if return_ws else img


class MinibatchStdLayer(nn.Module):
    """Appends the standard deviation over groups of ``group_size`` samples as ``num_channels`` maps."""

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G = min(self.group_size, B) if self.group_size else B
        F_ = self.num_channels
        y = x.reshape(G, -1, F_, C // F_, H, W)  # (G, B/G, F, C/F, H, W)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[2, 3, 4])  # (B/G, F)
        y = y.reshape(-1, F_, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """fromRGB (first block), two 3×3 convs with 2× down, and (``resnet``) a 1×1 skip."""

    def __init__(self, in_channels, tmp_channels, out_channels, img_channels, architecture="resnet", conv_clamp=None):
        super().__init__()
        self.in_channels, self.architecture = in_channels, architecture
        self.register_buffer("resample_filter", fir_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return self.conv1(self.conv0(x))


class DiscriminatorEpilogue(nn.Module):
    """4×4: minibatch standard deviation, conv, fully connected, one logit (or a projection on labels)."""

    def __init__(
        self, in_channels, cmap_dim=0, resolution=4, mbstd_group_size=4, mbstd_num_channels=1, conv_clamp=None
    ):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        extra = mbstd_num_channels
        self.conv = Conv2dLayer(in_channels + extra, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim or 1)

    def forward(self, x, cmap=None) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """Image ``[B, C, R, R]`` (and labels) → logits ``[B, 1]``; resnet blocks down to 4×4."""

    def __init__(
        self,
        img_resolution=256,
        img_channels=3,
        c_dim=0,
        channels: dict[int, int] | None = None,
        channel_base=32768,
        channel_max=512,
        architecture="resnet",
        conv_clamp=256.0,
        mbstd_group_size=4,
        mbstd_num_channels=1,
        cmap_dim=None,
    ):
        super().__init__()
        if architecture not in ("orig", "resnet"):
            raise ValueError(f"Discriminator: architecture must be 'orig' or 'resnet'; got {architecture!r}")
        self.img_resolution, self.img_channels, self.c_dim = img_resolution, img_channels, c_dim
        channels = {
            int(k): int(v) for k, v in (channels or channels_for(img_resolution, channel_base, channel_max)).items()
        }
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        cmap_dim = (channels[4] if cmap_dim is None else cmap_dim) if c_dim else 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, channels[res], channels[res // 2], img_channels, architecture, conv_clamp
            )
            setattr(self, f"b{res}", block)
        if c_dim:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, None, w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim, 4, mbstd_group_size, mbstd_num_channels, conv_clamp)

    def forward(self, img, c=None) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim else None
        return self.b4(x, cmap)
