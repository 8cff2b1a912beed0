"""MeshRenderer, backends and meshes."""

from __future__ import annotations

import pytest
import torch

from renderloop.config import ConfigError
from renderloop.renderers import backends, ops
from renderloop.renderers.meshes import Mesh, icosphere, load_mesh, pad_meshes, torus
from renderloop.renderers.renderer import MeshRenderer, RendererConfig

from .helpers import orbit_scene


def _render(renderer, batch=2, res=(32, 32)):
    verts, faces, R, t, K = orbit_scene(batch, res, subdivisions=2)
    verts = verts.clone().requires_grad_(True)
    colors = torch.full_like(verts, 0.8).requires_grad_(True)
    light = torch.tensor([[0.0, 0.0, -1.0]]).expand(batch, 3)
    return renderer(verts, faces, colors, R, t, K, light), verts, colors


def test_renderer_outputs_and_gradients_torch():
    renderer = MeshRenderer(RendererConfig(height=32, width=32, soft_mask=True))
    out, verts, colors = _render(renderer)
    hard = out.fragments.mask
    assert out.rgb.shape == (2, 32, 32, 3) and out.normals.shape == (2, 32, 32, 3)
    outside = out.mask.detach()[~hard]
    assert bool((out.mask[hard] == 1).all()) and float(outside.min()) >= 0
    assert int(((outside > 0.01) & (outside < 0.99)).sum()) > 20  # a soft band around the outline
    # Headlight on a sphere: the centre faces the light, the rim grazes it.
    centre, rim = out.rgb[0, 16, 16, 0], out.rgb[0][hard[0]][:, 0].min()
    assert float(centre.detach()) > 0.75 and float(rim.detach()) < float(centre.detach())
    assert bool((out.normals[hard][:, 2] < 0.05).all())  # visible normals face the camera
    (out.rgb.sum() + out.mask.sum()).backward()
    assert float(verts.grad.abs().sum()) > 0 and float(colors.grad.abs().sum()) > 0


def test_antialiased_renders_blend_only_the_outline_and_move_it_torch():
    plain, _, _ = _render(MeshRenderer(RendererConfig(height=32, width=32)))
    out, verts, _ = _render(MeshRenderer(RendererConfig(height=32, width=32, antialias=True)))
    mask, hard = out.mask.detach(), out.fragments.mask
    blended = (mask > 0) & (mask < 1)
    assert int(blended.sum()) > 20 and float(mask.min()) >= 0 and float(mask.max()) <= 1

    def near(m):  # pixels with one of m within a 3 × 3 window
        return torch.nn.functional.max_pool2d(m.float().unsqueeze(1), 3, 1, 1).squeeze(1).bool()

    outline = near(hard) & near(~hard)
    assert not bool(blended[~outline].any())  # only pixels next to the outline change
    assert torch.equal(out.rgb.detach()[~outline], plain.rgb.detach()[~outline])
    out.mask.sum().backward()  # the hard mask alone has no gradient w.r.t. positions
    assert float(verts.grad.abs().sum()) > 0


def test_renderer_warmup_and_compile_torch(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    cache = str(tmp_path / "cache")
    cfg = RendererConfig(height=16, width=16, soft_mask=True, compile=True, compile_cache_dir=cache, warmup_batch=2)
    renderer = MeshRenderer(cfg)
    renderer.warmup()
    eager = MeshRenderer(RendererConfig(height=16, width=16, soft_mask=True))
    a, va, _ = _render(renderer, res=(16, 16))
    b, vb, _ = _render(eager, res=(16, 16))
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.mask, b.mask, atol=1e-5, rtol=1e-5)  # compiled soft silhouette too
    (ga,) = torch.autograd.grad(a.mask.sum(), va)
    (gb,) = torch.autograd.grad(b.mask.sum(), vb)
    torch.testing.assert_close(ga, gb, atol=1e-4, rtol=1e-4)
    assert any((tmp_path / "cache" / "inductor").rglob("*"))  # the persistent cache was written


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"height": 0}, "renderer.height"),
        ({"near": 5.0, "far": 1.0}, "renderer.near"),
        ({"sigma": -1.0}, "renderer.sigma"),
        ({"backend": "nope"}, "renderer.backend"),
        ({"warmup_batch": -2}, "renderer.warmup_batch"),
        ({"normals": "phong"}, "renderer.normals"),
    ],
)
def test_renderer_config_errors_name_the_key_torch(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config error at {key}:"):
        RendererConfig(**kwargs)


def test_backend_registry_torch():
    assert backends.get_backend("torch").rasterize is ops.rasterize
    report = backends.backend_report()
    assert report["torch"] == "registered" and "nvdiffrast" in report
    custom = backends.RasterBackend("counting", ops.rasterize, ops.soft_silhouette)
    backends.register_backend(custom)
    try:
        with pytest.raises(ValueError, match="exists"):
            backends.register_backend(custom)
        assert MeshRenderer(RendererConfig(backend="counting")).backend is custom
    finally:
        backends._REGISTRY.pop("counting")
    with pytest.raises(ValueError, match=r"unknown renderer backend 'nope'"):
        backends.get_backend("nope")


def test_meshes_torch(tmp_path):
    sphere = icosphere(2)
    assert sphere.faces.shape == (320, 3) and torch.allclose(sphere.verts.norm(dim=-1), torch.ones(len(sphere.verts)))
    ring = torus(rings=10, sides=6)
    assert ring.faces.shape == (120, 3)
    # Closed and consistently wound: every directed edge appears once, its reverse once.
    edges = torch.cat([sphere.faces[:, [0, 1]], sphere.faces[:, [1, 2]], sphere.faces[:, [2, 0]]])
    assert len({tuple(e) for e in edges.tolist()}) == len(edges)
    assert {tuple(e) for e in edges.tolist()} == {tuple(e) for e in edges.flip(1).tolist()}
    path = tmp_path / "tri.obj"
    path.write_text("v 0 0 0\nv 2 0 0\nv 0 2 0\nf 1 2 3\n")
    mesh = load_mesh(path).normalized()
    assert mesh.faces.tolist() == [[0, 1, 2]] and float(mesh.verts.norm(dim=-1).max()) == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="no mesh file"):
        load_mesh(tmp_path / "missing.obj")
    verts, faces = pad_meshes([Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]])), ring])
    assert verts.shape == (2, 60, 3) and faces.shape == (2, 120, 3) and int(faces[0, 1:].max()) == -1


def test_flat_shading_is_constant_per_face_torch():
    flat = MeshRenderer(RendererConfig(height=32, width=32, normals="face"))
    smooth = MeshRenderer(RendererConfig(height=32, width=32))
    out_flat, _, _ = _render(flat)
    out_smooth, _, _ = _render(smooth)
    frags = out_flat.fragments
    for face in frags.face_id[0].unique()[1:6]:  # pixels of one face share one normal
        normals = out_flat.normals[0][frags.face_id[0] == face]
        torch.testing.assert_close(normals, normals[:1].expand_as(normals))
    assert not torch.allclose(out_flat.rgb, out_smooth.rgb)
    assert torch.equal(out_flat.fragments.mask, out_smooth.fragments.mask)
