"""GANverse3D's inverse-graphics network and its renderer: the template sphere's projected disk and
uniform texture, shape regularizers with known answers, and gradients from the silhouette."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.models.inverse_graphics import InverseGraphicsNet
from renderloop.renderers.cameras import fov_intrinsics, orbit_camera
from renderloop.renderers.meshes import icosphere
from renderloop.renderers.textured import (
    edge_pairs,
    flatten_loss,
    laplacian_loss,
    neighbouring_faces,
    render_textured,
    sphere_uv,
)

S = 64


def _camera(batch: int = 1, distance: float = 4.0):
    R, t = orbit_camera(torch.zeros(batch), torch.zeros(batch), torch.full((batch,), distance))
    return R, t, fov_intrinsics(30.0, S, S, batch=batch)


def test_the_template_sphere_projects_to_its_disk_with_the_texture_colour():
    sphere = icosphere(3)
    net = InverseGraphicsNet(S, sphere.verts, sphere.faces, texture_size=16, width=8, zdim=16)
    verts, tex = net(torch.rand(1, 3, S, S))
    assert torch.equal(verts[0], net.template)  # zero offsets at the start
    R, t, K = _camera()
    colour = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    out = render_textured(verts, net.faces, net.template, colour, R, t, K, (S, S))
    # A unit sphere 4 away: its outline is a circle of angular radius asin(1/4).
    radius_px = K[0, 1, 1] * math.tan(math.asin(0.25))
    assert out.mask.float().sum().item() == pytest.approx(math.pi * radius_px.item() ** 2, rel=0.05)
    inside = out.image[0][:, out.mask[0]]
    assert torch.allclose(inside, colour[0, :, 0, 0, None], atol=1e-5)
    assert (out.soft >= out.mask.float() - 1e-6).all() and out.soft.max() <= 1


def test_sphere_uv_knows_its_answers_and_stays_finite_at_the_poles():
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1e-9, 1.0, 0.0]])
    d.requires_grad_(True)
    uv = sphere_uv(d)
    assert uv[:2].flatten().tolist() == pytest.approx([0.5, 0.5, 0.75, 0.5])  # +z: mid-map; +x: a quarter on
    assert uv[2, 1].item() == pytest.approx(0.0, abs=1e-3) and uv[3, 1].item() == pytest.approx(1.0, abs=1e-3)
    uv.sum().backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().max() < 1e4


def test_shape_regularizers_know_their_answers():
    sphere = icosphere(2)
    edges = edge_pairs(sphere.faces)
    assert len(edges) == 3 * len(sphere.faces) // 2  # a closed triangle mesh
    verts = sphere.verts[None]
    assert laplacian_loss(2 * verts, edges).item() == pytest.approx(4 * laplacian_loss(verts, edges).item(), rel=1e-5)
    assert laplacian_loss(verts + 3.0, edges).item() == pytest.approx(laplacian_loss(verts, edges).item(), rel=1e-5)
    pairs = neighbouring_faces(sphere.faces)
    assert len(pairs) == len(edges)  # one pair of faces per edge
    square = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert flatten_loss(square, faces, neighbouring_faces(faces)).item() == pytest.approx(0.0, abs=1e-7)
    folded = square.clone()
    folded[0, 3] = torch.tensor([0.0, 0.0, 1.0])  # the second face now stands at 90° to the first
    cos = torch.nn.functional.cosine_similarity(torch.tensor([0.0, 0, 1]), torch.tensor([1.0, -1, 0]) / 2**0.5, dim=0)
    assert flatten_loss(folded, faces, neighbouring_faces(faces)).item() == pytest.approx(
        (1 - cos.item()) ** 2, abs=1e-6
    )


def test_the_silhouette_pulls_the_offsets():
    sphere = icosphere(2)
    net = InverseGraphicsNet(S, sphere.verts, sphere.faces, texture_size=8, width=8, zdim=16)
    verts, tex = net(torch.rand(2, 3, S, S))
    R, t, K = _camera(2)
    out = render_textured(verts, net.faces, net.template, tex, R, t, K, (S, S))
    target = torch.zeros_like(out.soft)
    (out.soft - target).abs().mean().backward()  # shrink towards nothing
    assert net.offsets.weight.grad.abs().sum() > 0 and net.offsets.bias.grad.abs().sum() > 0
