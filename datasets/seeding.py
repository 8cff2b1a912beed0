"""Seeds and config hashes shared by the sources (no torch: cheap to import anywhere)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

__all__ = ["batch_seed", "config_digest"]


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for batch (or epoch) ``index`` of a source seeded with ``seed``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def config_digest(config: Any, skip_defaults: dict[str, Any] | None = None) -> str:
    """Short hash of a config dataclass; keys of ``skip_defaults`` count only when they differ from
    the value given there (keys added later leave older hashes valid)."""
    fields = asdict(config)
    if skip_defaults:
        fields = {k: v for k, v in fields.items() if k not in skip_defaults or v != skip_defaults[k]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
