"""Depth-map renderer (as in Unsup3d and GAN2Shape): depth + albedo + light + view → image.

A canonical view sees the object as a depth map. Normals come from the depth, the albedo is
shaded by a directional light, and the shaded image is re-projected into a new viewpoint by
rasterizing the depth map as a grid mesh moved rigidly into that view. Images are
channels-first ``[B, C, H, W]``; frames are those of :mod:`renderloop.renderers.cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from renderloop.checks import check_shape

from .backends import RasterBackend, get_backend
from .cameras import camera_to_clip, camera_to_pixel, pixel_grid, pixel_to_camera
from .ops import interpolate, texture
from .shading import lambertian

__all__ = [
    "DepthRender",
    "depth_to_points",
    "depth_to_normals",
    "grid_faces",
    "euler_to_matrix",
    "view_about_pivot",
    "reproject",
    "sample_into_canonical",
    "render_depth_map",
]


@dataclass(frozen=True)
class DepthRender:
    """Output of :func:`render_depth_map`.

    Attributes:
        image: ``[B, C, H, W]`` shaded image seen from the new view (zero where nothing is seen).
        mask: ``[B, 1, H, W]`` float, 1 where the re-projected surface covers the pixel.
        depth: ``[B, H, W]`` depth of the surface in the new view (0 where not covered).
        canonical_image: ``[B, C, H, W]`` shaded image in the canonical view.
        normals: ``[B, 3, H, W]`` canonical camera-space normals (facing the camera: ``z < 0``).
    """

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    canonical_image: torch.Tensor
    normals: torch.Tensor


def depth_to_points(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-space points ``[B, H, W, 3]`` of each pixel centre of ``depth [B, H, W]``."""
    check_shape("depth_to_points", "depth", depth, ("B", ">0", ">0"))
    H, W = depth.shape[1:]
    uv = pixel_grid(H, W, dtype=depth.dtype, device=depth.device).expand(depth.shape[0], H, W, 2)
    return pixel_to_camera(uv, depth, K)


