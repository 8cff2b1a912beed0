"""Seeds derived from a run's seed, so that parts of one run never draw the same random numbers."""

from __future__ import annotations

import zlib

__all__ = ["derive_seed"]

SEED_STRIDE = 1_000_003
"""A prime multiplier: seeds ``s`` and ``s + 1`` of one part stay far apart from the others'."""


def derive_seed(seed: int, part: str | int) -> int:
    """A 62-bit seed for ``part`` (a name such as a data role or producer id, or a rank) of
    something seeded with ``seed``: distinct parts, distinct seeds."""
    offset = part if isinstance(part, int) else zlib.crc32(part.encode())
    return (seed * SEED_STRIDE + offset) % (1 << 62)
