"""Working in W: sampling with truncation, style mixing, view codes, latent offsets, features.

``ws`` are ``[B, num_ws, w_dim]``: one style per synthesis layer. The early layers set coarse
structure (for StyleGAN2 on cars, the viewpoint: GANverse3D's "view" layers); later layers set
shape details and appearance.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .layers import normalize_2nd_moment
from .networks import Generator, mix_styles

__all__ = ["sample_ws", "mix_styles", "ViewCodes", "view_group", "offset_ws", "MappingTail", "layer_maps",
           "upsampled_features", "pixel_features", "feature_channels"]  # fmt: skip


@torch.no_grad()
def sample_ws(G: Generator, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None, c=None) -> torch.Tensor:
    """``z [B, z_dim]`` → ``ws [B, num_ws, w_dim]`` truncated towards ``w_avg`` (ψ = 0: the mean)."""
    return G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)


def offset_ws(ws: torch.Tensor, offset: torch.Tensor, layers: slice | None = None) -> torch.Tensor:
    """``ws`` plus a W-space ``offset`` (``[B, w_dim]`` for every layer, or ``[B, num_ws, w_dim]``),
    on ``layers`` only if given: the hook an encoder uses to move a latent (GAN2Shape)."""
    offset = offset.unsqueeze(1).expand_as(ws) if offset.dim() == 2 else offset
    if layers is None:
        return ws + offset
    mask = torch.zeros(ws.shape[1], 1, dtype=ws.dtype, device=ws.device)
    mask[layers] = 1
    return ws + offset * mask


class MappingTail(nn.Module):
    """GAN2Shape's latent offset: ``Δw = tail(h̄ + e) − tail(h̄)``, where ``tail`` is the last
    ``depth`` layers of G's mapping and ``h̄`` the mean activation entering them (over ``samples``
    seeded z). An encoder's output ``e`` moves the hidden code, so ``w + Δw`` stays near what the
    mapping makes; ``depth=0`` gives ``Δw = e``, a plain W offset. G's layers stay frozen.
    """

    def __init__(self, G: Generator, depth: int, samples: int = 4096, seed: int = 0) -> None:
        super().__init__()
        mapping = G.mapping
        if not 0 <= depth <= mapping.num_layers or mapping.c_dim:
            raise ValueError(f"MappingTail(): depth must be in [0, {mapping.num_layers}] of an unconditional mapping; "
                             f"got {depth} (c_dim {mapping.c_dim})")  # fmt: skip
        self.layers = [getattr(mapping, f"fc{i}") for i in range(mapping.num_layers - depth, mapping.num_layers)]
        z = torch.randn(samples, mapping.z_dim, generator=torch.Generator().manual_seed(seed))
        z = z.to(next(mapping.parameters()).device)
        with torch.no_grad():
            h = normalize_2nd_moment(z)
            for i in range(mapping.num_layers - depth):
                h = getattr(mapping, f"fc{i}")(h)
        self.register_buffer("hidden_mean", h.float().mean(0), persistent=False)

    @property
    def hidden_dim(self) -> int:
        return len(self.hidden_mean)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h.float()

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """``e [B, hidden_dim]`` → ``Δw [B, w_dim]``. The mean's image goes through the layers in the
        same call (and precision) as ``h̄ + e``, so ``e = 0`` gives ``Δw = 0`` under autocast too."""
        out = self._tail(torch.cat([self.hidden_mean[None], self.hidden_mean + e.float()]))
        return out[1:] - out[:1]


class ViewCodes:
    """A registry of named view codes: the styles of the first ``view_layers`` layers.

    Codes are ``[view_layers, w_dim]``; they come from a generator's samples (``add_sampled``) or
    from a user who names the views of chosen samples (``add``), and are saved as a plain
    ``torch.save`` dict (``save`` / ``load``).
    """

    def __init__(self, view_layers: int, codes: dict[str, torch.Tensor] | None = None) -> None:
        if view_layers < 1:
            raise ValueError(f"ViewCodes(): view_layers must be >= 1; got {view_layers}")
        self.view_layers = view_layers
        self.codes: dict[str, torch.Tensor] = {}
        for name, code in (codes or {}).items():
            self.add(name, code)

    def __len__(self) -> int:
        return len(self.codes)

    def names(self) -> list[str]:
        return list(self.codes)

    def add(self, name: str, ws: torch.Tensor) -> None:
        """Register ``ws`` (``[num_ws, w_dim]`` or already ``[view_layers, w_dim]``) under ``name``."""
        if ws.dim() != 2 or ws.shape[0] < self.view_layers:
            raise ValueError(f"ViewCodes.add(): ws must be [>= {self.view_layers}, w_dim]; got {tuple(ws.shape)}")
        self.codes[name] = ws[: self.view_layers].detach().float().cpu().clone()

    @torch.no_grad()
    def add_sampled(self, G: Generator, count: int, seed: int, psi: float = 0.7, prefix: str = "view") -> None:
        """Register ``count`` view codes of random samples (``<prefix>_<i>``)."""
        z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed))
        ws = sample_ws(G, z.to(G.mapping.w_avg.device), psi)
        for i in range(count):
            self.add(f"{prefix}_{i}", ws[i])

    def stack(self, names: list[str] | None = None) -> torch.Tensor:
        """``[V, view_layers, w_dim]`` codes of ``names`` (default: all, in registration order)."""
        names = names or self.names()
        missing = [n for n in names if n not in self.codes]
        if missing:
            raise KeyError(f"ViewCodes: no view code named {missing}; known: {self.names()}")
        return torch.stack([self.codes[n] for n in names])

    def save(self, path: str | Path) -> None:
        torch.save({"view_layers": self.view_layers, "codes": self.codes}, path)

    @classmethod
    def load(cls, path: str | Path) -> ViewCodes:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(int(state["view_layers"]), state["codes"])


def view_group(content: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Multi-view groups: ``content [N, num_ws, w_dim]`` objects each seen with every view code of
    ``views`` → ``[N * V, num_ws, w_dim]`` (group-major: object, then view). ``views`` is
    ``[V, view_layers, w_dim]`` (the same codes for every object) or ``[N, V, view_layers, w_dim]``
    (each object's own)."""
    N, V, k = content.shape[0], views.shape[-3], views.shape[-2]
    ws = content.unsqueeze(1).repeat(1, V, 1, 1)  # (N, V, num_ws, w_dim)
    ws[:, :, :k] = views.to(ws)
    return ws.reshape(N * V, *content.shape[1:])


