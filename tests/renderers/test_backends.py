"""The nvdiffrast and pytorch3d backends and PyTorch3D interop.

Where a library is installed its backend is compared with ours: face ids, barycentrics, depth and
gradients. The nvdiffrast adapter's own bookkeeping (range mode, face-id mapping, corner order)
is also checked everywhere against a stand-in module that answers as nvdiffrast does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from renderloop.config import ConfigError
from renderloop.renderers import backends, cameras, ops
from renderloop.renderers.meshes import icosphere, pad_meshes, torus
from renderloop.renderers.renderer import MeshRenderer, RendererConfig

from .helpers import orbit_scene

RES = (48, 40)
HAS_PYTORCH3D = importlib.util.find_spec("pytorch3d") is not None
HAS_NVDIFFRAST = importlib.util.find_spec("nvdiffrast") is not None


def _scene(dtype=torch.float64):
    """Two different meshes (padded faces), one pushed partly behind the near plane."""
    verts, faces = pad_meshes([icosphere(3), torus(rings=24, sides=12)])
    verts = verts.to(dtype) * torch.tensor([1.0, 0.8], dtype=dtype).view(2, 1, 1)
    R, t = cameras.orbit_camera(torch.tensor([0.3, 2.0]), torch.tensor([0.2, 0.5]), torch.tensor([3.0, 1.05]))
    K = cameras.fov_intrinsics(45.0, RES[0], RES[1], batch=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R.to(dtype), t.to(dtype)), K.to(dtype), RES, near=0.3)
    return clip, faces


def _loss(frags, weights):
    return (frags.bary * weights).sum() + frags.depth.sum()


# ---- a stand-in for nvdiffrast: its API and output layout, computed by ops.rasterize ----


def _fake_nvdiffrast(calls: list):
    def rasterize(glctx, pos, tri, resolution, ranges=None, grad_db=True):
        assert pos.dim() == 2 and tri.dtype == torch.int32 and ranges.device.type == "cpu"
        calls.append(len(tri))
        out = []
        for start, count in ranges.tolist():
            frags = ops.rasterize(pos[None], tri[start : start + count][None].long(), tuple(resolution))
            u, v = frags.bary[..., 0], frags.bary[..., 1]
            triangle = torch.where(frags.mask, frags.face_id + start + 1, 0)  # global ids, as in range mode
            out.append(torch.stack([u, v, frags.depth, triangle.to(u.dtype)], -1))
        return torch.cat(out), None

    module = types.ModuleType("nvdiffrast.torch")
    module.rasterize = rasterize
    module.RasterizeCudaContext = lambda device=None: object()
    package = types.ModuleType("nvdiffrast")
    package.torch = module
    return package, module


@pytest.fixture
def nvdiffrast_stand_in(monkeypatch):
    calls: list = []
    package, module = _fake_nvdiffrast(calls)
    monkeypatch.setitem(sys.modules, "nvdiffrast", package)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", module)
    monkeypatch.delitem(sys.modules, "renderloop.renderers.nvdiffrast_backend", raising=False)
    importlib.import_module("renderloop.renderers.nvdiffrast_backend")
    yield backends.get_backend("nvdiffrast"), calls
    backends._REGISTRY.pop("nvdiffrast", None)
    sys.modules.pop("renderloop.renderers.nvdiffrast_backend", None)


@pytest.mark.parametrize("cull", [False, True])
def test_the_nvdiffrast_adapter_returns_our_fragments_and_gradients(nvdiffrast_stand_in, cull):
    backend, calls = nvdiffrast_stand_in
    clip, faces = _scene(torch.float32)  # nvdiffrast takes float32
    ours = ops.rasterize(clip.requires_grad_(True), faces, RES, cull_backfaces=cull)
    theirs = backend.rasterize(clip, faces, RES, cull_backfaces=cull)
    drawn = ops.drawable_faces(clip, faces, RES, cull)
    assert calls == [int(drawn.sum())] and int(drawn.sum()) < int((faces >= 0).all(-1).sum())  # some culled
    assert torch.equal(theirs.face_id, ours.face_id) and ours.mask.any(-1).any(-1).all()
    torch.testing.assert_close(theirs.bary, ours.bary)
    torch.testing.assert_close(theirs.depth, ours.depth)
    weights = torch.randn_like(ours.bary)
    (g_ours,) = torch.autograd.grad(_loss(ours, weights), clip)
    (g_theirs,) = torch.autograd.grad(_loss(theirs, weights), clip)
    torch.testing.assert_close(g_theirs, g_ours, atol=2e-4, rtol=1e-4)  # float32, differently associated


def test_an_image_with_no_drawable_face_is_empty(nvdiffrast_stand_in):
    backend, calls = nvdiffrast_stand_in
    clip, faces = _scene()
    clip = clip.clone().requires_grad_(True)
    behind = clip * torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=clip.dtype)  # every vertex behind the eye
    frags = backend.rasterize(behind, faces, RES)
    assert calls == [] and not frags.mask.any() and frags.depth.abs().sum() == 0
    (grad,) = torch.autograd.grad(frags.depth.sum(), clip)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_an_adapter_refuses_what_ours_refuses_before_calling_its_library(nvdiffrast_stand_in):
    backend, calls = nvdiffrast_stand_in
    clip, faces = _scene()
    for bad in ((clip[..., :3], faces, RES), (clip, faces, (0, 8)), (clip, faces + 10**6, RES)):
        with pytest.raises(ValueError, match=r"rasterize\(\)"):
            ops.rasterize(*bad)
        with pytest.raises(ValueError, match=r"rasterize\(\)"):
            backend.rasterize(*bad)
    assert calls == []


def test_the_nvdiffrast_adapter_refuses_a_batch_beyond_int32_before_any_kernel(nvdiffrast_stand_in):
    from renderloop.renderers.nvdiffrast_backend import check_limits

    check_limits(64, 2_562, 5_120)
    with pytest.raises(ValueError, match="int32, and this batch has 2,147,483,648"):
        check_limits(2**16, 2**15, 10)  # 2**31 vertices
    with pytest.raises(ValueError, match="faces with int32"):
        check_limits(2**11, 3, 2**20)


@pytest.mark.parametrize("name", ["nvdiffrast", "pytorch3d"])
def test_a_missing_library_is_refused_by_name_before_any_work(monkeypatch, name):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *_: None)
    monkeypatch.delitem(backends._REGISTRY, name, raising=False)
    with pytest.raises(ValueError, match=rf"backend '{name}' needs the {name} package, which is not installed"):
        backends.get_backend(name)
    with pytest.raises(ConfigError, match=rf"renderer.backend:.*{name} package"):
        RendererConfig(backend=name)
    assert backends.backend_report()[name] == "not installed"


def test_camera_depth_from_barycentrics_knows_its_answer():
    faces = torch.tensor([[[-1, -1, -1], [0, 1, 2]]])  # a padding row first
    clip = torch.tensor([[[0.0, 0, 0, 2], [0, 0, 0, 4], [0, 0, 0, 6]]])
    face_id = torch.tensor([[[1, -1]]])
    bary = torch.tensor([[[[0.5, 0.25, 0.25], [0.0, 0.0, 0.0]]]])
    assert ops.camera_depth(clip, faces, face_id, bary).tolist() == [[[3.5, 0.0]]]


def test_the_textured_and_depth_map_renderers_draw_through_a_given_backend():
    from renderloop.renderers.depth_map import reproject
    from renderloop.renderers.textured import render_textured

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return ops.rasterize(*args, **kwargs)

    backend = backends.RasterBackend("counting", counting, ops.soft_silhouette)
    image, depth = torch.rand(2, 3, 8, 8), torch.full((2, 8, 8), 2.0)
    K = cameras.fov_intrinsics(40.0, 8, 8, batch=2)
    R, t = torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3)
    through, ours = reproject(image, depth, K, R, t, backend), reproject(image, depth, K, R, t)
    assert all(torch.equal(a, b) for a, b in zip(through, ours, strict=True))
    sphere = icosphere(1)
    R, t = cameras.orbit_camera(torch.zeros(2), torch.zeros(2), torch.full((2,), 3.0))
    drawn = render_textured(sphere.verts.expand(2, -1, -1), sphere.faces, sphere.verts, torch.rand(2, 3, 4, 4), R, t, K,
                            (8, 8), backend=backend)  # fmt: skip
    assert len(calls) == 2 and drawn.mask.any()


# ---- the real libraries, where installed ----


def _interior(face_id):
    """Pixels whose 3×3 neighbourhood shows one face: no edge, so no tie rule, decides them."""
    f = face_id.float()[:, None]
    same = (torch.nn.functional.max_pool2d(f, 3, 1, 1) == f) & (-torch.nn.functional.max_pool2d(-f, 3, 1, 1) == f)
    return same[:, 0] & (face_id >= 0)


def _agreement(a, b):
    both = a.mask | b.mask
    return float((a.face_id == b.face_id)[both].float().mean())


@pytest.mark.skipif(not HAS_PYTORCH3D, reason="needs pytorch3d")
@pytest.mark.parametrize("cull", [False, True])
def test_pytorch3d_backend_agrees_with_ours(cull):
    backend = backends.get_backend("pytorch3d")
    clip, faces = _scene(torch.float32)
    clip.requires_grad_(True)
    ours = ops.rasterize(clip, faces, RES, cull_backfaces=cull)
    theirs = backend.rasterize(clip, faces, RES, cull_backfaces=cull)
    assert _agreement(ours, theirs) > 0.995
    same = (ours.face_id == theirs.face_id) & ours.mask
    torch.testing.assert_close(theirs.bary[same], ours.bary[same], atol=2e-4, rtol=0)
    torch.testing.assert_close(theirs.depth[same], ours.depth[same], atol=2e-4, rtol=1e-4)
    weights = torch.randn_like(ours.bary) * same[..., None]
    (g_ours,) = torch.autograd.grad((ours.bary * weights).sum() + (ours.depth * same).sum(), clip)
    (g_theirs,) = torch.autograd.grad((theirs.bary * weights).sum() + (theirs.depth * same).sum(), clip)
    torch.testing.assert_close(g_theirs, g_ours, atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(not HAS_PYTORCH3D, reason="needs pytorch3d")
def test_a_mesh_renderer_runs_on_pytorch3d():
    verts, faces, R, t, K = orbit_scene(2, (32, 32), subdivisions=2)
    colors = torch.rand(verts.shape[1], 3)
    light = torch.tensor([[0.0, 0.0, -1.0]]).expand(2, 3)
    ours = MeshRenderer(RendererConfig(height=32, width=32))(verts, faces, colors, R, t, K, light)
    theirs = MeshRenderer(RendererConfig(height=32, width=32, backend="pytorch3d"))(
        verts, faces, colors, R, t, K, light
    )
    assert float((ours.mask == theirs.mask).float().mean()) > 0.995
    close = (ours.rgb - theirs.rgb).abs().amax(1) < 1e-3
    assert float(close.float().mean()) > 0.99


@pytest.mark.skipif(not HAS_PYTORCH3D, reason="needs pytorch3d")
def test_pytorch3d_cameras_and_meshes_convert_both_ways():
    from pytorch3d.renderer import PerspectiveCameras

    from renderloop.renderers.pytorch3d_interop import (
        cameras_from_pytorch3d,
        cameras_to_pytorch3d,
        meshes_from_pytorch3d,
        meshes_to_pytorch3d,
    )

    H, W = 30, 50
    R, t = cameras.orbit_camera(torch.tensor([0.4, -1.2]), torch.tensor([0.3, 0.1]), torch.tensor([3.0, 4.0]))
    K = cameras.fov_intrinsics(40.0, H, W, batch=2)
    K[:, 0, 2] += 3.0  # an off-centre principal point
    points = torch.randn(2, 20, 3) * 0.5
    ours = cameras.camera_to_pixel(cameras.world_to_camera(points, R, t), K)
    theirs = cameras_to_pytorch3d(R, t, K, (H, W)).transform_points_screen(points, image_size=(H, W))[..., :2]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    back = cameras_from_pytorch3d(cameras_to_pytorch3d(R, t, K, (H, W)), (H, W))
    for a, b in zip(back, (R, t, K), strict=True):
        torch.testing.assert_close(a, b)
    ndc = PerspectiveCameras(focal_length=2.0, principal_point=((0.1, -0.2),), R=R[:1], T=t[:1])
    R1, t1, K1 = cameras_from_pytorch3d(ndc, (H, W))
    ours = cameras.camera_to_pixel(cameras.world_to_camera(points[:1], R1, t1), K1)
    theirs = ndc.transform_points_screen(points[:1], image_size=(H, W))[..., :2]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    verts, faces = pad_meshes([icosphere(1), torus(rings=6, sides=4)])
    again = meshes_from_pytorch3d(meshes_to_pytorch3d(verts, faces))
    torch.testing.assert_close(again[0], verts)
    assert torch.equal(again[1], faces)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["nvdiffrast", "pytorch3d"])
def test_gpu_backends_agree_with_ours_cuda(name):
    if not {"nvdiffrast": HAS_NVDIFFRAST, "pytorch3d": HAS_PYTORCH3D}[name]:
        pytest.skip(f"needs {name}")
    backend = backends.get_backend(name)
    clip, faces = _scene(torch.float32)
    clip = clip.cuda().requires_grad_(True)
    ours = ops.rasterize(clip, faces.cuda(), RES)
    theirs = backend.rasterize(clip, faces.cuda(), RES)
    # Edge pixels follow each library's own tie rule (a third of this small image is edge); away
    # from edges the two must agree exactly.
    interior = _interior(ours.face_id)
    assert torch.equal(ours.face_id[interior], theirs.face_id[interior])
    assert float((ours.mask == theirs.mask).float().mean()) > 0.995 and _agreement(ours, theirs) > 0.98
    same = (ours.face_id == theirs.face_id) & ours.mask
    torch.testing.assert_close(theirs.bary[same], ours.bary[same], atol=1e-4, rtol=0)
    weights = torch.randn_like(ours.bary) * same[..., None]
    (g_ours,) = torch.autograd.grad((ours.bary * weights).sum(), clip)
    (g_theirs,) = torch.autograd.grad((theirs.bary * weights).sum(), clip)
    assert float((g_theirs - g_ours).norm() / g_ours.norm()) < 1e-3
