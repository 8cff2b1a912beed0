"""Textured meshes for inverse graphics: drawing with a spherical texture map, and mesh regularizers.

``render_textured`` draws meshes through the rasterizer with a texture looked up by the
direction of the template point each pixel sees (interpolated on the sphere, so the map has no
seam across faces, only its own longitude line), and ``soft_silhouette`` gives mask gradients
for an IoU loss (DIB-R style). The regularizers are the usual ones for a deformed template: a
uniform Laplacian, and a flatness term on the angles between neighbouring faces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .antialias import edge_neighbours
from .backends import RasterBackend, get_backend
from .cameras import camera_to_clip, world_to_camera
from .ops import interpolate, texture
from .shading import face_normals

__all__ = ["TexturedRender", "render_textured", "edge_pairs", "neighbouring_faces", "laplacian_loss", "flatten_loss"]


@dataclass(frozen=True)
class TexturedRender:
    """``image [B, 3, H, W]`` (0 off the mesh), ``mask [B, H, W]`` (hard coverage), ``soft [B, H, W]``
    (None where not asked for)."""

    image: torch.Tensor
    mask: torch.Tensor
    soft: torch.Tensor | None


def render_textured(verts, faces, template, tex, R, t, K, resolution: tuple[int, int], sigma: float | None = 1.0,
                    ctx=None, backend: RasterBackend | None = None) -> TexturedRender:  # fmt: skip
    """Draw meshes ``verts [B, V, 3]`` (object frame) with spherical texture maps ``tex [B, 3, T, T]``
    through cameras ``x_cam = R x + t`` with intrinsics ``K``, rasterized by ``backend`` (ours
    by default); the soft silhouette at ``sigma``, or none (``sigma=None``: scores that read only
    the hard mask skip its cost)."""
    backend = backend or get_backend("torch")
    clip = camera_to_clip(world_to_camera(verts, R, t), K, resolution)
    frags = backend.rasterize(clip, faces, resolution, ctx=ctx)
    direction = F.normalize(interpolate(template.expand(len(verts), -1, -1), frags), dim=-1, eps=1e-8)
    image = texture(tex.permute(0, 2, 3, 1), sphere_uv(direction)).permute(0, 3, 1, 2)
    mask = frags.mask
    soft = None if sigma is None else backend.soft_silhouette(clip, faces, resolution, sigma=sigma, ctx=ctx)
    return TexturedRender(image * mask[:, None].to(image.dtype), mask, soft)


def sphere_uv(direction: torch.Tensor) -> torch.Tensor:
    """Texture coordinates ``[..., 2]`` of unit directions: longitude around +y, then 0 at the top.
    Near the poles, where longitude is undefined and the derivatives of atan2 and acos blow up,
    the coordinates stay finite and carry bounded gradients."""
    x, y, z = direction.unbind(-1)
    pole = x.square() + z.square() < 1e-12
    u = torch.atan2(torch.where(pole, 0.0, x), torch.where(pole, 1.0, z)) / (2 * math.pi) + 0.5
    v = torch.acos(y.clamp(-1 + 1e-6, 1 - 1e-6)) / math.pi
    return torch.stack([u, v], -1)


def edge_pairs(faces: torch.Tensor) -> torch.Tensor:
    """``[E, 2]`` unique undirected edges of ``faces [F, 3]``."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    return torch.unique(edges, dim=0)


def laplacian_loss(verts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each vertex from the mean of its neighbours (uniform weights)."""
    B, V, _ = verts.shape
    both = torch.cat([edges, edges.flip(1)])
    sums = torch.zeros_like(verts).index_add_(1, both[:, 0], verts[:, both[:, 1]])
    degree = torch.bincount(both[:, 0], minlength=V).to(verts.dtype)
    return (verts - sums / degree.clamp_min(1)[None, :, None]).square().sum(-1).mean()


def flatten_loss(verts: torch.Tensor, faces: torch.Tensor, face_pairs: torch.Tensor) -> torch.Tensor:
    """Mean ``(1 - cos θ)²`` over neighbouring faces ``face_pairs [P, 2]`` with normals at angle θ."""
    normals = face_normals(verts, faces)
    cos = (normals[:, face_pairs[:, 0]] * normals[:, face_pairs[:, 1]]).sum(-1)
    return (1 - cos).square().mean()


def neighbouring_faces(faces: torch.Tensor) -> torch.Tensor:
    """``[P, 2]`` pairs of faces that share an edge, each pair once (from ``edge_neighbours``)."""
    neighbours = edge_neighbours(faces.unsqueeze(0))[0]
    face = torch.arange(len(faces), device=faces.device).unsqueeze(1).expand_as(neighbours)
    once = neighbours > face
    return torch.stack([face[once], neighbours[once]], 1)
