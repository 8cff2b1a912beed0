"""GAN quality without downloaded weights: distances between feature sets of a fixed encoder.

FID and KID are defined on Inception features, which do not exist offline. The same statistics
on another fixed encoder's features (the oracle segmenter's, or a seeded random network) rank
generators the same way within one study but are not comparable with published FIDs, so every
report puts the real-vs-real floor (two disjoint real sets) beside them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["frechet_distance", "kernel_distance", "precision_recall", "RandomEncoder", "histogram_tv",
           "largest_component_share", "one_object"]  # fmt: skip


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``a [N, D]`` and ``b [M, D]``:
    ``|μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``."""
    mean_a, cov_a = _moments(a)
    mean_b, cov_b = _moments(b)
    root_a = _sqrt_psd(cov_a)
    cross = _sqrt_psd(root_a @ cov_b @ root_a)
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())


def kernel_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 10, subset_size: int = 500, seed: int = 0):
    """KID: the unbiased MMD² with the kernel ``(x·y / D + 1)³``, averaged over random subsets;
    returns ``(mean, standard deviation over subsets)``."""
    gen = torch.Generator().manual_seed(seed)
    n = min(len(a), len(b), subset_size)
    a, b = a.double(), b.double()
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:n]]
        y = b[torch.randperm(len(b), generator=gen)[:n]]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = 1 - torch.eye(n, dtype=torch.float64)
        mmd = (kxx * off).sum() / (n * (n - 1)) + (kyy * off).sum() / (n * (n - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _inside(points: torch.Tensor, manifold: torch.Tensor, k: int) -> torch.Tensor:
    """Which ``points`` fall inside a ball around some manifold sample whose radius is its distance
    to its k-th nearest manifold neighbour (Kynkäänniemi et al. 2019)."""
    radii = torch.cdist(manifold, manifold).kthvalue(k + 1, dim=1).values  # k + 1: itself is nearest
    return (torch.cdist(points, manifold) <= radii).any(1)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: the share of fakes inside the real manifold; recall: of reals inside the fake one."""
    real, fake = real.double(), fake.double()
    return float(_inside(fake, real, k).float().mean()), float(_inside(real, fake, k).float().mean())


def histogram_tv(a: torch.Tensor, b: torch.Tensor, bins: int, low: float, high: float) -> float:
    """Total-variation distance between the normalized histograms of values ``a`` and ``b``."""
    ha = torch.histc(a.double(), bins, low, high)
    hb = torch.histc(b.double(), bins, low, high)
    return float(0.5 * (ha / ha.sum() - hb / hb.sum()).abs().sum())


def _spread_along_runs(labels: torch.Tensor, inside: torch.Tensor, dim: int) -> torch.Tensor:
    """Each inside pixel takes the largest label of its run of inside pixels along ``dim``: a
    cumulative max of ``run index * bound + label`` in both directions (runs end at outside pixels,
    so a later run's keys exceed every earlier one's)."""
    bound = labels.shape[-1] * labels.shape[-2] + 1

    def forward(labels: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        run = torch.cumsum(~inside, dim) * bound
        return torch.cummax(run + labels, dim).values - run

    backward = forward(labels.flip(dim), inside.flip(dim)).flip(dim)
    return torch.where(inside, torch.maximum(forward(labels, inside), backward), labels)


def largest_component_share(masks: torch.Tensor, check_every: int = 4) -> torch.Tensor:
    """Per mask ``[B, H, W]`` (bool), the share of its pixels in its largest 4-connected component
    (1 for an empty mask). Labels spread along whole row and column runs, so a compact shape settles
    in a few rounds; the host checks for a change only every ``check_every`` rounds (it runs on
    every training step of the GAN methods, where each check waits for the GPU)."""
    if check_every < 1:
        raise ValueError(f"largest_component_share(): check_every must be >= 1; got {check_every}")
    B, H, W = masks.shape
    inside = masks.bool()
    ids = torch.arange(1, H * W + 1, device=masks.device).view(1, H, W)
    labels = torch.where(inside, ids, 0)
    while True:
        before = labels
        for _ in range(check_every):
            labels = _spread_along_runs(_spread_along_runs(labels, inside, 2), inside, 1)
        if torch.equal(labels, before):
            break
    counts = torch.zeros(B, H * W + 1, dtype=torch.long, device=masks.device)
    counts.scatter_add_(1, labels.reshape(B, -1), inside.reshape(B, -1).long())
    area = inside.reshape(B, -1).sum(1)
    share = counts[:, 1:].amax(1) / area.clamp(min=1)
    return torch.where(area > 0, share, 1.0).float()


def one_object(masks: torch.Tensor, min_area: float = 0.1, min_share: float = 0.95) -> torch.Tensor:
    """Whether each mask ``[B, H, W]`` is one object (≥ ``min_share`` of it connected) covering
    at least ``min_area`` of the image: the GAN methods' filter for usable samples."""
    area = masks.float().mean((1, 2))
    return (area >= min_area) & (largest_component_share(masks) >= min_share)


class RandomEncoder(nn.Module):
    """A seeded random convolutional encoder: ``[B, 3, H, W]`` in [0, 1] → ``[B, 8 · width]``
    features (mean and standard deviation of the last layer's channels).
    The fallback when no trained oracle is given; the same seed always gives the same features."""

    def __init__(self, seed: int = 0, width: int = 64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        channels = [3, width, 2 * width, 4 * width]
        for cin, cout in zip(channels, channels[1:], strict=False):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (cin * 9) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
