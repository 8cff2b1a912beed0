"""Rasterizer backends behind one API.

The default backend, ``torch``, is renderloop's own pure-PyTorch rasterizer (:mod:`.ops`).
``nvdiffrast`` and ``pytorch3d`` are adapters over those libraries, loaded on first use when the
library is installed (:mod:`.nvdiffrast_backend`, :mod:`.pytorch3d_backend`): the library finds
each pixel's face and its barycentrics, and the adapter returns the same ``ops.Fragments`` (face
ids into the caller's face list, perspective-correct barycentrics and camera depth, with their
gradients), after giving the library only the faces ``ops.rasterize`` would draw. Any other
implementation registers a :class:`RasterBackend` whose functions take and return exactly what
``ops.rasterize`` and ``ops.soft_silhouette`` do; renderers pick one by name from config.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import ops

__all__ = ["RasterBackend", "library_backend", "register_backend", "get_backend", "config_backend", "backend_report"]


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
_ADAPTERS = {"nvdiffrast": "nvdiffrast_backend", "pytorch3d": "pytorch3d_backend"}
"""Library (and backend name) → the adapter module of this package that registers it on import."""


def library_backend(name: str, visible: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> RasterBackend:
    """A backend whose library finds each pixel's face and barycentrics:
    ``visible(clip_pos, faces, drawn, resolution) -> (face_id [B, H, W], bary [B, H, W, 3])`` sees
    the checked int64 ``faces [B, F, 3]`` and ``drawn [B, F]`` (``ops.drawable_faces``, at least one)
    and answers in the caller's face indices, zero barycentrics where ``face_id`` is -1. The rest
    (checks, culling, depth, the soft silhouette) is ours."""

    def rasterize(
        clip_pos: torch.Tensor,
        faces: torch.Tensor,
        resolution: tuple[int, int],
        *,
        cull_backfaces: bool = False,
        max_candidates: int = ops.DEFAULT_MAX_CANDIDATES,
        ctx: ops.RasterContext | None = None,
    ) -> ops.Fragments:
        faces = ops.checked_faces("rasterize", clip_pos, faces, resolution)
        drawn = ops.drawable_faces(clip_pos, faces, resolution, cull_backfaces)
        if not drawn.any():
            return ops.empty_fragments(clip_pos, faces, resolution)
        face_id, bary = visible(clip_pos, faces, drawn, resolution)
        bary = bary.to(clip_pos.dtype)
        depth = ops.camera_depth(clip_pos, faces, face_id, bary)
        return ops.Fragments(face_id, bary, depth, faces, clip_pos.shape[1])

    rasterize.__doc__ = f"``ops.rasterize`` computed by {name} (``max_candidates`` and ``ctx`` are unused)."
    return RasterBackend(name, rasterize, ops.soft_silhouette)


def register_backend(backend: RasterBackend, *, replace: bool = False) -> None:
    """Add ``backend`` to the registry; refuse to shadow an existing name unless ``replace``."""
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"register_backend(): a backend named {backend.name!r} exists; pass replace=True")
    _REGISTRY[backend.name] = backend


def get_backend(name: str) -> RasterBackend:
    """The backend called ``name``; an adapter's library is imported on first use."""
    if name not in _REGISTRY and name in _ADAPTERS:
        if importlib.util.find_spec(name) is None:
            raise ValueError(
                f"get_backend(): renderer backend {name!r} needs the {name} package, which is not installed "
                "(README: Renderer backends says how to build it)"
            )
        importlib.import_module(f"{__package__}.{_ADAPTERS[name]}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted({*_REGISTRY, *_ADAPTERS})
        raise ValueError(f"get_backend(): unknown renderer backend {name!r}; known: {known}") from None


def config_backend(key: str, name: str) -> RasterBackend:
    """:func:`get_backend` for a config key: an unknown or missing backend is a ``ConfigError``."""
    from renderloop.config import ConfigError

    try:
        return get_backend(name)
    except ValueError as err:
        raise ConfigError(key, str(err)) from None


def backend_report() -> dict[str, str]:
    """Status of each registered backend and of the libraries with adapters."""
    report = {name: "registered" for name in _REGISTRY}
    for name in _ADAPTERS:
        if name not in report:
            report[name] = "installed (loaded on first use)" if importlib.util.find_spec(name) else "not installed"
    return report
