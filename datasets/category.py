"""One object category for the GAN methods: procedural vehicles in a canonical frame.

GAN2Shape, GANverse3D and DatasetGAN learn from a GAN trained on one object family and are scored
against its ground truth, so the family must behave like a real category: every object stands in
the same frame (up +y, front +z, its left +x), is mirror-symmetric left–right but not front–back
(a hood in front, a cabin towards the rear), and has named parts fixed in that frame, labelled by
the sphere direction a vertex was built from, so part k is the same region of every object. The
texture is drawn independently of the parts.

An object is a pure function of its *object seed*; GAN training, oracle training and test draw
objects from disjoint seed ranges (``SEED_RANGES``), which :func:`check_disjoint` enforces.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from renderloop.config import ConfigError

from .shapes import TEXTURES, paint, texture_draws

__all__ = ["CATEGORIES", "PART_NAMES", "SEED_RANGES", "vehicle", "part_labels", "resolve_range", "check_disjoint",
           "check_generator_held_out", "held_out"]  # fmt: skip

CATEGORIES = ("vehicle",)

PART_DIRECTIONS = {
    "front": (0.0, 0.0, 1.0),
    "hood": (0.0, 0.8, 0.6),
    "roof": (0.0, 1.0, -0.3),
    "trunk": (0.0, 0.6, -0.8),
    "back": (0.0, 0.0, -1.0),
    "bottom": (0.0, -1.0, 0.0),
    "left_front": (1.0, 0.0, 0.55),
    "right_front": (-1.0, 0.0, 0.55),
    "left_rear": (1.0, 0.0, -0.55),
    "right_rear": (-1.0, 0.0, -0.55),
}
"""Part → direction in the object frame; a vertex belongs to the part nearest its sphere direction."""
PART_NAMES = tuple(PART_DIRECTIONS)

SEED_RANGES = {
    "gan": (0, 1_000_000),
    "oracle": (1_000_000, 2_000_000),
    "test": (2_000_000, 2_010_000),
}
"""Object-seed ranges ``[first, end)`` by purpose: what a GAN learns from, what the oracles learn
from, what every method is scored on. Disjoint, so no test object is ever seen in training."""


def resolve_range(value) -> tuple[int, int]:
    """``object_seeds`` as a pair ``[first, end)``: a name of ``SEED_RANGES`` or two integers.

    Raises:
        ConfigError: an unknown name or an empty or negative range.
    """
    if isinstance(value, str):
        if value not in SEED_RANGES:
            raise ConfigError("source.object_seeds", f"must be {sorted(SEED_RANGES)} or [first, end]; got {value!r}")
        return SEED_RANGES[value]
    first, end = (int(v) for v in value)
    if not 0 <= first < end:
        raise ConfigError("source.object_seeds", f"must be a range [first, end) with 0 <= first < end; got {value}")
    return first, end


def check_disjoint(ranges: dict[str, tuple[int, int]]) -> None:
    """Refuse object-seed ranges that overlap (e.g. a test stream whose objects a GAN trained on).

    Raises:
        ConfigError: naming the two overlapping ranges.
    """
    items = sorted(ranges.items(), key=lambda kv: kv[1])
    for (name_a, (first_a, end_a)), (name_b, (first_b, end_b)) in zip(items, items[1:], strict=False):
        if first_b < end_a:
            raise ConfigError(
                "source.object_seeds",
                f"{name_a} [{first_a}, {end_a}) and {name_b} [{first_b}, {end_b}) share objects; "
                "training, oracle and test objects must come from disjoint seed ranges",
            )


def check_generator_held_out(checkpoint: str, key: str) -> None:
    """Refuse a generator whose file records training objects of the ``test`` range: a method
    scored on test renders would then be scored on objects its GAN has seen."""
    from renderloop.models.stylegan2.io import generator_trained_on

    seeds = (generator_trained_on(checkpoint) or {}).get("object_seeds")
    if seeds is None:
        return
    (first, end), (test_first, test_end) = resolve_range(seeds), SEED_RANGES["test"]
    if first < test_end and test_first < end:
        raise ConfigError(key, f"{checkpoint} was trained on objects [{first}, {end}), which include test objects "
                          f"[{test_first}, {test_end}) that the evaluation scores on")  # fmt: skip


def held_out(config):
    """A simulator config like ``config`` whose objects come from the ``test`` range only."""
    return replace(config, object_seeds="test")


def _smooth_window(x: torch.Tensor, centre: torch.Tensor, half_width: torch.Tensor, edge: float = 0.15):
    """1 inside ``|x - centre| < half_width``, falling smoothly to 0 over ``edge``."""
    return torch.sigmoid((half_width - (x - centre).abs()) / (edge / 4))


def vehicle(dirs: torch.Tensor, generators: list[torch.Generator], textures: tuple[str, ...] = TEXTURES):
    """Canonical vertices ``[N, V, 3]`` (radius ≤ 1) and colours ``[N, V, 3]`` of ``N`` vehicles
    built on sphere directions ``dirs [V, 3]``, one per generator (seeded by the object seed).

    The body is a rounded box (half-length 1 along z before scaling), lowered at the front into a
    hood and raised towards the rear into a narrower cabin; a flat bottom. Left–right symmetric by
    construction: every term depends on |x|, never on the sign of x.
    """
    dev = dirs.device
    params = torch.stack([torch.rand(8, generator=g) for g in generators]).to(dev).T.unsqueeze(-1)  # 8 × (N, 1)
    width, height, roundness, cabin_height, cabin_centre, cabin_half, hood_drop, cabin_taper = params
    width, height = 0.42 + 0.16 * width, 0.22 + 0.12 * height
    exponent = 0.25 + 0.35 * roundness  # < 1: boxy; the sign-preserving power keeps symmetry
    x, y, z = dirs.unbind(-1)

    def power(c):  # sign-preserving, so symmetric directions stay symmetric
        return c.abs() ** exponent * c.sign()

    box = torch.stack([width * power(x), height * power(y), power(z).expand_as(width * x)], dim=-1)
    bx, by, bz = box.unbind(-1)
    top = (by > 0).float()
    cabin = _smooth_window(bz, -0.1 - 0.3 * cabin_centre, 0.3 + 0.2 * cabin_half)  # towards the rear
    cabin = cabin * _smooth_window(bx, torch.zeros_like(width), width * (0.6 + 0.3 * cabin_taper), edge=0.1)
    hood = (bz.clamp(min=0) * (0.3 + 0.4 * hood_drop)).clamp(max=0.9)  # the front slopes down
    by = torch.where(top > 0, by * (1 - hood) + (0.15 + 0.25 * cabin_height) * cabin, by.clamp(min=-0.8 * height))
    points = torch.stack([bx, by, bz], dim=-1)
    points = points / points.norm(dim=-1).amax(-1).view(-1, 1, 1)
    # Textures: each object's draws from its own generator on the CPU, painted in one batch.
    kinds = torch.tensor([TEXTURES.index(t) for t in textures])
    kind = torch.cat([kinds[torch.randint(len(kinds), (1,), generator=g)] for g in generators]).to(dev)
    per_object = [texture_draws(g, 1) for g in generators]
    draws = {k: torch.cat([d[k] for d in per_object]).to(dev) for k in per_object[0]}
    return points, paint(points, kind, draws)


def part_labels(dirs: torch.Tensor) -> torch.Tensor:
    """Part index ``[V]`` (into ``PART_NAMES``) of each sphere direction ``dirs [V, 3]``."""
    centres = F.normalize(torch.tensor(list(PART_DIRECTIONS.values()), device=dirs.device), dim=-1)
    return (dirs @ centres.T).argmax(-1)