def feature_channels(G: Generator) -> int:
    """Channels of :func:`pixel_features`: every synthesis layer's output, concatenated."""
    total = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        total += block.conv1.weight.shape[0] * block.num_conv
    return total


def layer_maps(G: Generator, ws: torch.Tensor, noise_mode: str = "const") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every synthesis layer's output (``[B, C_l, r_l, r_l]``, in layer order) and the image."""
    maps: list[torch.Tensor] = []
    image = G.synthesis(ws, noise_mode, features=maps)
    return maps, image


def upsampled_features(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """``[B, H*W, sum C_l]``: each layer map upsampled (bilinear) to ``size``, concatenated per pixel."""
    up = [F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False).flatten(2) for m in maps]
    return torch.cat(up, 1).transpose(1, 2)


def pixel_features(
    G: Generator,
    ws: torch.Tensor,
    pixels: torch.Tensor | None = None,
    noise_mode: str = "const",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel features of every synthesis layer (DatasetGAN) and the image.

    Each layer's feature map is upsampled (bilinear) to the output size and concatenated. With
    ``pixels`` (``[B, P]`` flat indices into ``H × W``, e.g. a random subset), each low-resolution
    map is sampled bilinearly at just those pixel centres (the same values), so memory grows with
    ``P``, not ``H × W``.

    Returns:
        ``(features [B, P or H*W, feature_channels(G)], image [B, C, H, W])``.
    """
    maps, image = layer_maps(G, ws, noise_mode)
    B, _, H, W = image.shape
    if pixels is None:
        return upsampled_features(maps, (H, W)), image
    rows, cols = pixels // W, pixels % W
    grid = torch.stack([(2 * cols + 1) / W - 1, (2 * rows + 1) / H - 1], -1).unsqueeze(1)  # (B, 1, P, 2)
    out = []
    for fmap in maps:
        sampled = F.grid_sample(fmap.float(), grid.to(fmap.device), mode="bilinear", padding_mode="border",
                                align_corners=False)  # fmt: skip
        out.append(sampled[:, :, 0])  # (B, C, P)
    return torch.cat(out, 1).transpose(1, 2), image
