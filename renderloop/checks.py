"""Input checks that raise clear errors: ``op(): arg must be …; got …``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_shape", "check_finite"]


def check_shape(op: str, name: str, tensor: torch.Tensor, shape: Sequence[int | None | str]) -> None:
    """Raise ``ValueError`` unless ``tensor`` has ``len(shape)`` dims matching ``shape``.

    Entries of ``shape`` are an int (exact size), ``None`` (any size) or a string: ``">0"``
    (non-empty) or a name such as ``"B"`` (any size; documents the dimension).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}(): {name} must be a torch.Tensor; got {type(tensor).__name__}")
    ok = tensor.dim() == len(shape)
    if ok:
        for size, spec in zip(tensor.shape, shape, strict=True):
            if isinstance(spec, int) and size != spec or spec == ">0" and size == 0:
                ok = False
    if not ok:  # the message is built only on failure, so compiled callers trace straight through
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{op}(): {name} must have shape {want}; got {list(tensor.shape)}")


def check_finite(op: str, name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinity (a CPU-GPU sync point)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{op}(): {name} must be finite; got NaN or infinity")
