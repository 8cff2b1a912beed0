"""PyTorch3D's conventions, converted in this one place: meshes, perspective cameras and the
rasterizer's screen space.

PyTorch3D's view frame has +X left, +Y up, +Z forward, and its cameras map world points as row
vectors, ``X_view = X_world @ R + T``. renderloop's camera frame (``cameras``) has +x right,
+y down, +z forward with ``x_cam = R x + t``. The two differ by ``F = diag(-1, -1, 1)``:
``R_ours = F R_p3dᵀ``, ``t_ours = F T``. PyTorch3D's NDC has +X left and +Y up, and the shorter
image side spans [-1, 1]; ours spans [-1, 1] on both sides with +x right and +y down; pixel
centres coincide. ``pytorch3d`` is imported only by the functions that build its objects.
"""

from __future__ import annotations

import torch

from renderloop.checks import check_shape

__all__ = [
    "FLIP_XY",
    "cameras_from_pytorch3d",
    "cameras_to_pytorch3d",
    "meshes_from_pytorch3d",
    "meshes_to_pytorch3d",
    "clip_to_pytorch3d_screen",
]

FLIP_XY = (-1.0, -1.0, 1.0)
"""The diagonal of the rotation by 180° about z that takes PyTorch3D's view frame to ours."""


def _flip(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(FLIP_XY, dtype=like.dtype, device=like.device)


def cameras_from_pytorch3d(cameras, image_size: tuple[int, int]):
    """``(R, t, K)`` of PyTorch3D ``PerspectiveCameras`` (NDC or screen parameters) for an
    ``(H, W)`` image: ``[B, 3, 3]``, ``[B, 3]``, ``[B, 3, 3]`` in renderloop's conventions."""
    H, W = image_size
    R_p3d, T = cameras.R, cameras.T
    f = _flip(R_p3d)
    R = f[:, None] * R_p3d.transpose(1, 2)
    t = T * f
    focal = cameras.focal_length.expand(len(R), 2).to(R)
    principal = cameras.principal_point.expand(len(R), 2).to(R)
    if cameras.in_ndc():  # NDC units: the shorter side spans 2, +X left and +Y up
        s = min(H, W) / 2
        focal = focal * s
        principal = torch.stack([W / 2 - s * principal[:, 0], H / 2 - s * principal[:, 1]], -1)
    K = torch.zeros(len(R), 3, 3, dtype=R.dtype, device=R.device)
    K[:, 0, 0], K[:, 1, 1] = focal[:, 0], focal[:, 1]
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = principal[:, 0], principal[:, 1], 1.0
    return R, t, K


def cameras_to_pytorch3d(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int]):
    """PyTorch3D ``PerspectiveCameras`` (screen parameters, ``in_ndc=False``) that see what
    renderloop's ``(R, t, K)`` see in an ``(H, W)`` image."""
    from pytorch3d.renderer import PerspectiveCameras

    check_shape("cameras_to_pytorch3d", "K", K, ("B", 3, 3))
    f = _flip(R)
    R_p3d = (f[:, None] * R).transpose(1, 2)
    return PerspectiveCameras(
        R=R_p3d,
        T=t * f,
        focal_length=torch.stack([K[:, 0, 0], K[:, 1, 1]], -1),
        principal_point=torch.stack([K[:, 0, 2], K[:, 1, 2]], -1),
        in_ndc=False,
        image_size=torch.tensor([image_size], device=R.device).expand(len(R), 2),
        device=R.device,
    )


def meshes_from_pytorch3d(meshes) -> tuple[torch.Tensor, torch.Tensor]:
    """``verts [B, V, 3]`` (zero-padded) and ``faces [B, F, 3]`` (``-1`` rows pad) of a PyTorch3D
    ``Meshes``: renderloop's per-item mesh batch."""
    return meshes.verts_padded(), meshes.faces_padded()


def meshes_to_pytorch3d(verts: torch.Tensor, faces: torch.Tensor):
    """A PyTorch3D ``Meshes`` of ``verts [B, V, 3]`` and ``faces`` ``[F, 3]`` shared or ``[B, F, 3]``
    with ``-1`` rows as padding (dropped)."""
    from pytorch3d.structures import Meshes

    check_shape("meshes_to_pytorch3d", "verts", verts, ("B", ">0", 3))
    faces = faces.expand(len(verts), -1, -1) if faces.dim() == 2 else faces
    return Meshes(verts=list(verts), faces=[f[(f >= 0).all(-1)] for f in faces])


def clip_to_pytorch3d_screen(clip_pos: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """``[B, V, 4]`` clip coordinates → ``[B, V, 3]`` points in PyTorch3D's NDC with the camera
    depth as z, what its mesh rasterizer takes. Vertices at or behind the eye get depth 1 and
    may land anywhere: callers give the rasterizer no face that uses them."""
    H, W = resolution
    s = min(H, W)
    w = clip_pos[..., 3]
    safe = torch.where(w > 0, w, 1.0)
    x = -clip_pos[..., 0] / safe * (W / s)
    y = -clip_pos[..., 1] / safe * (H / s)
    return torch.stack([x, y, safe], -1)
