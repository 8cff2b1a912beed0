"""The ``pytorch3d`` renderer backend: PyTorch3D's ``rasterize_meshes`` behind ``ops.rasterize``'s API.

PyTorch3D finds the nearest face of each pixel and its perspective-correct barycentrics (with
their gradients, on the CPU and on CUDA); points reach it in its screen space
(``pytorch3d_interop.clip_to_pytorch3d_screen``). Its coarse pass on CUDA keeps at most
``max_faces_per_bin`` faces per screen bin and drops the rest of a crowded bin with only a
warning; the adapter sets that bound to the most faces one image draws, so no bin can overflow.
Importing this module registers the backend; ``backends.get_backend("pytorch3d")`` does that on
first use.
"""

from __future__ import annotations

import torch
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes

from .backends import library_backend, register_backend
from .pytorch3d_interop import clip_to_pytorch3d_screen


def _visible(clip_pos: torch.Tensor, faces: torch.Tensor, drawn: torch.Tensor, resolution: tuple[int, int]):
    points = clip_to_pytorch3d_screen(clip_pos.float(), resolution)
    meshes = Meshes(verts=list(points), faces=[f[d] for f, d in zip(faces, drawn, strict=True)])
    most = int(meshes.num_faces_per_mesh().max())
    pix_to_face, _, bary, _ = rasterize_meshes(
        meshes, image_size=tuple(resolution), blur_radius=0.0, faces_per_pixel=1, perspective_correct=True,
        max_faces_per_bin=most,
    )  # fmt: skip
    packed = pix_to_face[..., 0]
    covered = packed >= 0
    kept = drawn.nonzero(as_tuple=True)[1]  # packed face (item-major) → the caller's face index
    face_id = torch.where(covered, kept[packed.clamp(min=0)], -1)
    return face_id, torch.where(covered[..., None], bary[..., 0, :], 0.0)


register_backend(library_backend("pytorch3d", _visible))
