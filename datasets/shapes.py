"""Procedural shapes, solid textures, part labels and keypoints for the simulator, batched.

Every procedural shape deforms the same icosphere, so a batch shares one face list and one
vertex order: keypoints and part regions are defined once on the sphere's directions and stay
semantically stable across shapes. All draws come from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PROCEDURAL", "TEXTURES", "deform", "texture_draws", "paint", "solid_texture", "part_labels",
           "keypoint_vertices", "random_rotation"]  # fmt: skip

PROCEDURAL = ("superquadric", "deformed_sphere", "extrusion")
TEXTURES = ("solid", "checker", "noise", "gradient")
# Upper end of the random phases of extrusion lobes and noise textures: a rounded 2π. Every seeded
# stream was drawn with it, so it stays 6.28 (math.tau would change every sample).
PHASE_MAX = 6.28


def _u(gen: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0, device=None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen, device=device)


def _unit(gen: torch.Generator, *shape: int, device=None) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, 3, generator=gen, device=device), dim=-1)


def deform(dirs: torch.Tensor, kind: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Vertices ``[N, V, 3]`` (radius 1) of ``N`` shapes of kinds ``kind [N]`` (indices into
    ``PROCEDURAL``) built on unit sphere directions ``dirs [V, 3]``."""
    N, dev = kind.shape[0], dirs.device
    d = dirs.unsqueeze(0)  # (1, V, 3)
    # Superquadric: signed powers of the direction's coordinates, with per-axis scales.
    e = _u(gen, N, 1, 2, lo=0.3, hi=1.6, device=dev)
    expo = torch.stack([e[..., 0], e[..., 1], e[..., 0]], dim=-1)  # x and z share one exponent
    axes = _u(gen, N, 1, 3, lo=0.55, hi=1.0, device=dev)
    superq = axes * torch.sign(d) * d.abs().clamp(min=1e-6) ** expo
    # Deformed sphere: radius modulated by a few random low-frequency waves.
    u, freq = _unit(gen, N, 4, device=dev), _u(gen, N, 4, lo=1.0, hi=4.0, device=dev)
    amp, phase = _u(gen, N, 4, lo=0.0, hi=0.15, device=dev), _u(gen, N, 4, hi=2 * math.pi, device=dev)
    waves = torch.sin(freq.unsqueeze(1) * (d @ u.transpose(1, 2)) + phase.unsqueeze(1))  # (N, V, 4)
    blob = d * (1 + (amp.unsqueeze(1) * waves).sum(-1, keepdim=True))
    # Extrusion: a star-shaped cross-section swept along y between flat caps.
    theta = torch.atan2(d[..., 2], d[..., 0])
    lobes = torch.randint(3, 8, (N, 1), generator=gen, device=dev).float()
    rho = 1 + _u(gen, N, 1, lo=0.0, hi=0.35, device=dev) * torch.cos(
        lobes * theta + _u(gen, N, 1, hi=PHASE_MAX, device=dev)
    )
    radial = (2.5 * (1 - d[..., 1] ** 2).clamp(min=0).sqrt()).clamp(max=1)
    height = _u(gen, N, 1, lo=0.5, hi=1.0, device=dev) * (1.6 * d[..., 1]).clamp(-1, 1)
    extr = torch.stack([rho * radial * torch.cos(theta), height, rho * radial * torch.sin(theta)], dim=-1)
    verts = torch.stack([superq, blob, extr], dim=1)[torch.arange(N, device=dev), kind]  # (N, V, 3)
    return verts / verts.norm(dim=-1).amax(-1).view(N, 1, 1)


def random_rotation(n: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """Uniform random rotations ``[n, 3, 3]``: normalized 4D Gaussians are uniform unit quaternions."""
    w, x, y, z = F.normalize(torch.randn(n, 4, generator=gen, device=device), dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(n, 3, 3)  # fmt: skip


def texture_draws(gen: torch.Generator, n: int, device=None) -> dict[str, torch.Tensor]:
    """The random numbers of ``n`` solid textures (two colours, checker frequency, noise waves,
    gradient direction), drawn in the order every seeded stream was made with."""
    c1, c2 = _u(gen, n, 1, 3, device=device), _u(gen, n, 1, 3, device=device)
    checker_freq = _u(gen, n, 1, 1, lo=2.0, hi=6.0, device=device)
    wave_dirs, wave_freq = _unit(gen, n, 3, device=device), _u(gen, n, 3, lo=2.0, hi=8.0, device=device)
    wave_phase = _u(gen, n, 1, 3, hi=PHASE_MAX, device=device)
    gradient_dir = _unit(gen, n, 1, device=device)
    return {"c1": c1, "c2": c2, "checker_freq": checker_freq, "wave_dirs": wave_dirs, "wave_freq": wave_freq,
            "wave_phase": wave_phase, "gradient_dir": gradient_dir}  # fmt: skip


def paint(points: torch.Tensor, kind: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colours ``[N, V, 3]`` in ``[0, 1]`` of canonical points ``[N, V, 3]`` for texture kinds
    ``kind [N]`` (indices into ``TEXTURES``) and their :func:`texture_draws`: solid, checker,
    noise, gradient of two random colours."""
    N, dev = points.shape[0], points.device
    checker = (torch.sin(draws["checker_freq"] * math.pi * points).prod(-1, keepdim=True) > 0).float()
    waves = draws["wave_freq"].unsqueeze(1) * (points @ draws["wave_dirs"].transpose(1, 2)) + draws["wave_phase"]
    noise = torch.sigmoid(4 * torch.sin(waves).mean(-1, keepdim=True))
    grad = ((points @ draws["gradient_dir"].transpose(1, 2)) + 1) / 2
    mix = torch.stack([torch.zeros_like(grad), checker, noise, grad], dim=1)[torch.arange(N, device=dev), kind]
    return draws["c1"] + (draws["c2"] - draws["c1"]) * mix


def solid_texture(points: torch.Tensor, kind: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """:func:`paint` with ``N`` textures drawn from ``gen``."""
    return paint(points, kind, texture_draws(gen, points.shape[0], points.device))


def part_labels(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Part index ``[N, V]`` of each canonical point: its nearest of the ``centres [P, 3]`` directions."""
    return (F.normalize(points, dim=-1) @ centres.T).argmax(-1)


def keypoint_vertices(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per keypoint direction ``[J, 3]``, the index of the vertex of ``points [V, 3]`` farthest along it."""
    return (points @ directions.T).argmax(0)