def depth_to_normals(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Unit normals ``[B, H, W, 3]`` from central differences of the unprojected depth map.

    Normals face the camera (negative ``z`` for a surface seen from the front). Borders reuse the
    nearest interior difference.
    """
    p = depth_to_points(depth, K)
    p = F.pad(p.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    du = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]  # along columns (+u)
    dv = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]  # along rows (+v)
    return F.normalize(torch.cross(dv, du, dim=-1), dim=-1, eps=1e-12)


def grid_faces(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``[2 (H-1) (W-1), 3]`` triangles joining neighbouring pixel centres of an ``H × W`` grid."""
    idx = torch.arange(height * width, device=device).view(height, width)
    tl, tr = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    bl, br = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    return torch.cat([torch.stack([tl, bl, tr], -1), torch.stack([tr, bl, br], -1)])


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[B, 3, 3]`` from ``[B, 3]`` angles (radians) about x, then y, then z."""
    check_shape("euler_to_matrix", "angles", angles, ("B", 3))
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def view_about_pivot(
    angles: torch.Tensor, translation: torch.Tensor, pivot_depth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid view change ``x' = R x + t`` rotating by Euler ``angles [B, 3]`` about the point
    ``(0, 0, pivot_depth)`` and then translating by ``translation [B, 3]`` (camera frame)."""
    R = euler_to_matrix(angles)
    pivot = angles.new_tensor([0.0, 0.0, pivot_depth])
    t = pivot - R @ pivot + translation
    return R, t


def reproject(
    image: torch.Tensor,
    depth: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    backend: RasterBackend | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-project a canonical ``image [B, C, H, W]`` with ``depth [B, H, W]`` into the view ``(R, t)``.

    The depth map becomes a grid mesh, moved by ``x' = R x + t`` and rasterized with the same
    intrinsics ``K`` (by ``backend``, ours by default); each covered pixel samples the canonical
    image where its surface point came from. Differentiable w.r.t. ``image``, ``depth``, ``R``
    and ``t``.

    Returns:
        ``(image [B, C, H, W], mask [B, 1, H, W], depth [B, H, W])`` in the new view.
    """
    check_shape("reproject", "image", image, ("B", None, ">0", ">0"))
    check_shape("reproject", "depth", depth, (image.shape[0], image.shape[2], image.shape[3]))
    B, _, H, W = image.shape
    # The mesh runs through pixel centres; a ring of one extra (replicated) pixel puts every
    # border centre strictly inside a triangle, so the identity view covers the whole image.
    padded = F.pad(depth.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)  # (B, H + 2, W + 2)
    uv = pixel_grid(H + 2, W + 2, dtype=depth.dtype, device=depth.device) - 1  # centres of pixels -1 .. W
    points = pixel_to_camera(uv.expand(B, H + 2, W + 2, 2), padded, K).reshape(B, -1, 3) @ R.transpose(1, 2)
    points = points + t.unsqueeze(1)
    rasterize = (backend or get_backend("torch")).rasterize
    frags = rasterize(camera_to_clip(points, K, (H, W)), grid_faces(H + 2, W + 2, device=depth.device), (H, W))
    canonical_uv = uv.view(-1, 2) / depth.new_tensor([W, H])
    uv = interpolate(canonical_uv, frags)  # (B, H, W, 2): where each pixel's surface point started
    mask = frags.mask.unsqueeze(1).to(image.dtype)
    out = texture(image.permute(0, 2, 3, 1), uv).permute(0, 3, 1, 2) * mask
    return out, mask, frags.depth


def sample_into_canonical(image: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                          t: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """What an ``image [B, C, H, W]`` seen in the view ``(R, t)`` shows at each canonical pixel: the
    canonical surface of ``depth [B, H, W]`` is moved into that view and projected with ``K``, and
    the image is sampled there (bilinear, clamped borders). The inverse lookup of :func:`reproject`,
    which carries a canonical image into the view; this one carries, e.g., an object mask of the
    input view into the canonical frame (occlusion is not checked)."""
    check_shape("sample_into_canonical", "depth", depth, (image.shape[0], image.shape[2], image.shape[3]))
    B, _, H, W = image.shape
    uv = pixel_grid(H, W, dtype=depth.dtype, device=depth.device).expand(B, H, W, 2)
    points = pixel_to_camera(uv, depth, K).reshape(B, -1, 3) @ R.transpose(1, 2) + t.unsqueeze(1)
    seen = camera_to_pixel(points, K).view(B, H, W, 2) / depth.new_tensor([W, H])
    return texture(image.permute(0, 2, 3, 1), seen).permute(0, 3, 1, 2)


def render_depth_map(
    depth: torch.Tensor,
    albedo: torch.Tensor,
    light_dir: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    ambient: torch.Tensor | float = 0.3,
    diffuse: torch.Tensor | float = 0.7,
    backend: RasterBackend | None = None,
) -> DepthRender:
    """Shade a canonical depth map and albedo, then re-project into the view ``(R, t)``.

    Args:
        depth: ``[B, H, W]`` canonical camera-space depth (> 0).
        albedo: ``[B, C, H, W]`` canonical albedo.
        light_dir: ``[B, 3]`` unit direction towards the light, canonical camera frame.
        K: ``[B, 3, 3]`` intrinsics shared by both views.
        R, t: ``[B, 3, 3]``, ``[B, 3]`` rigid change from canonical to new camera (``view_about_pivot``).
        ambient, diffuse: floats or ``[B]`` tensors.
        backend: the rasterizer (ours by default).

    Returns:
        :class:`DepthRender`.
    """
    check_shape("render_depth_map", "albedo", albedo, (depth.shape[0], None, depth.shape[1], depth.shape[2]))
    normals = depth_to_normals(depth, K)  # (B, H, W, 3)
    # Normals face the camera and light_dir points towards the light, both in the camera frame.
    shaded = lambertian(normals, albedo.permute(0, 2, 3, 1), light_dir, ambient, diffuse).permute(0, 3, 1, 2)
    image, mask, new_depth = reproject(shaded, depth, K, R, t, backend)
    return DepthRender(image, mask, new_depth, shaded, normals.permute(0, 3, 1, 2))
