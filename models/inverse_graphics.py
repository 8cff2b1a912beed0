"""GANverse3D's inverse-graphics network: one image → a deformed sphere and its texture map.

``InverseGraphicsNet`` encodes the image and predicts an offset for every vertex of an icosphere
template (the object frame: up +y, front +z) and a spherical texture map. ``render_textured``
draws the result through the project's rasterizer: the texture is looked up by the direction of
the template point each pixel sees (interpolated on the sphere, so the map has no seam but its
own longitude line), and ``soft_silhouette`` gives the mask gradients for the IoU loss (DIB-R
style). The shape regularizers are the usual ones: a uniform Laplacian, a flatness term on the
angles between neighbouring faces, and the size of the offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.renderers.cameras import camera_to_clip, world_to_camera
from renderloop.renderers.meshes import icosphere
from renderloop.renderers.ops import interpolate, rasterize, soft_silhouette, texture
from renderloop.renderers.shading import face_normals

from .decomposition import Encoder

__all__ = ["InverseGraphicsNet", "TexturedRender", "render_textured", "laplacian_loss", "flatten_loss",
           "edge_pairs", "neighbouring_faces"]  # fmt: skip


class InverseGraphicsNet(nn.Module):
    """``[B, 3, S, S]`` in [0, 1] → vertices ``[B, V, 3]`` and texture ``[B, 3, T, T]`` in [0, 1].

    Args:
        subdivisions: of the icosphere template (``20 · 4^s`` faces).
        radius: the template's radius (object units); max_offset: bound of each offset coordinate.
        texture_size: side of the square texture map (a power of two ≥ 8).
    """

    def __init__(self, resolution: int, subdivisions: int = 3, radius: float = 1.0, max_offset: float = 0.5,
                 texture_size: int = 64, width: int = 32, zdim: int = 256) -> None:  # fmt: skip
        super().__init__()
        sphere = icosphere(subdivisions)
        self.register_buffer("template", sphere.verts * radius, persistent=False)
        self.register_buffer("faces", sphere.faces, persistent=False)
        self.max_offset = max_offset
        self.encode = Encoder(resolution, zdim, width, zdim)
        self.offsets = nn.Linear(zdim, 3 * len(sphere.verts))
        nn.init.zeros_(self.offsets.weight)  # the sphere at the start
        nn.init.zeros_(self.offsets.bias)
        levels = int(math.log2(texture_size)) - 2
        if texture_size < 8 or 4 * 2**levels != texture_size:
            raise ValueError(f"texture_size must be a power of two >= 8; got {texture_size}")
        layers: list[nn.Module] = [nn.ConvTranspose2d(zdim, width * 2, 4), nn.ReLU()]
        for _ in range(levels):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.ReLU()]
        self.texture_net = nn.Sequential(*layers, nn.Conv2d(width * 2, 3, 3, padding=1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(image)
        offsets = torch.tanh(self.offsets(code)).view(len(image), -1, 3) * self.max_offset
        tex = torch.sigmoid(self.texture_net(code[:, :, None, None]))
        return self.template + offsets, tex


@dataclass(frozen=True)
class TexturedRender:
    """``image [B, 3, H, W]`` (0 off the mesh), ``mask [B, H, W]`` (hard coverage), ``soft [B, H, W]``."""

    image: torch.Tensor
    mask: torch.Tensor
    soft: torch.Tensor


def render_textured(verts, faces, template, tex, R, t, K, resolution: tuple[int, int], sigma: float = 1.0,
                    ctx=None) -> TexturedRender:  # fmt: skip
    """Draw meshes ``verts [B, V, 3]`` (object frame) with spherical texture maps ``tex [B, 3, T, T]``
    through cameras ``x_cam = R x + t`` with intrinsics ``K``."""
    clip = camera_to_clip(world_to_camera(verts, R, t), K, resolution)
    frags = rasterize(clip, faces, resolution, ctx=ctx)
    direction = F.normalize(interpolate(template.expand(len(verts), -1, -1), frags), dim=-1, eps=1e-8)
    u = torch.atan2(direction[..., 0], direction[..., 2]) / (2 * math.pi) + 0.5  # longitude around +y
    v = torch.acos(direction[..., 1].clamp(-1, 1)) / math.pi  # 0 at the top
    image = texture(tex.permute(0, 2, 3, 1), torch.stack([u, v], -1)).permute(0, 3, 1, 2)
    mask = frags.mask
    soft = soft_silhouette(clip, faces, resolution, sigma=sigma, ctx=ctx)
    return TexturedRender(image * mask[:, None].to(image.dtype), mask, soft)


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
    """``[P, 2]`` pairs of faces that share an edge."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    owner = torch.arange(len(faces), device=faces.device).repeat(3)
    order = (edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1]).argsort()
    sorted_edges, sorted_owner = edges[order], owner[order]
    same = (sorted_edges[1:] == sorted_edges[:-1]).all(1)
    return torch.stack([sorted_owner[:-1][same], sorted_owner[1:][same]], 1)
