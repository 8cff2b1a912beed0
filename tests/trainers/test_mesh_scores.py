"""Mesh scores with known answers: a mesh against itself, against a shifted copy, against a
larger copy (scale-normalized away); and the simulator's true meshes are what it renders."""

from __future__ import annotations

import torch

from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.renderers.cameras import camera_to_clip, world_to_camera
from renderloop.renderers.meshes import icosphere
from renderloop.renderers.ops import rasterize
from renderloop.trainers.mesh_scores import chamfer_fscore, distances, normalized, sample_surface


def test_scores_know_their_answers():
    sphere = icosphere(3)
    gen = torch.Generator().manual_seed(0)
    points = sample_surface(sphere.verts[None], sphere.faces, 4000, gen)
    assert (points.norm(dim=-1) <= 1 + 1e-5).all() and (points.norm(dim=-1) > 0.98).all()  # on the surface
    same, f_same = chamfer_fscore(points, points)
    assert same.item() == 0 and f_same.item() == 1
    other = sample_surface(sphere.verts[None], sphere.faces, 4000, gen)
    whole, chunked = chamfer_fscore(points, other), chamfer_fscore(points, other, chunk=999)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])  # chunks change nothing
    shifted = points + torch.tensor([0.1, 0.0, 0.0])
    far, f_far = chamfer_fscore(points, shifted, tau=0.05)
    # A unit sphere moved by d lies |d cos θ| from the original: d / 2 on average, plus the gaps
    # between samples (about 0.02 at 4,000 points).
    assert 0.05 <= far.item() <= 0.05 + 0.03 and f_far.item() < 0.7
    # The GPU's way (difference vectors) and the CPU's (cdist's direct kernel) agree, 0 for the same point.
    pair = torch.cat([points[:, :500], other[:, :100]], dim=1)
    by_differences, by_cdist = distances(pair, points, cdist=False), distances(pair, points, cdist=True)
    assert torch.allclose(by_differences, by_cdist, atol=1e-6) and (by_differences[0, :500].amin(1) == 0).all()
    bigger = normalized(points * 3 + 1)
    assert torch.allclose(bigger, normalized(points), atol=1e-5)  # size and place normalized away


def test_the_simulators_true_meshes_are_what_it_renders():
    sim = Simulator(SimulatorConfig(category="vehicle", object_seeds="test", resolution=32, batch_size=2,
                                    num_parts=10, subdivisions=2, azimuth_deg=(0.0, 360.0)))  # fmt: skip
    b = sim.generate(0, 0)
    verts, faces = sim.category_meshes(b["object_seed"])
    frags = rasterize(camera_to_clip(world_to_camera(verts, b["R"], b["t"]), b["K"], (32, 32)), faces, (32, 32))
    agree = (frags.mask == b["mask"].bool()).float().mean()
    assert agree > 0.99
