"""Triangle meshes: procedural primitives and loading from OBJ/PLY/OFF/STL files (trimesh)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Mesh", "icosphere", "torus", "load_mesh", "pad_meshes"]


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``verts [V, 3]`` float, ``faces [F, 3]`` int64, wound counter-clockwise
    as seen from outside (so ``shading.face_normals`` point outward)."""

    verts: torch.Tensor
    faces: torch.Tensor

    def normalized(self, radius: float = 1.0) -> Mesh:
        """Centred on its bounding-box centre and scaled so the farthest vertex is at ``radius``."""
        centre = (self.verts.amax(0) + self.verts.amin(0)) / 2
        v = self.verts - centre
        return Mesh(v * (radius / v.norm(dim=-1).amax().clamp(min=1e-12)), self.faces)

    def to(self, *args, **kwargs) -> Mesh:
        return Mesh(self.verts.to(*args, **kwargs), self.faces.to(self.verts.to(*args, **kwargs).device))


def icosphere(subdivisions: int = 2, dtype: torch.dtype = torch.float32) -> Mesh:
    """Unit sphere from a subdivided icosahedron: ``20 * 4**subdivisions`` faces."""
    phi = (1 + math.sqrt(5)) / 2
    verts = [
        (-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0),
        (0, -1, phi), (0, 1, phi), (0, -1, -phi), (0, 1, -phi),
        (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1),
    ]  # fmt: skip
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]  # fmt: skip
    v = torch.tensor(verts, dtype=torch.float64)
    f = torch.tensor(faces, dtype=torch.long)
    for _ in range(subdivisions):
        edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
        unique, inverse = torch.unique(edges, dim=0, return_inverse=True)
        mid = len(v) + inverse.view(3, -1).T  # (F, 3): midpoints of edges 01, 12, 20
        v = torch.cat([v, (v[unique[:, 0]] + v[unique[:, 1]]) / 2])
        a, b, c = f.unbind(1)
        ab, bc, ca = mid.unbind(1)
        f = torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    v = v / v.norm(dim=-1, keepdim=True)
    return Mesh(v.to(dtype), f)


def torus(major: float = 1.0, minor: float = 0.35, rings: int = 48, sides: int = 24) -> Mesh:
    """Torus about the y axis with ``2 * rings * sides`` faces."""
    i = torch.arange(rings, dtype=torch.float64).view(-1, 1) * (2 * math.pi / rings)
    j = torch.arange(sides, dtype=torch.float64).view(1, -1) * (2 * math.pi / sides)
    r = major + minor * torch.cos(j)
    verts = torch.stack([r * torch.cos(i), minor * torch.sin(j).expand(rings, sides), r * torch.sin(i)], -1).view(-1, 3)
    a = torch.arange(rings).view(-1, 1) * sides + torch.arange(sides).view(1, -1)
    b = (torch.arange(rings).view(-1, 1) + 1) % rings * sides + torch.arange(sides).view(1, -1)
    c = (torch.arange(rings).view(-1, 1) + 1) % rings * sides + (torch.arange(sides).view(1, -1) + 1) % sides
    d = torch.arange(rings).view(-1, 1) * sides + (torch.arange(sides).view(1, -1) + 1) % sides
    faces = torch.cat([torch.stack([a, d, b], -1).view(-1, 3), torch.stack([b, d, c], -1).view(-1, 3)])
    return Mesh(verts.float(), faces)


def load_mesh(path: str | Path) -> Mesh:
    """Load a triangle mesh (OBJ, PLY, OFF, STL, ...) with trimesh; scenes are merged into one mesh."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_mesh(): no mesh file at {path}")
    loaded = trimesh.load(path, force="mesh", process=True)
    if len(loaded.faces) == 0:
        raise ValueError(f"load_mesh(): {path} holds no triangles")
    return Mesh(torch.as_tensor(loaded.vertices, dtype=torch.float32), torch.as_tensor(loaded.faces, dtype=torch.long))


def pad_meshes(meshes: list[Mesh]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack meshes of different sizes: ``verts [B, Vmax, 3]`` (zero-padded) and ``faces [B, Fmax, 3]``
    (padded with ``-1``), the batched form accepted by ``rasterize``."""
    if not meshes:
        raise ValueError("pad_meshes(): meshes must be a non-empty list")
    V = max(m.verts.shape[0] for m in meshes)
    Fm = max(m.faces.shape[0] for m in meshes)
    verts = meshes[0].verts.new_zeros(len(meshes), V, 3)
    faces = torch.full((len(meshes), Fm, 3), -1, dtype=torch.long, device=meshes[0].faces.device)
    for i, m in enumerate(meshes):
        verts[i, : m.verts.shape[0]] = m.verts
        faces[i, : m.faces.shape[0]] = m.faces
    return verts, faces
