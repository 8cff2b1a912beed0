"""Functional rendering core: rasterize, interpolate, texture, soft silhouette.

All ops are plain functions over batched tensors, in pure PyTorch (CPU or CUDA), with no state.
Frames and pixel conventions are defined in :mod:`renderloop.renderers.cameras`.

Triangles are rasterized by enumerating, per face, the pixel centres inside its screen bounding
box (fully vectorized: no Python loop over faces or pixels) and resolving visibility with a
packed ``(depth, face)`` key reduced by ``scatter_reduce("amin")``. Edge functions are evaluated
in a canonical vertex order with a top-left style tie rule, so a pixel centre on an edge shared by
two triangles is covered exactly once and a closed mesh has no holes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from renderloop.checks import check_shape

from . import _raster_triton
from ._binning import candidate_chunks, pixel_boxes, pixel_of, screen_triangles
from ._gather import take_rows
from .cameras import clip_to_pixel

__all__ = [
    "Fragments",
    "RasterContext",
    "make_context",
    "rasterize",
    "interpolate",
    "gather_faces",
    "texture",
    "soft_silhouette",
    "drawable_faces",
    "checked_faces",
    "empty_fragments",
    "camera_depth",
]

# Candidate (face, pixel) pairs processed at once; bounds peak memory (~100 bytes a pair).
DEFAULT_MAX_CANDIDATES = 1 << 24


@dataclass(frozen=True)
class Fragments:
    """Per-pixel output of :func:`rasterize`.

    Attributes:
        face_id: ``[B, H, W]`` int64, index of the nearest face in that item's face list; ``-1``
            where no face covers the pixel centre.
        bary: ``[B, H, W, 3]`` perspective-correct barycentrics of the pixel centre in that face;
            zero in the background. Differentiable w.r.t. ``clip_pos``.
        depth: ``[B, H, W]`` camera-space depth (the clip ``w``); zero in the background.
            Differentiable w.r.t. ``clip_pos``.
        faces: ``[B, F, 3]`` int64, the rasterized faces (``-1`` rows pad).
        num_verts: ``V``, the vertex count of the rasterized mesh.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    faces: torch.Tensor
    num_verts: int

    @property
    def mask(self) -> torch.Tensor:
        """``[B, H, W]`` bool, True where a face covers the pixel centre."""
        return self.face_id >= 0

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.face_id.shape[1:3])


def _check_mesh(op: str, clip_pos: torch.Tensor, faces: torch.Tensor, dims: int):
    """Validate shapes and types of ``clip_pos [B, V, dims]`` and ``faces``.

    Returns faces as int64 ``[B, F, 3]`` and the value checks (index range, finiteness) as a
    ``(device values, raise-on-host function)`` pair that the candidate pass fetches with its sync.
    """
    check_shape(op, "clip_pos", clip_pos, ("B", ">0", dims))
    if not clip_pos.is_floating_point():
        raise TypeError(f"{op}(): clip_pos must be a floating-point tensor; got {clip_pos.dtype}")
    if faces.dim() == 2:
        check_shape(op, "faces", faces, (">0", 3))
        faces = faces.unsqueeze(0).expand(clip_pos.shape[0], -1, -1)
    else:
        check_shape(op, "faces", faces, (clip_pos.shape[0], ">0", 3))
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}(): faces must be an integer tensor; got {faces.dtype}")
    if faces.device != clip_pos.device:
        raise ValueError(f"{op}(): faces and clip_pos must share a device; got {faces.device} and {clip_pos.device}")
    faces = faces.long()
    num_verts = clip_pos.shape[1]
    padding = faces < 0
    mixed = (padding.any(-1) & ~padding.all(-1)).any()  # rows must be all indices or all -1
    values = torch.stack(
        [faces.min().double(), faces.max().double(), torch.isfinite(clip_pos.detach()).all().double(), mixed.double()]
    )

    def raise_if_bad(host: list[float]) -> None:
        lo, hi, finite, mixed = host
        if mixed:
            raise ValueError(f"{op}(): faces rows must be all vertex indices or all -1 (padding); got a mixed row")
        if lo < -1 or hi >= num_verts:
            raise ValueError(
                f"{op}(): faces must index vertices in [0, {num_verts}) (-1 pads); got range [{int(lo)}, {int(hi)}]"
            )
        if not finite:
            raise ValueError(f"{op}(): clip_pos must be finite; got NaN or infinity")

    return faces, (values, raise_if_bad)


