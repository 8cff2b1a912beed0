"""Device selection."""

from __future__ import annotations

import re

from renderloop.config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto", key: str = "device"):
    """``"auto"`` → CUDA if available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` → that ``torch.device``.

    Raises:
        ConfigError: at ``key``, for any other name or a CUDA device this machine lacks (before
            anything is built on it, rather than a traceback from the first tensor there).
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(key, f"must be auto, cpu, cuda or cuda:N; got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(key, f"asks for CUDA, which is not available here (use cpu or auto); got {name!r}")
        if device.index is not None and device.index >= count:
            raise ConfigError(key, f"names a GPU this machine lacks (it has cuda:0 to cuda:{count - 1}); got {name!r}")
    return device
