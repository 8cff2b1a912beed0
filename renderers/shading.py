"""Normals and shading. Rasterizer outputs are channels-last: ``[B, H, W, C]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from renderloop.checks import check_shape

from ._gather import take_rows

__all__ = ["face_normals", "vertex_normals", "unit3", "lambertian", "blinn_phong"]


def _corners(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``[B, F, 3, 3]`` corner positions; ``faces`` is ``[F, 3]`` or ``[B, F, 3]`` (``-1`` pads → vertex 0)."""
    B, V, _ = verts.shape
    faces = faces.expand(B, -1, -1) if faces.dim() == 2 else faces
    index = faces.clamp(min=0) + V * torch.arange(B, device=verts.device).view(B, 1, 1)
    return take_rows(verts.reshape(B * V, 3), index)  # (B, F, 3, 3)


def face_normals(verts: torch.Tensor, faces: torch.Tensor, *, unit: bool = True) -> torch.Tensor:
    """Face normals ``[B, F, 3]`` by the right-hand rule (outward for faces wound counter-clockwise
    as seen from outside). ``verts`` is ``[B, V, 3]``; with ``unit=False`` the length is twice the area.
    """
    check_shape("face_normals", "verts", verts, ("B", ">0", 3))
    c = _corners(verts, faces)
    n = torch.cross(c[:, :, 1] - c[:, :, 0], c[:, :, 2] - c[:, :, 0], dim=-1)
    return F.normalize(n, dim=-1, eps=1e-12) if unit else n


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[B, V, 3]`` of ``verts [B, V, 3]``.

    Face normals are summed per vertex with a sorted segment reduction rather than atomic
    scatter-adds, so the result is bitwise reproducible on GPUs too.
    """
    B, V, _ = verts.shape
    n = face_normals(verts, faces, unit=False)  # (B, F, 3), length = 2 * area
    faces = faces.expand(B, -1, -1) if faces.dim() == 2 else faces
    n = n * (faces >= 0).all(-1, keepdim=True)  # padding faces add nothing
    idx = (faces.clamp(min=0) + V * torch.arange(B, device=verts.device).view(B, 1, 1)).reshape(-1)
    order = torch.argsort(idx, stable=True)
    lengths = torch.bincount(idx, minlength=B * V)
    corner_normals = n.unsqueeze(2).expand(-1, -1, 3, -1).reshape(-1, 3)
    acc = torch.segment_reduce(corner_normals[order], "sum", lengths=lengths, unsafe=True)
    return F.normalize(acc.view(B, V, 3), dim=-1, eps=1e-12)


def _dot3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., 1]`` dot product of 3-vectors, spelled out so compiled code stays pointwise."""
    p = a * b
    return p[..., 0:1] + p[..., 1:2] + p[..., 2:3]


def unit3(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalize 3-vectors ``[..., 3]`` (pointwise form of ``F.normalize``)."""
    return v * torch.rsqrt(_dot3(v, v).clamp(min=eps * eps))


def _per_item(x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A float or ``[B]`` tensor, broadcastable against ``[B, ..., C]``."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return x.view(-1, *([1] * (like.dim() - 1))) if x.dim() else x


def lambertian(
    normals: torch.Tensor,
    albedo: torch.Tensor,
    light_dir: torch.Tensor,
    ambient: torch.Tensor | float = 0.3,
    diffuse: torch.Tensor | float = 0.7,
) -> torch.Tensor:
    """Ambient plus Lambertian diffuse shading: ``albedo * (ambient + diffuse * max(0, n·l))``.

    Args:
        normals: ``[B, ..., 3]`` unit normals (any frame, shared with ``light_dir``).
        albedo: ``[B, ..., C]`` colours.
        light_dir: ``[B, 3]`` unit direction *towards* the light.
        ambient, diffuse: floats or ``[B]`` tensors.

    Returns:
        ``[B, ..., C]`` shaded colours.
    """
    check_shape("lambertian", "light_dir", light_dir, (normals.shape[0], 3))
    cos = _dot3(normals, light_dir.view((normals.shape[0],) + (1,) * (normals.dim() - 2) + (3,))).clamp(min=0)
    return albedo * (_per_item(ambient, albedo) + _per_item(diffuse, albedo) * cos)


def blinn_phong(
    normals: torch.Tensor,
    view_dir: torch.Tensor,
    light_dir: torch.Tensor,
    shininess: torch.Tensor | float = 32.0,
    strength: torch.Tensor | float = 0.3,
) -> torch.Tensor:
    """Blinn-Phong specular term ``strength * max(0, n·h)^shininess``, ``[B, ..., 1]``.

    ``normals`` and ``view_dir`` (towards the camera) are ``[B, ..., 3]``; ``light_dir`` is ``[B, 3]``.
    """
    view = (normals.shape[0],) + (1,) * (normals.dim() - 2) + (3,)
    half = F.normalize(view_dir + light_dir.view(view), dim=-1, eps=1e-12)
    cos = _dot3(normals, half).clamp(min=0)
    return _per_item(strength, cos) * cos ** _per_item(shininess, cos)
