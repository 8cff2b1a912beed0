"""antialias(): exact coverage of straight outlines, its gradients, which edges it blends, errors.
Every test runs with the walks as tensor code and as the Triton kernel (on the CPU in Triton's
interpreter), which must agree bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch

from renderloop.renderers import _antialias_triton, cameras, ops
from renderloop.renderers.antialias import antialias, edge_neighbours

from .helpers import orbit_scene, pixels_to_clip

RES = (24, 24)
QUAD = torch.tensor([[0, 1, 2], [0, 2, 3]])


@pytest.fixture(autouse=True, params=["tensor", "triton"])
def walks(request, monkeypatch):
    """Which path follows the walks; the kernel's runs wherever Triton is installed."""
    if request.param == "triton":
        if _antialias_triton.triton is None:
            pytest.skip("needs Triton")
        monkeypatch.setattr(_antialias_triton, "supports", lambda device: True)
    return request.param


def _rectangle(x0: float, x1: float, y0: float, y1: float, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=dtype)


def _mask_antialiased(xy: torch.Tensor, faces=QUAD, res=RES, w=1.0) -> torch.Tensor:
    clip = pixels_to_clip(xy, res, w).unsqueeze(0)
    frags = ops.rasterize(clip, faces, res)
    return antialias(frags.mask.unsqueeze(-1).to(xy.dtype), frags, clip)[0, ..., 0]


@pytest.mark.parametrize("right", [10.3, 10.7])  # the crossing past or before the midpoint
def test_a_straight_outline_gets_its_covered_area(right):
    mask = _mask_antialiased(_rectangle(2.0, right, 3.0, 20.2))
    assert torch.allclose(mask[3:20].sum(1), torch.full((17,), right - 2.0, dtype=mask.dtype))
    assert torch.allclose(mask[:, 2:10].sum(0), torch.full((8,), 17.2, dtype=mask.dtype))
    assert mask.min() >= 0 and mask.max() <= 1
    assert bool((mask[5:18, 4:9] == 1).all()) and bool((mask[:, 12:] == 0).all())  # away from outlines


def test_moving_an_outline_moves_the_covered_area():
    corners = torch.tensor([10.3, 20.2], dtype=torch.float64, requires_grad=True)
    xy = torch.stack(
        [torch.stack([torch.tensor(2.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)]),
         torch.stack([corners[0], torch.tensor(3.0, dtype=torch.float64)]),
         corners,
         torch.stack([torch.tensor(2.0, dtype=torch.float64), corners[1]])]
    )  # fmt: skip
    _mask_antialiased(xy).sum().backward()
    # one unit of area per covered row (17) and column (8); the corner pixel beyond both edges is not blended
    assert torch.allclose(corners.grad, torch.tensor([17.0, 8.0], dtype=torch.float64))


