"""Simulator: deterministic per seed, labels consistent with images and each other."""

from __future__ import annotations

import pytest
import torch

from renderloop.config import ConfigError
from renderloop.datasets.simulator import Simulator, SimulatorConfig


@pytest.fixture(scope="module")
def sim():
    return Simulator(SimulatorConfig(resolution=48, batch_size=8, views=2))


def test_deterministic_per_seed_and_batch(sim):
    a, b, c = sim.generate(5, 3), sim.generate(5, 3), sim.generate(5, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["rgb"], c["rgb"])


def test_mask_is_exactly_where_the_background_does_not_show(sim, monkeypatch):
    renders = []
    for value in (0.0, 1.0):
        monkeypatch.setattr(sim, "_background", lambda gen, B, res, v=value: torch.full((B, res, res, 3), v))
        renders.append(sim.generate(1, 0))
    changed = (renders[0]["rgb"] != renders[1]["rgb"]).any(1)
    assert torch.equal(changed, ~renders[0]["mask"])
    assert float(renders[0]["mask"].float().mean()) > 0.1


def test_labels_agree_with_each_other(sim):
    b = sim.generate(2, 0)
    m = b["mask"]
    assert torch.equal(b["depth"] > 0, m) and torch.equal(b["seg"] > 0, m)
    assert torch.equal(b["normal"].abs().sum(-1) > 0, m)
    assert int(b["seg"].max()) <= sim.config.num_parts
    # kp2d is the projection of kp3d.
    proj = b["kp3d"] @ b["K"].transpose(1, 2)
    torch.testing.assert_close(b["kp2d"], proj[..., :2] / proj[..., 2:], rtol=1e-5, atol=1e-4)


def test_depth_reprojects_to_keypoints(sim):
    res = sim.config.resolution
    seen = behind = total = 0
    for b, i in ((sim.generate(3, k), i) for k in range(3) for i in range(sim.config.batch_size)):
        for (u, v), z in zip(b["kp2d"][i], b["kp3d"][i, :, 2], strict=True):
            if not (0 <= u < res and 0 <= v < res):
                continue
            total += 1
            d = float(b["depth"][i, int(v), int(u)])
            if d > 0 and abs(d - z) < 0.05 * z:
                seen += 1  # a visible keypoint: the depth map passes through it
            if d > z * 1.05:
                behind += 1  # the rendered surface would be behind the keypoint: impossible
    # About half the keypoints face away from the camera or are occluded.
    assert total > 60 and seen / total > 0.2 and behind <= 0.05 * total


def test_multiview_groups_share_the_object(sim):
    b = sim.generate(4, 0)
    assert torch.equal(b["group"][0::2], b["group"][1::2]) and b["view"].tolist()[:4] == [0, 1, 0, 1]
    world = (b["kp3d"] - b["t"].unsqueeze(1)) @ b["R"]  # R^T (x - t), row-vector form
    torch.testing.assert_close(world[0::2], world[1::2], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(b["R"][0::2], b["R"][1::2])  # different cameras


def test_real_like_style_differs_but_keeps_labels():
    plain = Simulator(SimulatorConfig(resolution=32, batch_size=4)).generate(9, 0)
    real = Simulator(SimulatorConfig(resolution=32, batch_size=4, style="real_like")).generate(9, 0)
    assert torch.equal(plain["mask"], real["mask"]) and torch.equal(plain["depth"], real["depth"])
    assert float((plain["rgb"] - real["rgb"]).abs().mean()) > 0.02


def test_loaded_meshes_render_with_labels(tmp_path):
    path = tmp_path / "tetra.off"
    path.write_text("OFF\n4 4 0\n1 1 1\n-1 -1 1\n-1 1 -1\n1 -1 -1\n3 0 1 2\n3 0 3 1\n3 0 2 3\n3 1 3 2\n")
    sim = Simulator(
        SimulatorConfig(resolution=32, batch_size=4, shapes=["mesh", "superquadric"], mesh_paths=[str(path)])
    )
    b = sim.generate(0, 0)
    assert float(b["mask"].float().mean()) > 0.05 and torch.equal(b["depth"] > 0, b["mask"])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"style": "cartoon"}, "source.style"),
        ({"shapes": ["teapot"]}, "source.shapes"),
        ({"shapes": ["mesh"]}, "source.mesh_paths"),
        ({"views": 3, "batch_size": 8}, "source.views"),
        ({"distance": (0.5, 2.0)}, "source.distance"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config error at {key}"):
        SimulatorConfig(**kwargs)


def test_simulator_renders_debian_meshes(tmp_path):
    from tests.debian_data import cgal_mesh, debian_file

    paths = [
        cgal_mesh("bunny00.off", tmp_path),
        cgal_mesh("cow.off", tmp_path),
        debian_file("/usr/share/assimp/models/OBJ/spider.obj"),
    ]
    sim = Simulator(SimulatorConfig(resolution=48, batch_size=6, shapes=["mesh"], mesh_paths=[str(p) for p in paths]))
    b = sim.generate(0, 0)
    coverage = b["mask"].float().mean((1, 2))
    assert bool((coverage > 0.02).all()) and torch.equal(b["depth"] > 0, b["mask"])
    assert int(b["seg"].amax()) > 1  # several parts on real meshes


@pytest.mark.gpu
def test_simulator_on_cuda_is_deterministic_with_consistent_labels_cuda():
    sim = Simulator(SimulatorConfig(resolution=64, batch_size=8, style="real_like", views=2), "cuda")
    a, b = sim.generate(7, 2), sim.generate(7, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["depth"] > 0, a["mask"]) and torch.equal(a["seg"] > 0, a["mask"])
    samples = sim.to_samples(a, list(range(8)), [f"k{i}" for i in range(8)])
    assert samples[0]["rgb.png"].shape == (64, 64, 3)


def test_random_rotations_are_proper_and_spread():
    from renderloop.datasets.shapes import random_rotation

    R = random_rotation(2000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2000, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2000), atol=1e-5, rtol=0)
    # Uniform on SO(3): each axis maps to a uniform direction, with mean near zero.
    assert float(R[:, :, 2].mean(0).abs().max()) < 0.06
