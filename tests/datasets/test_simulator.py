"""Simulator: deterministic per seed, labels consistent with images and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from renderloop.config import ConfigError
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.renderers.depth_map import depth_to_points
from renderloop.renderers.warping import warp
from renderloop.trainers.aign.sfm import relative_motion


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
        ({"view_step_deg": -1.0, "views": 2}, "source.view_step_deg"),
        ({"view_step_deg": math.nan, "views": 2}, "source.view_step_deg"),
        ({"view_step_deg": 5.0}, "source.view_step_deg"),  # views = 1: no sequence to step along
        ({"view_step_distance": 0.1, "views": 2}, "source.view_step_distance"),  # needs view_step_deg
        ({"view_step_distance": -0.1, "view_step_deg": 5.0, "views": 2}, "source.view_step_distance"),
        ({"backdrop_radius": 3.0}, "source.backdrop_radius"),  # inside the cameras' range
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


# |sum| of each tensor of generate(11, 2) before camera sequences existed: defaults keep the stream.
STREAM_BEFORE_SEQUENCES = {
    "synthetic": {"rgb": 6297.5897, "depth": 5378.8961, "normal": 3583.8717, "mask": 2373.0, "seg": 8346.0,
                  "azimuth": 12.0456, "elevation": 1.7473, "distance": 11.8512, "light": 5.7824,
                  "ambient": 1.7209, "diffuse": 2.9256, "kp2d": 1110.2881},
    "real_like": {"rgb": 5639.26, "depth": 5378.8961, "light": 5.7824},
}  # fmt: skip


@pytest.mark.parametrize("style", ["synthetic", "real_like"])
def test_default_stream_is_unchanged_by_sequences(style):
    cfg = {"resolution": 32, "batch_size": 4, "views": 2, "subdivisions": 2, "style": style}
    b = Simulator(SimulatorConfig(**cfg)).generate(11, 2)
    sums = {k: round(float(b[k].double().abs().sum()), 4) for k in STREAM_BEFORE_SEQUENCES[style]}
    assert sums == pytest.approx(STREAM_BEFORE_SEQUENCES[style], rel=1e-5)
    explicit = Simulator(SimulatorConfig(**cfg, view_step_deg=0.0, view_step_distance=0.0)).generate(11, 2)
    assert all(torch.equal(b[k], explicit[k]) for k in b)
    assert SimulatorConfig(**cfg).digest() == SimulatorConfig(**cfg, view_step_deg=0.0).digest()


def _sequences():
    """Two objects, each seen by a sequence of three cameras."""
    cfg = SimulatorConfig(
        resolution=32, batch_size=6, views=3, subdivisions=2, view_step_deg=10.0, view_step_distance=0.2
    )
    return cfg, Simulator(cfg).generate(6, 1)


def test_sequence_cameras_take_small_steps():
    cfg, b = _sequences()
    V, s = cfg.views, math.radians(cfg.view_step_deg)
    assert b["group"].tolist() == [2, 2, 2, 3, 3, 3] and b["view"].tolist() == [0, 1, 2, 0, 1, 2]
    centre = -(b["t"].unsqueeze(1) @ b["R"]).squeeze(1).view(-1, V, 3)  # -R^T t, (N, V, 3)
    cos = torch.nn.functional.cosine_similarity(centre[:, 1:], centre[:, :-1], dim=-1)
    angle = torch.acos(cos.clamp(max=1))
    # A straight step in (elevation, azimuth) is at least as long as the arc between the centres.
    assert bool((angle > 1e-3).all()) and bool((angle <= math.hypot(s, s / 2) + 1e-4).all())
    dist = b["distance"].view(-1, V)
    assert bool(((dist[:, 1:] - dist[:, :-1]).abs() <= cfg.view_step_distance + 1e-6).all())
    assert bool((dist >= cfg.distance[0]).all()) and bool((dist <= cfg.distance[1]).all())
    el = b["elevation"].rad2deg()
    assert bool((el >= cfg.elevation_deg[0] - 1e-4).all()) and bool((el <= cfg.elevation_deg[1] + 1e-4).all())
    torch.testing.assert_close(centre.norm(dim=-1), dist)


def test_sequence_views_share_world_light_shading_and_background():
    cfg, b = _sequences()
    V = cfg.views
    world_light = (b["light"].unsqueeze(1) @ b["R"]).view(-1, V, 3)  # R^T l per view
    torch.testing.assert_close(world_light, world_light[:, :1].expand_as(world_light), atol=1e-6, rtol=0)
    assert not torch.allclose(b["light"][0], b["light"][1])  # camera-frame light turns with the camera
    for key in ("ambient", "diffuse"):
        assert torch.equal(b[key].view(-1, V), b[key][::V, None].expand(-1, V))
    rgb = b["rgb"].permute(0, 2, 3, 1).reshape(-1, V, cfg.resolution**2, 3)  # (N, V, H * W, 3)
    background = ~b["mask"].view(-1, V, cfg.resolution**2)
    for group, seen in zip(rgb, background, strict=True):
        colours = group[seen]  # every background pixel of every view of the group
        assert len(colours) > 100 and torch.equal(colours, colours[:1].expand_as(colours))
    assert not torch.equal(rgb[0][background[0]][0], rgb[1][background[1]][0])


def _warp_error(b, R_rel, t_rel, i, j, selected=None):
    """Mean |rgb_i - warp(rgb_j)| over pixels that are object in view i and visible in view j."""
    d1, K = b["depth"][i], b["K"][i]
    source = torch.cat([b["rgb"][j], b["mask"][j].unsqueeze(1).float(), b["depth"][j].unsqueeze(1)], 1)
    warped, valid = warp(source, d1, K, R_rel, t_rel)
    z = (depth_to_points(d1, K).flatten(1, 2) @ R_rel.transpose(1, 2) + t_rel.unsqueeze(1))[..., 2].view_as(d1)
    visible = (valid[:, 0] > 0) & (warped[:, 3] > 0.999) & ((warped[:, 4] - z).abs() < 0.02 * z)  # not occluded
    selected = b["mask"][i] & visible if selected is None else selected
    return float((warped[:, :3] - b["rgb"][i]).abs().mean(1)[selected].mean()), selected


def test_warping_a_sequence_frame_with_the_true_pose_reproduces_the_previous_frame():
    cfg = SimulatorConfig(resolution=48, batch_size=8, views=2, view_step_deg=8.0, view_step_distance=0.1)
    b = Simulator(cfg).generate(0, 0)
    i, j = slice(0, None, 2), slice(1, None, 2)  # view 1 (target) and view 2 (source) of each group
    R1, t1, R2, t2 = b["R"][i], b["t"][i], b["R"][j], b["t"][j]
    # warp() takes the target→source transform x_2 = R_rel x_1 + t_rel, from x_k = R_k x_world + t_k.
    R_rel = R2 @ R1.transpose(1, 2)
    t_rel = t2 - (R_rel @ t1.unsqueeze(-1)).squeeze(-1)
    true_err, selected = _warp_error(b, R_rel, t_rel, i, j)
    assert int(selected.sum()) > 0.8 * int(b["mask"][i].sum())  # most of the object is seen twice
    assert true_err < 0.02  # about 0.006: bilinear resampling of textures
    identity = torch.eye(3).expand_as(R_rel)
    wrong_err, _ = _warp_error(b, identity, torch.zeros_like(t_rel), i, j, selected)
    assert wrong_err > 4 * true_err  # about 0.033


def test_backdrop_fills_the_depth_and_leaves_the_object_as_it_was():
    cfg = {"resolution": 32, "batch_size": 6, "views": 3, "subdivisions": 2, "view_step_deg": 8.0}
    plain = Simulator(SimulatorConfig(**cfg)).generate(3, 1)
    b = Simulator(SimulatorConfig(**cfg, backdrop_radius=6.0)).generate(3, 1)
    mask = b["mask"]
    for key in ("mask", "seg", "kp2d", "R", "t", "light"):  # the backdrop's draws come after all others
        assert torch.equal(b[key], plain[key]), key
    assert torch.equal(b["depth"][mask], plain["depth"][mask]) and bool((b["depth"] > 0).all())
    rgb, plain_rgb = b["rgb"].permute(0, 2, 3, 1), plain["rgb"].permute(0, 2, 3, 1)
    assert torch.equal(rgb[mask], plain_rgb[mask]) and rgb[~mask].std(0).min() > 0.02  # textured
    # Background pixels lie on the sphere, in the world frame.
    points = depth_to_points(b["depth"], b["K"]).flatten(1, 2)
    world = ((points - b["t"].unsqueeze(1)) @ b["R"]).norm(dim=-1)
    torch.testing.assert_close(world[~mask.flatten(1)], torch.full_like(world[~mask.flatten(1)], 6.0))
    assert SimulatorConfig(**cfg).digest() == SimulatorConfig(**cfg, backdrop_radius=0.0).digest()
    assert SimulatorConfig(**cfg).digest() != SimulatorConfig(**cfg, backdrop_radius=6.0).digest()


def test_the_backdrop_warps_with_the_camera_motion():
    cfg = SimulatorConfig(resolution=48, batch_size=8, views=2, view_step_deg=8.0, backdrop_radius=6.0)
    b = Simulator(cfg).generate(0, 0)
    i, j = slice(0, None, 2), slice(1, None, 2)
    R_rel, t_rel = relative_motion(b["R"], b["t"])
    backdrop, d1, K = ~b["mask"][i], b["depth"][i], b["K"][i]
    warped, valid = warp(torch.cat([b["rgb"][j], b["mask"][j].unsqueeze(1).float()], 1), d1, K, R_rel, t_rel)
    clear = backdrop & (valid[:, 0] > 0) & (warped[:, 3] < 1e-3)  # backdrop in both frames
    true_err = float((warped[:, :3] - b["rgb"][i]).abs().mean(1)[clear].mean())
    identity, zero = torch.eye(3).expand_as(R_rel), torch.zeros_like(t_rel)
    still, _ = warp(b["rgb"][j], d1, K, identity, zero)
    still_err = float((still - b["rgb"][i]).abs().mean(1)[clear].mean())
    # About 0.008 against 0.033: bilinear resampling of the texture is what is left.
    assert int(clear.sum()) > 0.2 * int(backdrop.sum()) and true_err < 0.4 * still_err, (true_err, still_err)


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


def test_columns_hook_writes_the_shards_the_per_sample_path_writes(sim, tmp_path):
    """``to_columns`` (the producers' fast path) and ``to_samples`` mean the same samples: row i of
    every column is sample i, and a producer writes byte-identical shards through either."""
    from renderloop.datasets.ledger import Ledger
    from renderloop.datasets.producer import Producer
    from renderloop.datasets.storage import Storage

    batch, keys, seeds = sim.generate(3, 0), [f"k{i}" for i in range(8)], list(range(8))
    columns, samples = sim.to_columns(batch, seeds, keys), sim.to_samples(batch, seeds, keys)
    assert set(columns) == set(samples[0])
    for i, sample in enumerate(samples):
        assert sample["__key__"] == columns["__key__"][i] and sample["meta.json"] == columns["meta.json"][i]
        for name in ("rgb.png", "mask.png", "seg.png", "depth.npy", "normal.npy", "kp3d.npy"):
            assert np.array_equal(sample[name], columns[name][i]), name
        assert isinstance(sample["view.txt"], int) and sample["view.txt"] == columns["view.txt"][i]
        assert torch.equal(sample["cam.json"]["R"], columns["cam.json"]["R"][i])

    class PerSample:  # the same source without the hook
        config, name = sim.config, sim.name
        generate, to_samples = sim.generate, sim.to_samples

    shards = []
    for name, source in (("columns", sim), ("samples", PerSample())):
        ledger = Ledger(Storage(str(tmp_path / name)), "s")
        Producer(source, ledger, "p0", samples_per_shard=16, seed=1).run(16)
        (entry,) = ledger.entries()
        shards.append(ledger.storage.read_bytes(ledger.rel("shards", entry.shard)))
    assert shards[0] == shards[1]