def test_gradients_match_finite_differences(walks):
    if walks == "triton":
        pytest.skip("the walk takes no gradients: the kernel's agree with these bit for bit (below)")
    torch.manual_seed(0)
    res = (12, 12)
    xy = torch.tensor([[1.3, 2.1], [10.6, 3.4], [4.2, 10.8], [9.7, 9.9]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    clip = pixels_to_clip(xy, res, torch.tensor([1.0, 1.5, 2.0, 1.2], dtype=torch.float64)).unsqueeze(0)
    frags = ops.rasterize(clip, faces, res)
    color = torch.rand(1, *res, 2, dtype=torch.float64, requires_grad=True)
    clip = clip.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, p: antialias(c, frags, p), (color, clip), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("tilt", [0.3, 0.6])
def test_a_slanted_outline_is_blended_once(tilt):
    radius = torch.tensor(17.3, dtype=torch.float64, requires_grad=True)
    angle = tilt + torch.arange(4, dtype=torch.float64) * torch.pi / 2
    xy = 24.0 + radius * torch.stack([angle.cos(), angle.sin()], dim=-1)  # a tilted square of area 2 r²
    _mask_antialiased(xy, res=(48, 48)).sum().backward()
    assert float(radius.grad) == pytest.approx(4 * 17.3, rel=0.05)  # d(area)/dr; both pair directions: 2×


@pytest.mark.parametrize(
    "faces",
    [[[0, 1, 2], [0, 3, 2]], [[0, 1, 2], [0, 2, 3], [1, 2, 0]], [[0, 1, 2], [0, 0, 2], [0, 2, 3]]],
    ids=["flipped", "doubled", "degenerate"],
)
def test_winding_doubled_and_degenerate_faces_leave_the_outline_as_it_is(faces):
    xy = _rectangle(2.0, 21.6, 3.0, 20.4)
    clip = pixels_to_clip(xy, RES).unsqueeze(0)
    plain = ops.rasterize(clip, QUAD, RES)
    frags = ops.rasterize(clip, torch.tensor(faces), RES)
    # Each pixel coloured by the triangle of the plain quad it lies in: the diagonal between them is inside.
    color = torch.where(plain.face_id == 1, 2.0, plain.mask.double()).unsqueeze(-1)
    out = antialias(color, frags, clip)[0, ..., 0]
    assert torch.equal(out, antialias(color, plain, clip)[0, ..., 0])
    assert torch.equal(out[4:20, 3:21], color[0, 4:20, 3:21, 0])
    mask = antialias(plain.mask.unsqueeze(-1).double(), frags, clip)[0, ..., 0]
    assert torch.allclose(mask[3:20].sum(1), torch.full((17,), 19.6, dtype=torch.float64))


def test_an_outline_through_the_next_centre_still_counts():
    mask = _mask_antialiased(_rectangle(2.5, 10.5, 3.5, 12.5), res=(16, 16))
    assert torch.allclose(mask[4:12].sum(1), torch.full((8,), 8.0, dtype=mask.dtype))


def test_where_surfaces_nearly_touch_the_other_side_is_tried():
    front, back = _rectangle(2.0, 10.3, 3.0, 20.2), _rectangle(1.0, 23.0, -4.0, 30.0)
    inverse_w = 0.5 + 0.05 * (back[:, 0] - 10.4)  # a plane just behind the front face's right edge
    clip = torch.cat([pixels_to_clip(front, RES, 2.0), pixels_to_clip(back, RES, 1 / inverse_w)]).unsqueeze(0)
    frags = ops.rasterize(clip, torch.cat([QUAD, QUAD + 4]), RES)
    assert float(frags.depth[0, 10, 10]) < 2.0  # the back plane is nearer at the next centre
    front_face = ((frags.face_id >= 0) & (frags.face_id < 2)).unsqueeze(-1).double()
    out = antialias(front_face, frags, clip)[0, ..., 0]
    assert torch.allclose(out[4:20, 2:12].sum(1), torch.full((16,), 8.3, dtype=out.dtype))


def test_gradients_where_the_other_side_is_tried_match_finite_differences(walks):
    if walks == "triton":
        pytest.skip("the walk takes no gradients: the kernel's agree with these bit for bit (below)")
    res = (12, 12)
    front, back = _rectangle(2.2, 6.3, 3.3, 9.2), _rectangle(1.3, 10.7, -4.1, 15.2)
    inverse_w = 0.5 + 0.05 * (back[:, 0] - 6.4)  # the back plane comes nearer than 2 just past x = 6.3
    clip = torch.cat([pixels_to_clip(front, res, 2.0), pixels_to_clip(back, res, 1 / inverse_w)]).unsqueeze(0)
    frags = ops.rasterize(clip, torch.cat([QUAD, QUAD + 4]), res)
    assert float(frags.depth[0, 5, 6]) < 2.0  # the front face's right outline sits by a nearer back pixel
    color = torch.rand(1, *res, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    color, clip = color.requires_grad_(True), clip.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, p: antialias(c, frags, p), (color, clip), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("apex_w, apex_z", [(1.0, -2.0), (0.0, 0.0)], ids=["before-near-plane", "at-the-camera"])
def test_a_neighbour_the_rasterizer_drops_leaves_an_outline(apex_w, apex_z):
    res = (12, 16)
    xy = torch.tensor([[1.2, 1.3], [8.3, 1.1], [8.3, 10.8], [14.6, 6.1]], dtype=torch.float64)
    clip = pixels_to_clip(xy, res).clone()
    clip[3, 2:] = torch.tensor([apex_z, apex_w], dtype=torch.float64)  # the second face cannot be drawn
    clip = clip.unsqueeze(0).requires_grad_(True)
    frags = ops.rasterize(clip, torch.tensor([[0, 1, 2], [1, 3, 2]]), res)
    assert not bool((frags.face_id == 1).any())
    out = antialias(frags.mask.unsqueeze(-1).double(), frags, clip)
    assert float(out.detach()[0, 5, 8, 0]) == pytest.approx(0.3)  # x = 8.3: the pixel past it takes 0.3
    out.sum().backward()
    assert bool(torch.isfinite(clip.grad).all())


def test_walks_cut_short_are_reported():
    verts, faces, R, t, K = orbit_scene(1, (16, 16), subdivisions=4, dtype=torch.float64)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, (16, 16))
    frags = ops.rasterize(clip, faces, (16, 16))
    with pytest.warns(UserWarning, match=r"antialias\(\): \d+ segments crossed more than max_hops=1 faces"):
        antialias(frags.mask.unsqueeze(-1).double(), frags, clip, max_hops=1)


def test_edges_inside_a_surface_are_not_blended():
    xy = _rectangle(2.0, 21.6, 3.0, 20.4)
    clip = pixels_to_clip(xy, RES).unsqueeze(0)
    frags = ops.rasterize(clip, QUAD, RES)
    color = torch.where(frags.face_id == 1, 2.0, frags.mask.double()).unsqueeze(-1)  # faces 1 and 2 apart
    out = antialias(color, frags, clip)
    inside = torch.zeros(RES, dtype=torch.bool)
    inside[4:20, 3:21] = True  # every pixel whose four neighbours are covered: only the diagonal between them
    assert torch.equal(out[0][inside], color[0][inside])
    assert not torch.equal(out, color)  # the outer outline is blended


def test_the_nearer_surface_owns_the_outline():
    res = RES
    front, back = _rectangle(5.0, 12.3, 2.0, 22.0), _rectangle(-4.0, 30.0, -4.0, 30.0)
    clip = torch.cat([pixels_to_clip(front, res, 1.0), pixels_to_clip(back, res, 3.0)]).unsqueeze(0)
    faces = torch.cat([QUAD, QUAD + 4])
    frags = ops.rasterize(clip, faces, res)
    front_face = ((frags.face_id >= 0) & (frags.face_id < 2)).unsqueeze(-1).double()
    out = antialias(front_face, frags, clip)[0, ..., 0]
    assert torch.allclose(out[2:22].sum(1), torch.full((20,), 7.3, dtype=out.dtype))


def test_edge_neighbours_pair_faces_that_share_an_edge():
    tetrahedron = torch.tensor([[[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0], [-1, -1, -1]]])
    n = edge_neighbours(tetrahedron)[0]
    assert bool((n[4] == -1).all())  # padding
    for face in range(4):
        for k in range(3):  # edge k is opposite corner k: the face's other two vertices
            edge = {int(v) for i, v in enumerate(tetrahedron[0, face]) if i != k}
            other = int(n[face, k])
            assert other not in (face, -1) and edge <= set(tetrahedron[0, other].tolist())
    assert bool((edge_neighbours(torch.tensor([[[0, 1, 2]]])) == -1).all())  # a boundary everywhere


def test_bad_inputs_raise():
    xy = _rectangle(2.0, 10.3, 3.0, 20.2)
    clip = pixels_to_clip(xy, RES).unsqueeze(0)
    frags = ops.rasterize(clip, QUAD, RES)
    with pytest.raises(ValueError, match=r"antialias\(\): color must have shape"):
        antialias(frags.mask.double(), frags, clip)
    with pytest.raises(ValueError, match=r"antialias\(\): clip_pos must have shape"):
        antialias(frags.mask.unsqueeze(-1).double(), frags, clip[:, :3])


def test_a_closed_mesh_comes_closer_to_its_supersampled_mask():
    verts, faces, R, t, K = orbit_scene(2, RES, subdivisions=2, dtype=torch.float64)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    frags = ops.rasterize(clip, faces, RES)
    hard = frags.mask.double()
    smooth = antialias(hard.unsqueeze(-1), frags, clip)[..., 0]
    scale = 8  # the same cameras at 8× the pixels, averaged back down: each pixel's covered area
    K_fine = cameras.fov_intrinsics(40.0, RES[0] * scale, RES[1] * scale, batch=2, dtype=torch.float64)
    fine_clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K_fine, (RES[0] * scale,) * 2)
    fine = ops.rasterize(fine_clip, faces, (RES[0] * scale,) * 2).mask.double()
    area = torch.nn.functional.avg_pool2d(fine.unsqueeze(1), scale).squeeze(1)
    assert (smooth - area).abs().sum() < 0.3 * (hard - area).abs().sum()  # measured: 9.0 against 41.6


def _antialiased_with_grad(clip: torch.Tensor, faces: torch.Tensor, res, **kwargs):
    pos = clip.detach().clone().requires_grad_(True)
    frags = ops.rasterize(pos, faces, res)
    color = torch.cat([frags.mask.unsqueeze(-1).to(pos.dtype), frags.depth.unsqueeze(-1)], dim=-1)
    out = antialias(color, frags, pos, **kwargs)
    out.square().sum().backward()
    return out.detach().cpu(), pos.grad.cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_hops", [2, 64])
def test_the_kernel_walks_as_the_tensor_code_does(monkeypatch, dtype, max_hops, walks):
    if walks == "tensor":
        pytest.skip("compares the two paths once")
    verts, faces, R, t, K = orbit_scene(3, RES, subdivisions=3, dtype=dtype)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, RES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_hops=2 cuts walks short, on both paths alike
        kernel = _antialiased_with_grad(clip, faces, RES, max_hops=max_hops)
        monkeypatch.setattr(_antialias_triton, "supports", lambda device: False)
        tensor = _antialiased_with_grad(clip, faces, RES, max_hops=max_hops)
    torch.testing.assert_close(kernel, tensor, rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_matches_cpu_cuda(walks, monkeypatch):
    """The walk ``walks`` names on CUDA against the tensor walk on the CPU."""
    monkeypatch.setattr(_antialias_triton, "supports", lambda device: walks == "triton" and device.type == "cuda")
    verts, faces, R, t, K = orbit_scene(4, (64, 64), subdivisions=3, dtype=torch.float64)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, (64, 64))
    cpu = _antialiased_with_grad(clip, faces, (64, 64))
    cuda = _antialiased_with_grad(clip.cuda(), faces.cuda(), (64, 64))
    torch.testing.assert_close(cuda, cpu)
