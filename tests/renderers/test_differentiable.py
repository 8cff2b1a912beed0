"""Gradients: gradcheck in float64 for every differentiable op, and a silhouette fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from renderloop.renderers import cameras, depth_map, keypoints, ops, shading, warping
from renderloop.renderers.meshes import icosphere

from .helpers import pixels_to_clip

D = torch.float64


def _tri_clip():
    xy = torch.tensor([[2.31, 1.64], [13.37, 4.23], [5.12, 12.71], [14.19, 14.58]], dtype=D)
    return pixels_to_clip(xy, (16, 16), torch.tensor([1.0, 1.7, 1.3, 2.1], dtype=D)).unsqueeze(0)


FACES = torch.tensor([[0, 1, 2], [1, 3, 2]])


def test_gradcheck_interpolate_torch():
    clip = _tri_clip().requires_grad_(True)
    attr = torch.randn(1, 4, 3, dtype=D, requires_grad=True)
    fn = lambda c, a: ops.interpolate(a, ops.rasterize(c, FACES, (16, 16)))  # noqa: E731
    assert gradcheck(fn, (clip, attr), eps=1e-6, atol=1e-6)


def test_gradcheck_rasterized_depth_torch():
    clip = _tri_clip().requires_grad_(True)
    assert gradcheck(lambda c: ops.rasterize(c, FACES, (16, 16)).depth, (clip,), eps=1e-6, atol=1e-6)


def test_gradcheck_soft_silhouette_torch():
    clip = _tri_clip().requires_grad_(True)
    fn = lambda c: ops.soft_silhouette(c, FACES, (16, 16), sigma=2.0, cutoff=1e-9)  # noqa: E731
    assert gradcheck(fn, (clip,), eps=1e-6, atol=1e-6)


def test_gradcheck_texture_torch():
    tex = torch.randn(1, 5, 6, 2, dtype=D, requires_grad=True)
    uv = (torch.rand(1, 4, 4, 2, dtype=D) * 0.8 + 0.1).requires_grad_(True)
    assert gradcheck(ops.texture, (tex, uv), eps=1e-6, atol=1e-6)


def test_gradcheck_shading_torch():
    verts = (icosphere(0, dtype=D).verts + 0.05 * torch.randn(12, 3, dtype=D)).unsqueeze(0).requires_grad_(True)
    faces = icosphere(0).faces
    light = torch.nn.functional.normalize(torch.tensor([[0.2, -0.4, -1.0]], dtype=D), dim=-1).requires_grad_(True)
    albedo = torch.rand(1, 12, 3, dtype=D, requires_grad=True)

    def fn(v, light, albedo):
        n = shading.vertex_normals(v, faces)
        diffuse = shading.lambertian(n, albedo, light, 0.2, 0.8)
        spec = shading.blinn_phong(n, torch.nn.functional.normalize(-v, dim=-1), light, 8.0, 0.5)
        return diffuse + spec

    assert gradcheck(fn, (verts, light, albedo), eps=1e-6, atol=1e-6)


def _depth_scene(B=1, H=6, W=6):
    y, x = torch.meshgrid(torch.linspace(-1, 1, H, dtype=D), torch.linspace(-1, 1, W, dtype=D), indexing="ij")
    depth = (2.0 - 0.3 * torch.exp(-(x**2 + y**2))).expand(B, H, W).clone()
    K = cameras.fov_intrinsics(50.0, H, W, batch=B, dtype=D)
    return depth, K


def test_gradcheck_depth_map_renderer_torch():
    depth, K = _depth_scene()
    albedo = torch.rand(1, 3, 6, 6, dtype=D, requires_grad=True)
    light = torch.nn.functional.normalize(torch.tensor([[0.3, -0.2, -1.0]], dtype=D), dim=-1)
    angles = torch.tensor([[0.03, 0.08, 0.01]], dtype=D, requires_grad=True)
    depth.requires_grad_(True)

    def fn(depth, albedo, angles):
        R, t = depth_map.view_about_pivot(angles, torch.zeros(1, 3, dtype=D), 2.0)
        return depth_map.render_depth_map(depth, albedo, light, K, R, t).image

    assert gradcheck(fn, (depth, albedo, angles), eps=1e-6, atol=1e-5)


def test_gradcheck_keypoint_projector_torch():
    shapes = torch.randn(20, 5, 3, dtype=D)
    basis = keypoints.fit_pca(shapes, 4)
    coeffs = torch.randn(2, 4, dtype=D, requires_grad=True)
    R = depth_map.euler_to_matrix(torch.tensor([[0.1, 0.5, -0.2], [0.0, -1.0, 0.3]], dtype=D))
    trans = torch.tensor([[0.0, 0.0, 8.0], [0.5, -0.2, 9.0]], dtype=D, requires_grad=True)
    focal = torch.tensor([100.0, 120.0], dtype=D, requires_grad=True)
    centre = torch.tensor([[32.0, 32.0], [30.0, 31.0]], dtype=D)

    def fn(coeffs, trans, focal):
        kp2d, _ = keypoints.project_keypoints(coeffs, basis, R, trans, focal, centre)
        return kp2d, keypoints.gaussian_heatmaps(kp2d / 8, (8, 8), sigma=1.5)

    assert gradcheck(fn, (coeffs, trans, focal), eps=1e-6, atol=1e-6)


def test_gradcheck_warp_torch():
    depth, K = _depth_scene(1, 6, 7)
    depth.requires_grad_(True)
    source = torch.rand(1, 2, 6, 7, dtype=D, requires_grad=True)
    pose = torch.tensor([[0.02, -0.03, 0.01, 0.05, 0.02, 0.01]], dtype=D, requires_grad=True)

    def fn(source, depth, pose):
        R, t = warping.pose_to_rt(pose)
        return warping.warp(source, depth, K, R, t)[0]

    assert gradcheck(fn, (source, depth, pose), eps=1e-6, atol=1e-5)


def test_recovers_translation_from_silhouette_alone_torch():
    mesh = icosphere(2)
    res = (48, 48)
    R, t = cameras.orbit_camera(torch.tensor([0.4]), torch.tensor([0.3]), torch.tensor([4.0]))
    K = cameras.fov_intrinsics(40.0, *res)
    target_shift = torch.tensor([0.35, -0.25, 0.2])

    def silhouette(shift):
        clip = cameras.camera_to_clip(cameras.world_to_camera((mesh.verts + shift)[None], R, t), K, res)
        return ops.soft_silhouette(clip, mesh.faces, res, sigma=2.0)

    target = silhouette(target_shift).detach()
    shift = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([shift], lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        loss = ((silhouette(shift) - target) ** 2).mean()
        loss.backward()
        opt.step()
    # Image-plane components are pinned by the outline; depth only through the silhouette's size.
    assert float(loss.detach()) < 1e-3
    cam_err = (R[0] @ (shift.detach() - target_shift)).abs()
    assert float(cam_err[:2].max()) < 0.03
    assert float(cam_err[2]) < 0.15


def test_interpolate_gradients_reach_vertex_positions_torch():
    clip = _tri_clip().float().requires_grad_(True)
    attr = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    ops.interpolate(attr, ops.rasterize(clip, FACES, (16, 16))).sum().backward()
    assert clip.grad is not None and float(clip.grad.abs().sum()) > 0


@pytest.mark.gpu
def test_soft_silhouette_cuda_matches_cpu_cuda():
    clip = _tri_clip().requires_grad_(True)
    cpu = ops.soft_silhouette(clip, FACES, (16, 16), sigma=2.0)
    gclip = clip.detach().cuda().requires_grad_(True)
    gpu = ops.soft_silhouette(gclip, FACES.cuda(), (16, 16), sigma=2.0)
    torch.testing.assert_close(cpu, gpu.cpu())
    (a,) = torch.autograd.grad(cpu.sum(), clip)
    (b,) = torch.autograd.grad(gpu.sum(), gclip)
    torch.testing.assert_close(a, b.cpu())


def test_soft_silhouette_is_one_inside_and_decays_outside_torch():
    xy = torch.tensor([[4.0, 4.0], [12.0, 4.0], [12.0, 12.0], [4.0, 12.0]])
    sil = ops.soft_silhouette(pixels_to_clip(xy, (16, 16)).unsqueeze(0), torch.tensor([[0, 1, 2], [0, 2, 3]]), (16, 16))
    assert torch.equal(sil[0, 4:12, 4:12], torch.ones(8, 8))  # no seam along the diagonal
    # Centre (12.5, 8.5): 0.5 px from the right edge, sqrt(8) px from the other face (sigma = 1).
    expected = 1 - (1 - math.exp(-0.25)) * (1 - math.exp(-8.0))
    assert math.isclose(float(sil[0, 8, 12]), expected, rel_tol=1e-5)
    assert float(sil[0, 0, 0]) < 1e-3


def test_culled_faces_never_make_nan_gradients_torch():
    # Face 1 has a corner exactly at w = 0 (culled); its neighbours are rendered.
    clip = _tri_clip().clone()
    clip = torch.cat([clip, torch.tensor([[[0.3, 0.2, 0.0, 0.0]]], dtype=D)], dim=1).requires_grad_(True)
    faces = torch.tensor([[0, 1, 2], [1, 4, 2], [1, 3, 2]])
    frags = ops.rasterize(clip, faces, (16, 16))
    attr = torch.rand(5, 2, dtype=D)
    (ops.interpolate(attr, frags).sum() + frags.depth.sum()).backward()
    assert bool(torch.isfinite(clip.grad).all())
    clip.grad = None
    ops.soft_silhouette(clip, faces, (16, 16)).sum().backward()
    assert bool(torch.isfinite(clip.grad).all())