def _check_resolution(op: str, resolution: tuple[int, int]) -> None:
    if resolution[0] <= 0 or resolution[1] <= 0:
        raise ValueError(f"{op}(): resolution must be positive (H, W); got {tuple(resolution)}")


def _raise_if_bad(check) -> None:
    """Run ``_check_mesh``'s value checks now: the one host sync, before any work."""
    values, raise_if_bad = check
    raise_if_bad(values.tolist())


def checked_faces(op: str, clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """The input checks of :func:`rasterize` run at once (one host sync); faces as int64 ``[B, F, 3]``.
    For backends that hand the mesh to another library."""
    check_shape(op, "clip_pos", clip_pos, ("B", ">0", 4))
    _check_resolution(op, resolution)
    faces, check = _check_mesh(op, clip_pos, faces, 4)
    _raise_if_bad(check)
    return faces


def _edge_terms(faces: torch.Tensor, xy: torch.Tensor):
    """Canonical edge data for exact, watertight edge tests.

    Edge ``k`` is opposite corner ``k`` (``1→2``, ``2→0``, ``0→1``). Each is evaluated from the
    corner with the smaller vertex index, then negated if needed, so two faces sharing an edge
    get exactly opposite values. Returns origin ``[..., 3, 2]``, direction ``[..., 3, 2]``
    (both canonical) and the orientation sign ``[..., 3]`` that maps canonical to face order.
    """
    a_idx, b_idx = faces.roll(-1, dims=-1), faces.roll(-2, dims=-1)  # corners (1, 2, 0) and (2, 0, 1)
    a_xy, b_xy = xy.roll(-1, dims=-2), xy.roll(-2, dims=-2)
    swap = (a_idx > b_idx).unsqueeze(-1)
    origin = torch.where(swap, b_xy, a_xy)
    direction = torch.where(swap, a_xy - b_xy, b_xy - a_xy)
    sign = 1.0 - 2.0 * swap.squeeze(-1).to(xy.dtype)
    return origin, direction, sign


_EMPTY_KEY = torch.iinfo(torch.int64).max


def _flat_pixel(face: torch.Tensor, row: torch.Tensor, col: torch.Tensor, num_faces: int, H: int, W: int):
    """Index into ``[B * H * W]`` of the pixel ``(row, col)`` of the batch item that owns flat ``face``."""
    return (face // num_faces).long() * (H * W) + (row * W + col).long()


def _candidate_keys(
    table: torch.Tensor,
    meta: torch.Tensor,
    face: torch.Tensor,
    pos: torch.Tensor,
    num_faces: int,
    H: int,
    W: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel index and packed ``(depth, face)`` key of each candidate ``(face, pos)``; the empty key
    where the pixel centre is outside the face. ``table`` rows (built in ``_face_table``): edge
    coefficients (9), edge ownership (3), corner 1/w (3), 1/|area| (1); ``meta``: see ``Chunk``."""
    row, col = pixel_of(meta, face, pos)
    r = take_rows(table, face)
    px = col.to(table.dtype) + 0.5
    py = row.to(table.dtype) + 0.5
    e0 = r[:, 0] * px + r[:, 1] * py + r[:, 2]
    e1 = r[:, 3] * px + r[:, 4] * py + r[:, 5]
    e2 = r[:, 6] * px + r[:, 7] * py + r[:, 8]
    inside = (
        ((e0 > 0) | ((e0 == 0) & (r[:, 9] > 0)))
        & ((e1 > 0) | ((e1 == 0) & (r[:, 10] > 0)))
        & ((e2 > 0) | ((e2 == 0) & (r[:, 11] > 0)))
    )
    # Perspective-correct depth: 1 / sum(b_k / w_k) with screen-space barycentrics b_k = e_k / area.
    depth = (1.0 / ((e0 * r[:, 12] + e1 * r[:, 13] + e2 * r[:, 14]) * r[:, 15])).float().clamp(min=0)
    key = (depth.view(torch.int32).long() << 32) | (face % num_faces).long()  # non-negative floats sort as ints
    pixel = _flat_pixel(face, row, col, num_faces, H, W)
    return pixel, torch.where(inside, key, _EMPTY_KEY)


def _corner_table(values: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-face corner values ``[B * F, 3 * C]`` of vertex values ``[B, V, C]``.

    Gathering per face first and per pixel second keeps the backward pass's scatter-adds
    spread out: each pixel adds into its face's row, each face into its vertices' rows.
    """
    B, V, C = values.shape
    index = faces.clamp(min=0) + V * torch.arange(B, device=faces.device).view(B, 1, 1)
    return take_rows(values.reshape(B * V, C), index).reshape(-1, 3 * C)


def _pixel_faces(face_id: torch.Tensor, num_faces: int) -> torch.Tensor:
    """Row of each pixel's face in a ``[B * F, ...]`` table, ``[B * H * W]``. Background pixels
    point at faces spread over the table (their weights are zero) so no row gets hot."""
    B, H, W = face_id.shape
    pixel = torch.arange(H * W, device=face_id.device, dtype=torch.int32).view(1, H, W)
    local = torch.where(face_id >= 0, face_id.int(), pixel % num_faces)
    return (local + num_faces * torch.arange(B, device=face_id.device, dtype=torch.int32).view(B, 1, 1)).view(-1)


def _fragment_math(
    clip_pos: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics ``[P, 3]`` and depth ``[P, 1]`` of each pixel's visible face, differentiable
    w.r.t. ``clip_pos`` (dense over pixels; zero in the background)."""
    B, H, W = face_id.shape
    mask = (face_id >= 0).view(-1, 1)
    corners = take_rows(_corner_table(clip_pos, faces), _pixel_faces(face_id, faces.shape[1])).view(-1, 3, 4)
    # Background rows read arbitrary (possibly culled, w <= 0) faces: swap in a harmless corner
    # before any division so neither values nor gradients can become NaN.
    w = torch.where(mask, corners[..., 3], 1.0)
    corners = torch.cat([torch.where(mask.unsqueeze(-1), corners[..., :3], 0.0), w.unsqueeze(-1)], dim=-1)
    xy = clip_to_pixel(corners, (H, W))  # (P, 3, 2)
    grid = torch.arange(H * W, device=face_id.device, dtype=torch.int32).repeat(B)
    px = ((grid % W).to(xy.dtype) + 0.5).unsqueeze(1)
    py = ((grid // W).to(xy.dtype) + 0.5).unsqueeze(1)
    # Screen-space edge values b_k * area for corner k, from the edge opposite it.
    a, b = xy.roll(-1, dims=1), xy.roll(-2, dims=1)  # corners (1, 2, 0) and (2, 0, 1)
    edge = (b[..., 0] - a[..., 0]) * (py - a[..., 1]) - (b[..., 1] - a[..., 1]) * (px - a[..., 0])
    persp = edge / w  # proportional to perspective-correct barycentrics
    # Sums over the three corners are spelled out: compiled, they stay pointwise (no reduction kernel).
    total = torch.where(mask, persp[:, 0:1] + persp[:, 1:2] + persp[:, 2:3], 1.0)
    bary = torch.where(mask, persp / total, 0.0)
    depth = torch.where(mask, (edge[:, 0:1] + edge[:, 1:2] + edge[:, 2:3]) / total, 0.0)
    return bary, depth


def _point_triangle_sq_dist(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Squared distance from points ``[N, 2]`` to the boundary of triangles ``[N, 3, 2]``."""
    a, b = tri, tri.roll(-1, dims=1)
    ab = b - a
    ap = p.unsqueeze(1) - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)).clamp(0, 1)
    closest = a + t.unsqueeze(-1) * ab
    return ((p.unsqueeze(1) - closest) ** 2).sum(-1).amin(-1)


def _soft_terms(
    tri_table: torch.Tensor,
    meta: torch.Tensor,
    face: torch.Tensor,
    pos: torch.Tensor,
    num_faces: int,
    H: int,
    W: int,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per candidate of the soft silhouette: pixel index, whether the centre is inside the face,
    and ``log(1 - exp(-d²/sigma))`` (0 inside). ``tri_table`` is ``[B * F, 6]`` screen corners."""
    row, col = pixel_of(meta, face, pos)
    p = torch.stack([col, row], dim=-1).to(tri_table.dtype) + 0.5
    tri = take_rows(tri_table, face).view(-1, 3, 2)
    d01, d02 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = d01[:, 0] * d02[:, 1] - d01[:, 1] * d02[:, 0]
    a, b = tri, tri.roll(-1, dims=1)
    edge = (
        (b[..., 0] - a[..., 0]) * (p[:, 1:2] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[:, 0:1] - a[..., 0])
    ) * torch.sign(area).unsqueeze(-1)
    inside = (edge[:, 0] > 0) & (edge[:, 1] > 0) & (edge[:, 2] > 0)
    # log(1 - exp(-x)), with x kept off zero so a centre exactly on an edge has a finite gradient.
    x = (_point_triangle_sq_dist(p, tri) / sigma).clamp(min=1e-6)
    term = torch.where(inside, 0.0, torch.log(-torch.expm1(-x)))
    pixel = _flat_pixel(face, row, col, num_faces, H, W)
    return pixel, inside, term


def _screen_area(xy: torch.Tensor) -> torch.Tensor:
    """Twice the signed pixel-space area of triangles ``[..., 3, 2]``; > 0: clockwise as seen (a back face)."""
    d01, d02 = xy[..., 1, :] - xy[..., 0, :], xy[..., 2, :] - xy[..., 0, :]
    return d01[..., 0] * d02[..., 1] - d01[..., 1] * d02[..., 0]


def _drawn(area: torch.Tensor, cull_backfaces: bool) -> torch.Tensor:
    return (area < 0) if cull_backfaces else (area != 0)


@torch.no_grad()
def drawable_faces(
    clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int], cull_backfaces: bool = False
) -> torch.Tensor:
    """``[B, F]`` bool: the faces :func:`rasterize` draws (not padding, not degenerate on screen,
    wholly in front of the near plane, and front-facing if ``cull_backfaces``). Other
    rasterizers are given only these, so every backend culls alike. ``faces`` as returned by
    the mesh checks: int64 ``[B, F, 3]``."""
    xy, _, valid = screen_triangles(clip_pos, faces, resolution)
    return valid & _drawn(_screen_area(xy), cull_backfaces)


def _face_table(
    clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int], cull_backfaces: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per face, what the z-buffer pass tests pixel centres against: the table ``[B * F, 16]``
    (edge coefficients, edge ownership, corner 1/w, 1/|area|), screen corners ``[B, F, 3, 2]``
    and whether the face is drawn ``[B, F]``."""
    B, num_faces = faces.shape[:2]
    xy, w, valid = screen_triangles(clip_pos, faces, resolution)
    origin, direction, sign = _edge_terms(faces, xy)
    area = _screen_area(xy)
    valid = valid & _drawn(area, cull_backfaces)
    orient = torch.sign(area).unsqueeze(-1) * sign  # maps canonical edge values to "inside > 0"
    oriented = direction * orient.unsqueeze(-1)
    # Tie rule for a centre exactly on an edge: the symbolic shift (-1, -eps) of the sample point.
    owns_edge = (oriented[..., 1] > 0) | ((oriented[..., 1] == 0) & (oriented[..., 0] < 0))
    # Edge k as e_k(p) = a px + b py + c from its canonical origin and direction, then oriented:
    # both faces of a shared edge compute identical coefficients, so their values are exact negatives.
    dx, dy = direction[..., 0], direction[..., 1]
    coeffs = torch.stack([-dy, dx, dy * origin[..., 0] - dx * origin[..., 1]], dim=-1) * orient.unsqueeze(-1)
    table = torch.cat(
        [coeffs.flatten(2), owns_edge.to(xy.dtype), 1.0 / w, 1.0 / area.abs().clamp(min=1e-30).unsqueeze(-1)], dim=-1
    ).view(B * num_faces, 16)
    return table, xy, valid


def _zbuffer_inputs(
    clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int], cull_backfaces: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The z-buffer kernel's inputs: :func:`_face_table`'s table and each face's pixel box."""
    table, xy, valid = _face_table(clip_pos, faces, resolution, cull_backfaces)
    return (table, *pixel_boxes(xy, valid, resolution, 0.0))


@dataclass(frozen=True)
class RasterContext:
    """The dense kernels ``rasterize`` runs. Build one per process with :func:`make_context`;
    ``compile=True`` fuses each into a single ``torch.compile``d kernel (dynamic shapes). Where
    Triton runs (CUDA), the z-buffer pass, the fragment math and the soft silhouette's sums are
    Triton kernels (``zbuffer``, ``fragments``, ``soft_sums``) instead of candidate lists and
    compiled tensor code; a context built directly, ``RasterContext()``, keeps the tensor paths
    everywhere."""

    face_table: Callable = _face_table
    zbuffer_inputs: Callable = _zbuffer_inputs
    candidate_keys: Callable = _candidate_keys
    fragment_math: Callable = _fragment_math
    soft_terms: Callable = _soft_terms
    zbuffer: Callable | None = None
    fragments: Callable | None = None
    """The fragment math's Triton kernels (``_raster_triton.fragments``): the same barycentrics and
    depth as ``fragment_math``, with a backward pass that touches only covered pixels."""
    soft_sums: Callable | None = None
    """The soft silhouette's Triton kernels (``_raster_triton.soft_sums``): no candidate tensors
    kept for autograd, so faster and smaller than ``soft_terms`` on CUDA (BENCHMARKS.md)."""


def make_context(*, compile: bool = False) -> RasterContext:
    """A :class:`RasterContext`; eager by default, ``torch.compile``d with ``compile=True``."""
    kernels = {}
    if _raster_triton.triton is not None:  # used where supports() holds (CUDA), per call
        kernels = dict(
            zbuffer=_raster_triton.nearest_face_keys,
            fragments=_raster_triton.fragments,
            soft_sums=_raster_triton.soft_sums,
        )
    if not compile:
        return RasterContext(**kernels)
    return RasterContext(
        **kernels,
        face_table=torch.compile(_face_table, dynamic=True),
        zbuffer_inputs=torch.compile(_zbuffer_inputs, dynamic=True),
        candidate_keys=torch.compile(_candidate_keys, dynamic=True),
        fragment_math=torch.compile(_fragment_math, dynamic=True),
        soft_terms=torch.compile(_soft_terms, dynamic=True),
    )


_EAGER = make_context()


@torch.no_grad()
def _visible_faces(
    clip_pos: torch.Tensor,
    faces: torch.Tensor,
    resolution: tuple[int, int],
    cull_backfaces: bool,
    max_candidates: int,
    ctx: RasterContext,
    check,
) -> torch.Tensor:
    """Nearest covering face per pixel, ``[B, H, W]`` int64 (-1 for none)."""
    B, num_faces = faces.shape[:2]
    H, W = resolution
    best = torch.full((B * H * W,), _EMPTY_KEY, dtype=torch.int64, device=clip_pos.device)
    if ctx.zbuffer is not None and _raster_triton.supports(clip_pos.device):
        _raise_if_bad(check)
        table, first, size = ctx.zbuffer_inputs(clip_pos, faces, (H, W), cull_backfaces)
        ctx.zbuffer(table, first, size, best, num_faces, (H, W))
        return torch.where(best == _EMPTY_KEY, -1, best & 0xFFFFFFFF).view(B, H, W)
    table, xy, valid = ctx.face_table(clip_pos, faces, (H, W), cull_backfaces)
    for chunk in candidate_chunks(xy, valid, resolution, 0.0, max_candidates, check):
        pixel, key = ctx.candidate_keys(table, chunk.meta, chunk.face, chunk.pos, num_faces, H, W)
        best.scatter_reduce_(0, pixel, key, reduce="amin")
    face_id = torch.where(best == _EMPTY_KEY, -1, best & 0xFFFFFFFF)
    return face_id.view(B, H, W)


def rasterize(
    clip_pos: torch.Tensor,
    faces: torch.Tensor,
    resolution: tuple[int, int],
    *,
    cull_backfaces: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ctx: RasterContext | None = None,
) -> Fragments:
    """Rasterize triangles: nearest face, perspective-correct barycentrics and depth per pixel.

    Visibility (which face covers a pixel) is discrete and has no gradient; barycentrics and depth
    of the visible face are recomputed differentiably, so :func:`interpolate` carries gradients
    to vertex positions. Faces with a corner behind the near plane are culled.

    Args:
        clip_pos: ``[B, V, 4]`` float clip coordinates (see ``cameras.camera_to_clip``), any device.
        faces: ``[F, 3]`` int vertex indices shared by the batch, or ``[B, F, 3]`` per item with
            rows of ``-1`` as padding (a different mesh per batch item).
        resolution: ``(H, W)`` of the output.
        cull_backfaces: drop faces seen from behind (clockwise as seen by the camera).
        max_candidates: (face, pixel) pairs tested at once; lower it to save memory.
        ctx: kernels to run (:func:`make_context`); eager by default.

    Returns:
        :class:`Fragments` of shape ``[B, H, W]``.

    Raises:
        ValueError: wrong shapes, empty meshes, out-of-range indices, or non-finite positions.
    """
    check_shape("rasterize", "clip_pos", clip_pos, ("B", ">0", 4))
    _check_resolution("rasterize", resolution)
    H, W = resolution
    faces, check = _check_mesh("rasterize", clip_pos, faces, 4)
    ctx = ctx or _EAGER
    face_id = _visible_faces(clip_pos, faces, (H, W), cull_backfaces, max_candidates, ctx, check)
    if ctx.fragments is not None and _raster_triton.supports(clip_pos.device):
        bary, depth = ctx.fragments(clip_pos, faces, face_id)
    else:
        bary, depth = ctx.fragment_math(clip_pos, faces, face_id)
    B = face_id.shape[0]
    return Fragments(face_id, bary.view(B, H, W, 3), depth.view(B, H, W), faces, clip_pos.shape[1])


def empty_fragments(clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]) -> Fragments:
    """Fragments of an image no face covers (``faces`` as int64 ``[B, F, 3]``)."""
    B, (H, W) = len(clip_pos), resolution
    face_id = torch.full((B, H, W), -1, dtype=torch.int64, device=clip_pos.device)
    zeros = clip_pos.new_zeros(B, H, W, 3) * clip_pos.sum()  # keeps the graph: zero gradients, not none
    return Fragments(face_id, zeros, zeros[..., 0], faces, clip_pos.shape[1])


def camera_depth(
    clip_pos: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """``[B, H, W]`` camera depth of each pixel from its face and perspective-correct barycentrics
    (camera depth, the clip ``w``, is linear in camera space); for backends whose library
    returns barycentrics only."""
    B = len(clip_pos)
    items = torch.arange(B, device=faces.device).view(B, 1, 1)
    corner = faces[items, face_id.clamp(min=0)].clamp(min=0)  # [B, H, W, 3]; background reads face 0
    w = torch.gather(clip_pos[..., 3], 1, corner.view(B, -1)).view(corner.shape)
    return (bary * w.to(bary.dtype)).sum(-1)


def interpolate(attr: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate vertex attributes at pixel centres; differentiable w.r.t. ``attr`` and positions.

    Args:
        attr: ``[B, V, C]``, ``[1, V, C]`` or ``[V, C]`` float vertex attributes (colours, normals, UVs, ...).
        fragments: output of :func:`rasterize` for the same mesh.

    Returns:
        ``[B, H, W, C]``; zero in the background.
    """
    B, H, W = fragments.face_id.shape
    if attr.dim() == 2:
        attr = attr.unsqueeze(0)
    if attr.dim() == 3 and attr.shape[0] == 1:
        attr = attr.expand(B, -1, -1)
    check_shape("interpolate", "attr", attr, (B, ">0", None))
    V, C = attr.shape[1:]
    if fragments.num_verts != V:
        raise ValueError(f"interpolate(): attr must have a row per vertex ({fragments.num_verts}); got {V}")
    table = _corner_table(attr, fragments.faces)
    corner = take_rows(table, _pixel_faces(fragments.face_id, fragments.faces.shape[1])).view(B, H, W, 3, C)
    bary = fragments.bary.to(attr.dtype)
    return bary[..., 0:1] * corner[..., 0, :] + bary[..., 1:2] * corner[..., 1, :] + bary[..., 2:3] * corner[..., 2, :]


def gather_faces(face_attr: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Per-face attributes ``[B, F, C]`` (e.g. flat normals) at each pixel → ``[B, H, W, C]``; 0 in the background."""
    B, H, W = fragments.face_id.shape
    check_shape("gather_faces", "face_attr", face_attr, (B, fragments.faces.shape[1], None))
    rows = _pixel_faces(fragments.face_id, face_attr.shape[1])
    out = take_rows(face_attr.reshape(-1, face_attr.shape[-1]), rows).view(B, H, W, -1)
    return out * fragments.mask.unsqueeze(-1).to(out.dtype)


def texture(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup with clamped borders.

    Args:
        tex: ``[B, Ht, Wt, C]`` float texture.
        uv: ``[B, H, W, 2]`` texture coordinates in ``[0, 1]``: ``(0, 0)`` is the texture's top-left
            corner, ``u`` runs along columns and ``v`` along rows.

    Returns:
        ``[B, H, W, C]`` samples; differentiable w.r.t. ``tex`` and ``uv``.
    """
    check_shape("texture", "tex", tex, ("B", ">0", ">0", None))
    check_shape("texture", "uv", uv, (tex.shape[0], None, None, 2))
    grid = uv.to(tex.dtype) * 2 - 1
    out = F.grid_sample(tex.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def soft_silhouette(
    clip_pos: torch.Tensor,
    faces: torch.Tensor,
    resolution: tuple[int, int],
    *,
    sigma: float = 1.0,
    cutoff: float = 1e-4,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ctx: RasterContext | None = None,
) -> torch.Tensor:
    """Soft mask with gradients w.r.t. vertex positions (DIB-R-style aggregation).

    A pixel centre covered by a face has silhouette 1. Outside, each nearby face contributes
    ``D = exp(-d² / sigma)``, ``d`` the centre's screen distance to the face, and the silhouette is
    ``1 - prod_f (1 - D_f)``: continuous across the mesh outline, with gradients that pull the
    outline's vertices towards or away from the pixel. Interior edges leave no seams.

    Args:
        clip_pos: ``[B, V, 4]`` clip coordinates; faces: ``[F, 3]`` or ``[B, F, 3]`` (``-1`` pads).
        resolution: ``(H, W)``.
        sigma: softness in squared pixels (> 0); smaller is sharper.
        cutoff: contributions below this value are dropped (bounds the work).
        ctx: kernels to run (:func:`make_context`); eager by default.

    Returns:
        ``[B, H, W]`` silhouette in ``[0, 1]``.
    """
    faces, check = _check_mesh("soft_silhouette", clip_pos, faces, 4)
    if not sigma > 0:
        raise ValueError(f"soft_silhouette(): sigma must be > 0; got {sigma}")
    if not 0 < cutoff < 1:
        raise ValueError(f"soft_silhouette(): cutoff must be in (0, 1); got {cutoff}")
    B, num_faces = faces.shape[:2]
    H, W = resolution
    xy, _, valid = screen_triangles(clip_pos, faces, resolution)  # differentiable xy
    margin = (sigma * math.log(1.0 / cutoff)) ** 0.5
    tri_flat = xy.reshape(B * num_faces, 3, 2)
    ctx = ctx or _EAGER
    if ctx.soft_sums is not None and _raster_triton.supports(clip_pos.device):
        _raise_if_bad(check)
        first, size = pixel_boxes(xy, valid, resolution, margin)
        log_empty, covered = ctx.soft_sums(tri_flat.view(-1, 6), first, size, num_faces, (H, W), sigma)
    else:
        log_empty = clip_pos.new_zeros(B * H * W)
        covered = torch.zeros(B * H * W, dtype=torch.int32, device=clip_pos.device)
        for chunk in candidate_chunks(xy, valid, resolution, margin, max_candidates, check):
            pixel, inside, term = ctx.soft_terms(
                tri_flat.view(-1, 6), chunk.meta, chunk.face, chunk.pos, num_faces, H, W, sigma
            )
            covered.scatter_reduce_(0, pixel, inside.int(), reduce="amax")
            log_empty = log_empty.index_add(0, pixel, term)
    soft = 1 - torch.exp(log_empty)
    return torch.where(covered > 0, torch.ones_like(soft), soft).view(B, H, W)
