"""Triangle meshes: procedural primitives and loading from OBJ/PLY/OFF/STL files (trimesh)."""

from __future__ import annotations

import functools
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from renderloop.config import ConfigError

__all__ = ["Mesh", "MeshFileError", "icosphere", "torus", "load_mesh", "check_mesh_file", "pad_meshes"]

# What trimesh's parsers raise on malformed files (a face index beyond the vertices is an IndexError).
_PARSE_ERRORS = (
    ValueError, IndexError, KeyError, TypeError, AttributeError, NotImplementedError, EOFError, struct.error
)  # fmt: skip
_VERTEX_INDEX = re.compile(r"index -?\d+ is out of bounds for axis 0 with size \d+")
# A triangle counts as degenerate below this area relative to the squared size of the mesh.
_DEGENERATE_AREA = 1e-12


class MeshFileError(ValueError):
    """A mesh file that cannot be drawn: unreadable, or without one valid, non-degenerate triangle."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"load_mesh(): {path}: {reason}")
        self.path, self.reason = path, reason


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
    """Load a triangle mesh (OBJ, PLY, OFF, STL, ...) with trimesh; scenes are merged into one mesh.

    Raises:
        FileNotFoundError: no file at ``path``.
        MeshFileError: the file cannot be parsed, holds no triangles, has a face index beyond its
            vertices or a non-finite vertex, or every triangle has zero area (nothing to draw).
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_mesh(): no mesh file at {path}" + (" (a folder)" if path.is_dir() else ""))
    try:
        loaded = trimesh.load(path, force="mesh", process=True)
    except _PARSE_ERRORS as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, IndexError) and _VERTEX_INDEX.match(detail):  # numpy's words for a face past the vertices
            raise MeshFileError(path, f"has a face index beyond its vertices ({detail})") from None
        raise MeshFileError(path, f"cannot be parsed ({detail})") from None
    faces = getattr(loaded, "faces", None)
    if faces is None or len(faces) == 0:
        raise MeshFileError(path, "holds no triangles")
    verts = torch.as_tensor(loaded.vertices, dtype=torch.float64)
    faces = torch.as_tensor(faces, dtype=torch.long)
    if int(faces.min()) < 0 or int(faces.max()) >= len(verts):
        raise MeshFileError(path, f"has a face index beyond its {len(verts)} vertices")
    if not bool(torch.isfinite(verts).all()):
        raise MeshFileError(path, "has a vertex with NaN or infinite coordinates")
    a, b, c = verts[faces].unbind(1)  # (F, 3) corners
    size = float((verts.amax(0) - verts.amin(0)).max())
    twice_area = torch.linalg.cross(b - a, c - a).norm(dim=-1)
    if size == 0 or not bool((twice_area > 2 * _DEGENERATE_AREA * size**2).any()):
        raise MeshFileError(path, f"has no triangle of non-zero area (all {len(faces)} are degenerate)")
    return Mesh(verts.float(), faces)


def check_mesh_file(key: str, path: str) -> None:
    """Refuse at config ``key`` a mesh file that ``load_mesh`` would refuse, before anything is built.

    A file is parsed once per (path, modification time, size), as configs are validated more than once.
    """
    where = Path(path).expanduser()
    if not path:
        raise ConfigError(key, f"needs a path to an OBJ/PLY/OFF/STL file; got {path!r}")
    if where.is_dir():
        raise ConfigError(key, f"is a folder; give a mesh file (OBJ/PLY/OFF/STL) in it; got {path!r}")
    if not where.is_file():
        raise ConfigError(key, f"no such mesh file; give an existing OBJ/PLY/OFF/STL file; got {path!r}")
    stat = where.stat()
    try:
        _check_mesh_file(str(where.resolve()), stat.st_mtime_ns, stat.st_size)
    except MeshFileError as err:
        raise ConfigError(key, f"the mesh file {err.reason}; fix or replace it; got {path!r}") from None
    except OSError as err:
        raise ConfigError(key, f"the mesh file cannot be read ({err.strerror}); got {path!r}") from None


@functools.lru_cache(maxsize=64)
def _check_mesh_file(path: str, mtime_ns: int, size: int) -> None:
    """``load_mesh(path)`` for its errors; the file's time and size are the cache key, so an edit is seen."""
    load_mesh(path)


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
