"""Generator files: our own format, and the dispatch that reads any supported checkpoint.

Our format is a plain ``torch.save`` dict (no pickled code): ``{"format": "renderloop-stylegan2",
"config": GeneratorConfig fields, "state_dict": ...}``; it loads with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .networks import Generator, GeneratorConfig

__all__ = [
    "FORMAT",
    "generator_record",
    "generator_from_record",
    "save_generator",
    "load_generator",
    "generator_trained_on",
]

FORMAT = "renderloop-stylegan2"


def generator_record(G: Generator) -> dict:
    """``G`` as our format's plain dict: architecture (plain values) and weights."""
    return {"format": FORMAT, "config": asdict(G.cfg), "state_dict": G.state_dict()}


def generator_from_record(config: dict, state_dict: dict) -> Generator:
    """The generator a record describes (``config`` may have come through JSON: the config turns
    its channel keys back into ints)."""
    G = Generator(GeneratorConfig(**config))
    G.load_state_dict(state_dict)
    return G.eval()


def save_generator(G: Generator, path: str | Path, trained_on: dict | None = None) -> Path:
    """Write ``G`` (architecture and weights) in our format, with what it was trained on
    (``trained_on``, plain values: e.g. the simulator category's ``object_seeds``), so that a
    method scored on held-out objects can check they are not among them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(generator_record(G) | ({"trained_on": trained_on} if trained_on else {}), path)
    return path


def generator_trained_on(path: str | Path) -> dict | None:
    """What a generator file of our format records it was trained on; None if it records nothing
    or is of another format."""
    path = Path(path)
    if not path.is_file() or path.suffix == ".pkl":
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a file of ours
        return None
    return state.get("trained_on") if isinstance(state, dict) and state.get("format") == FORMAT else None


def load_generator(path: str | Path, which: str = "G_ema") -> Generator:
    """A generator from our format, an NVlabs ``.pkl`` (network ``which``) or a rosinality ``.pt``
    (key ``g_ema`` unless ``which`` names another); nothing in the file is executed."""
    from .checkpoints import CheckpointError, load_nvlabs_pickle, load_rosinality

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"load_generator(): no such file: {path}")
    if path.suffix == ".pkl":
        return load_nvlabs_pickle(path, which=which)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any refusal means: not a file we trust
        raise CheckpointError(f"load_generator(): {path} is not a weights-only checkpoint ({err})") from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return generator_from_record(state["config"], state["state_dict"])
    return load_rosinality(path, key="g_ema" if which == "G_ema" else which)
