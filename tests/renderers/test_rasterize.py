"""rasterize(): coverage, fill rule, depth, barycentrics, batching, errors."""

from __future__ import annotations

import pytest
import torch

from renderloop.renderers import cameras, ops
from renderloop.renderers.meshes import icosphere, pad_meshes, torus

from .helpers import orbit_scene, pixels_to_clip, reference_face_ids

RES = (32, 32)


def _raster(xy, faces, res=RES, w=1.0, **kw):
    return ops.rasterize(pixels_to_clip(xy, res, w).unsqueeze(0), faces, res, **kw)


def test_square_coverage_equals_area_torch():
    xy = torch.tensor([[3.0, 5.0], [23.0, 5.0], [23.0, 17.0], [3.0, 17.0]])
    frags = _raster(xy, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    assert int(frags.mask.sum()) == 20 * 12  # exact area: centres on the diagonal go to one face only
    assert bool(frags.mask[0, 5:17, 3:23].all())


def test_triangle_coverage_matches_area_torch():
    # Lattice right triangle: interior centres + exactly one of the two diagonal rulings.
    n = 16
    xy = torch.tensor([[0.0, 0.0], [n, 0.0], [0.0, n], [n, n]])
    lower = _raster(xy, torch.tensor([[0, 1, 2]])).mask
    upper = _raster(xy, torch.tensor([[1, 3, 2]])).mask
    counts = sorted([int(lower.sum()), int(upper.sum())])
    assert counts == [n * (n - 1) // 2, n * (n + 1) // 2]
    assert not bool((lower & upper).any())
    # A generic triangle: the count is within the perimeter bound of its exact area.
    tri = torch.tensor([[2.3, 1.7], [29.1, 9.4], [7.7, 30.2]])
    area = 0.5 * abs(
        float((tri[1, 0] - tri[0, 0]) * (tri[2, 1] - tri[0, 1]) - (tri[1, 1] - tri[0, 1]) * (tri[2, 0] - tri[0, 0]))
    )
    count = int(_raster(tri, torch.tensor([[0, 1, 2]])).mask.sum())
    perimeter = float((tri - tri[[1, 2, 0]]).norm(dim=-1).sum())
    assert abs(count - area) <= perimeter / 2


def _fan(res):
    """A planar fan of triangles whose vertices sit exactly on pixel centres and corners."""
    centre = torch.tensor([[16.5, 16.5]])
    ring = torch.tensor(
        [[4.0, 4.0], [16.5, 2.5], [29.0, 4.0], [30.5, 16.5], [29.0, 29.0], [16.5, 30.5], [4.0, 29.0], [2.5, 16.5]]
    )
    xy = torch.cat([centre, ring])
    n = len(ring)
    faces = torch.tensor([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    return xy, faces


def test_shared_edges_cover_each_pixel_once_torch():
    xy, faces = _fan(RES)
    # One face per batch item (per-item faces, -1 padded) gives each face's own coverage.
    per_face = torch.full((len(faces), len(faces), 3), -1)
    per_face[torch.arange(len(faces)), 0] = faces
    clip = pixels_to_clip(xy, RES).expand(len(faces), -1, -1)
    coverage = ops.rasterize(clip, per_face, RES).mask.sum(0)
    assert int(coverage.max()) == 1  # no pixel covered twice
    together = _raster(xy, faces).mask[0]
    assert torch.equal(together, coverage == 1)  # and the union has no gaps


def _fill_background(mask: torch.Tensor) -> torch.Tensor:
    """Background pixels reachable from the border without crossing the mask (4-connectivity)."""
    free = ~mask
    reach = torch.zeros_like(mask)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = reach.clone()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= free
        if torch.equal(grown, reach):
            return reach
        reach = grown


@pytest.mark.parametrize("mesh, simply_connected", [(icosphere(3), True), (torus(rings=40, sides=20), False)])
def test_closed_mesh_has_no_holes_torch(mesh, simply_connected):
    res = (96, 96)
    az = torch.tensor([0.3, 1.9, 4.0])
    R, t = cameras.orbit_camera(az, torch.tensor([0.2, 1.0, -0.5]), torch.full_like(az, 3.0))
    K = cameras.fov_intrinsics(45.0, *res, batch=3)
    clip = cameras.camera_to_clip(cameras.world_to_camera(mesh.verts.expand(3, -1, -1), R, t), K, res)
    mask = ops.rasterize(clip, mesh.faces, res).mask
    for m in mask:
        holes = ~m & ~_fill_background(m)
        if simply_connected:
            assert not bool(holes.any())
        # Any unreached background must be a real opening (the torus hole), never a single pixel.
        assert int(holes.sum()) == 0 or int(holes.sum()) > 20


def test_closed_mesh_front_and_back_cover_twice_torch():
    mesh = icosphere(2)
    res = (48, 48)
    R, t = cameras.orbit_camera(torch.tensor([0.7]), torch.tensor([0.3]), torch.tensor([3.0]))
    K = cameras.fov_intrinsics(40.0, *res)
    clip = cameras.camera_to_clip(cameras.world_to_camera(mesh.verts[None], R, t), K, res)
    front = ops.rasterize(clip, mesh.faces, res, cull_backfaces=True).mask
    back = ops.rasterize(clip, mesh.faces[:, [0, 2, 1]], res, cull_backfaces=True).mask
    assert torch.equal(front, back)  # every ray through the silhouette enters and leaves once


def test_depth_of_known_plane_torch():
    # Plane z = 2 + 0.5 x (camera frame) as two big triangles; depth along each ray is analytic.
    res = (24, 32)
    K = cameras.fov_intrinsics(60.0, *res)
    pts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    pts[:, 2] = 2 + 0.5 * pts[:, 0]
    clip = cameras.camera_to_clip(pts[None], K, res)
    frags = ops.rasterize(clip, torch.tensor([[0, 1, 2], [0, 2, 3]]), res)
    uv = cameras.pixel_grid(*res)
    ray_x = (uv[..., 0] - K[0, 0, 2]) / K[0, 0, 0]
    expected = 2 / (1 - 0.5 * ray_x)  # z = 2 + 0.5 * (ray_x * z)
    m = frags.mask[0]
    assert int(m.sum()) > 100
    torch.testing.assert_close(frags.depth[0][m], expected[m], rtol=1e-5, atol=1e-5)
    assert float(frags.depth[0][~m].abs().max()) == 0.0


def test_barycentrics_sum_to_one_and_hit_vertices_torch():
    verts, faces, R, t, K = orbit_scene(2, RES, subdivisions=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    frags = ops.rasterize(clip, faces, RES)
    m = frags.mask
    torch.testing.assert_close(frags.bary.sum(-1)[m], torch.ones(int(m.sum())))
    assert float(frags.bary.min()) >= -1e-5
    # Vertices on pixel centres: the interpolated attribute there equals the vertex's own value.
    xy = torch.tensor([[4.5, 4.5], [20.5, 6.5], [10.5, 25.5], [27.5, 27.5]])
    quad = _raster(xy, torch.tensor([[0, 1, 2], [1, 3, 2]]), w=torch.tensor([1.0, 2.0, 3.0, 1.5]))
    attr = torch.tensor([[1.0, 0.0], [2.0, 5.0], [3.0, -1.0], [4.0, 7.0]])
    values = ops.interpolate(attr, quad)[0]
    for (u, v), a in zip(xy.long().tolist(), attr, strict=True):
        if quad.mask[0, v, u]:
            torch.testing.assert_close(values[v, u], a)
    # The tie rule shifts each sample by (-1, -eps): of the outline's corners, only (20.5, 6.5) keeps it inside.
    assert [bool(quad.mask[0, v, u]) for u, v in xy.long().tolist()] == [False, True, False, False]


def test_matches_dense_reference_torch():
    verts, faces, R, t, K = orbit_scene(3, RES, subdivisions=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    got = ops.rasterize(clip, faces, RES).face_id
    want = reference_face_ids(clip, faces, RES)
    # The reference leaves pixels exactly on edges uncovered; away from them the two agree.
    agree = (got == want) | (want == -1)
    assert float(agree.float().mean()) == 1.0
    assert float((got == want).float().mean()) > 0.99


def test_chunking_does_not_change_the_result_torch():
    verts, faces, R, t, K = orbit_scene(2, RES, subdivisions=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    full = ops.rasterize(clip, faces, RES).face_id
    chunked = ops.rasterize(clip, faces, RES, max_candidates=97).face_id
    assert torch.equal(full, chunked)


def test_different_mesh_per_item_torch():
    a, b = icosphere(1), torus(rings=12, sides=8)
    verts, faces = pad_meshes([a, b])
    R, t = cameras.orbit_camera(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([3.0, 3.0]))
    K = cameras.fov_intrinsics(40.0, *RES, batch=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    batched = ops.rasterize(clip, faces, RES).face_id
    for i, mesh in enumerate([a, b]):
        alone = ops.rasterize(clip[i : i + 1, : len(mesh.verts)], mesh.faces, RES).face_id
        assert torch.equal(batched[i : i + 1], alone)


def test_behind_camera_is_culled_torch():
    res = (16, 16)
    K = cameras.fov_intrinsics(60.0, *res)
    pts = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
    faces = torch.tensor([[0, 1, 2]])
    seen = ops.rasterize(cameras.camera_to_clip(pts[None], K, res), faces, res).mask
    behind = pts * torch.tensor([1.0, 1.0, -1.0])  # mirrored behind the camera: must not appear
    crossing = pts.clone()
    crossing[0, 2] = -1.0  # one corner behind the near plane: culled
    assert int(seen.sum()) > 0
    assert int(ops.rasterize(cameras.camera_to_clip(behind[None], K, res), faces, res).mask.sum()) == 0
    assert int(ops.rasterize(cameras.camera_to_clip(crossing[None], K, res), faces, res).mask.sum()) == 0


def test_backface_culling_torch():
    xy = torch.tensor([[2.0, 2.0], [14.0, 2.0], [2.0, 14.0]])
    ccw_as_seen = torch.tensor([[0, 2, 1]])  # counter-clockwise on screen (y down): front-facing
    assert int(_raster(xy, ccw_as_seen, (16, 16), cull_backfaces=True).mask.sum()) > 0
    assert int(_raster(xy, ccw_as_seen[:, [0, 2, 1]], (16, 16), cull_backfaces=True).mask.sum()) == 0


@pytest.mark.parametrize(
    "clip, faces, match",
    [
        (torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), r"clip_pos must have shape \[B, >0, 4\]"),
        (torch.zeros(1, 0, 4), torch.tensor([[0, 1, 2]]), r"clip_pos must have shape"),
        (torch.ones(1, 3, 4), torch.zeros(0, 3, dtype=torch.long), r"faces must have shape \[>0, 3\]"),
        (torch.ones(1, 3, 4), torch.tensor([[0, 1, 3]]), r"faces must index vertices in \[0, 3\)"),
        (torch.ones(1, 3, 4), torch.tensor([[0.0, 1.0, 2.0]]), r"faces must be an integer tensor"),
        (torch.full((1, 3, 4), float("nan")), torch.tensor([[0, 1, 2]]), r"clip_pos must be finite"),
        (torch.ones(2, 3, 4), torch.tensor([[[0, 1, 2]]]), r"faces must have shape \[2, >0, 3\]"),
        (torch.ones(1, 3, 4), torch.tensor([[0, -1, 2]]), r"faces rows must be all vertex indices or all -1"),
        (torch.ones(1, 3, 4), torch.tensor([[0, -1, 2]]), r"faces rows must be all vertex indices or all -1"),
    ],
)
def test_bad_inputs_raise_torch(clip, faces, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.rasterize(clip, faces, (8, 8))


def test_bad_resolution_raises_torch():
    with pytest.raises(ValueError, match=r"resolution must be positive"):
        ops.rasterize(torch.ones(1, 3, 4), torch.tensor([[0, 1, 2]]), (0, 8))


@pytest.mark.gpu
def test_cuda_matches_cpu_cuda():
    verts, faces, R, t, K = orbit_scene(4, (64, 64), subdivisions=3, dtype=torch.float64)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, (64, 64)).requires_grad_(True)
    cpu = ops.rasterize(clip, faces, (64, 64))
    gpu_clip = clip.detach().cuda().requires_grad_(True)
    gpu = ops.rasterize(gpu_clip, faces.cuda(), (64, 64))
    assert torch.equal(cpu.face_id, gpu.face_id.cpu())
    torch.testing.assert_close(cpu.bary, gpu.bary.cpu())
    w = torch.randn_like(cpu.bary)
    (g_cpu,) = torch.autograd.grad((cpu.bary * w).sum() + cpu.depth.sum(), clip)
    (g_gpu,) = torch.autograd.grad((gpu.bary * w.cuda()).sum() + gpu.depth.sum(), gpu_clip)
    torch.testing.assert_close(g_cpu, g_gpu.cpu())


@pytest.mark.parametrize("columns", [1, 16])
def test_both_row_gathers_agree_with_indexing_and_its_gradient(columns):
    """``take_rows`` gathers with ``index_select`` on the CPU and a flattened 1D gather on CUDA."""
    from renderloop.renderers._gather import _take_rows_flat, take_rows

    table = torch.randn(50, columns, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 50, (7, 9))
    for gather in (take_rows, _take_rows_flat):
        assert torch.equal(gather(table, index), table[index])
        assert torch.autograd.gradcheck(lambda t, g=gather: g(t, index), (table,))
