"""Rasterizer backends behind one API.

The default backend, ``torch``, is renderloop's own pure-PyTorch rasterizer (:mod:`.ops`). Another
implementation (e.g. an adapter over an installed nvdiffrast or pytorch3d) registers a
:class:`RasterBackend` whose functions take and return exactly what ``ops.rasterize`` and
``ops.soft_silhouette`` do; renderers pick one by name from config.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import ops

__all__ = ["RasterBackend", "register_backend", "get_backend", "backend_report"]


@dataclass(frozen=True)
class RasterBackend:
    """A named pair of functions with the signatures of ``ops.rasterize`` and ``ops.soft_silhouette``.

    Both receive the caller's ``ctx`` keyword (an ``ops.RasterContext``); a backend with kernels
    of its own may ignore it."""

    name: str
    rasterize: Callable[..., ops.Fragments]
    soft_silhouette: Callable[..., torch.Tensor]


_REGISTRY: dict[str, RasterBackend] = {
    "torch": RasterBackend("torch", ops.rasterize, ops.soft_silhouette),
}
# Third-party rasterizers an adapter could wrap; reported by `renderloop info`.
_KNOWN_EXTERNAL = ("nvdiffrast", "pytorch3d")


def register_backend(backend: RasterBackend, *, replace: bool = False) -> None:
    """Add ``backend`` to the registry; refuse to shadow an existing name unless ``replace``."""
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"register_backend(): a backend named {backend.name!r} exists; pass replace=True")
    _REGISTRY[backend.name] = backend


def get_backend(name: str) -> RasterBackend:
    """The registered backend called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"get_backend(): unknown renderer backend {name!r}; registered: {sorted(_REGISTRY)}") from None


def backend_report() -> dict[str, str]:
    """Status of each registered backend and of known external rasterizers."""
    report = {name: "registered" for name in _REGISTRY}
    for name in _KNOWN_EXTERNAL:
        if name not in report:
            found = importlib.util.find_spec(name) is not None
            report[name] = "installed, no adapter registered" if found else "not installed"
    return report
