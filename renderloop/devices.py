"""Device selection."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto"):
    """``"auto"`` → CUDA if available, else CPU; otherwise ``torch.device(name)``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available here")
    return device
