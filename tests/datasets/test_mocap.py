"""BVH reading, forward kinematics checked by hand, real CMU/Boxing captures, and the mocap source."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from renderloop.config import ConfigError, to_schema
from renderloop.datasets.mocap import (
    COMMON_JOINTS,
    COMMON_PARENTS,
    Mocap,
    MocapConfig,
    Motion,
    common_joint_indices,
    forward_kinematics,
    read_bvh,
    unit_mm,
)
from renderloop.datasets.schema import decode_sample, encode_sample
from tests.debian_data import debian_file

BVH_DIR = "/usr/share/assimp/models/BVH"

# root → mid → tip (+ End Site). Frame 1 moves the root to (10, 20, 30), turns it 90° about z and
# turns mid 90° about x (channels Z Y X: the last value is x).
THREE_JOINTS = """HIERARCHY
ROOT root
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT mid
  {
    OFFSET 1 0 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    JOINT tip
    {
      OFFSET 0 2 0
      CHANNELS 3 Zrotation Yrotation Xrotation
      End Site
      {
        OFFSET 0 0 3
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
0 0 0 0 0 0 0 0 0 0 0 0
10 20 30 90 0 0 0 0 90 0 0 0
"""


def _write(tmp_path, text: str, name: str = "clip.bvh"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _rest(motion: Motion) -> np.ndarray:
    """Joint positions ``[J, 3]`` with every channel at zero."""
    zero = Motion(**{**vars(motion), "frames": np.zeros((1, motion.frames.shape[1]))})
    return forward_kinematics(zero)[0]


def test_read_bvh_hand_written(tmp_path):
    m = read_bvh(_write(tmp_path, THREE_JOINTS))
    assert m.names == ("root", "mid", "tip") and m.parents == (-1, 0, 1)
    assert m.channels[0][:3] == ("Xposition", "Yposition", "Zposition") and len(m.channels[2]) == 3
    np.testing.assert_array_equal(m.offsets, [[0, 0, 0], [1, 0, 0], [0, 2, 0]])
    assert m.end_sites[0] is None and m.end_sites[1] is None
    np.testing.assert_array_equal(m.end_sites[2], [0, 0, 3])
    assert m.frames.shape == (2, 12) and m.frames.dtype == np.float64 and m.frame_time == 0.5


def test_forward_kinematics_by_hand(tmp_path):
    m = read_bvh(_write(tmp_path, THREE_JOINTS))
    pos = forward_kinematics(m)
    # Frame 0: the rest pose. Frame 1: Rz90 takes the (1, 0, 0) offset to (0, 1, 0); the tip's
    # offset (0, 2, 0) goes through Rx90 first, to (0, 0, 2), which Rz90 leaves alone.
    expected = [
        [[0, 0, 0], [1, 0, 0], [1, 2, 0]],
        [[10, 20, 30], [10, 21, 30], [10, 21, 32]],
    ]
    np.testing.assert_allclose(pos, expected, atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(m, slice(1, 2)), pos[1:], atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(m, np.array([1, 0])), pos[::-1], atol=1e-12)


def test_forward_kinematics_follows_the_channel_order(tmp_path):
    # Channels X, Z, Y: R = Rx(90) @ Rz(90); positions come in the order Z, X, Y.
    text = """HIERARCHY
ROOT a
{
  OFFSET 0 0 0
  CHANNELS 6 Zposition Xposition Yposition Xrotation Zrotation Yrotation
  JOINT b
  {
    OFFSET 1 0 0
    CHANNELS 0
    End Site
    {
      OFFSET 1 0 0
    }
  }
}
MOTION
Frames: 1
Frame Time: 0.01
3 1 2 90 90 0
"""
    pos = forward_kinematics(read_bvh(_write(tmp_path, text)))
    # Rz90 (1, 0, 0) = (0, 1, 0), then Rx90 (0, 1, 0) = (0, 0, 1). Z-then-X would give (0, 1, 0).
    np.testing.assert_allclose(pos[0], [[1, 2, 3], [1, 2, 4]], atol=1e-12)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("MOTION\nFrames: 2\nFrame Time: 0.5\n", "", r"line 22: no MOTION section"),
        ("0 0 0 0 0 0 0 0 0 0 0 0\n", "0 0 0 0 0 0 0 0 0 0 0\n", r"line 24: expected 12 values in a frame; got 11"),
        (
            "Yrotation Xrotation\n    JOINT tip",
            "Yrotation Wrotation\n    JOINT tip",
            r"line 9: unknown channel 'Wrotation'",
        ),
        ("Frames: 2", "Frames: 3", r"line \d+: header says 3 frames; got 2"),
        ("10 20 30 90", "10 20 thirty 90", r"line 25: frame values must be numbers"),
        ("Frame Time: 0.5", "Frame Time: soon", r"line 22: expected 'Frames: <count>' and 'Frame Time: <seconds>'"),
        ("OFFSET 1 0 0", "OFFSET 1 0", r"line 9: expected an OFFSET value; got 'CHANNELS'"),
        ("  }\n}\nMOTION", "  }\nMOTION", r"line 20: expected .*; got the MOTION section"),
    ],
)
def test_malformed_bvh_names_file_and_line(tmp_path, old, new, message):
    assert old in THREE_JOINTS
    path = _write(tmp_path, THREE_JOINTS.replace(old, new, 1))
    with pytest.raises(ValueError, match=re.escape(f"read_bvh(): {path}, ") + message):
        read_bvh(path)


def test_extra_frames_beyond_the_header_are_dropped(tmp_path):
    m = read_bvh(_write(tmp_path, THREE_JOINTS.replace("Frames: 2", "Frames: 1")))
    assert m.num_frames == 1 and m.frames[0].sum() == 0


def test_unknown_skeletons_are_refused(tmp_path):
    m = read_bvh(_write(tmp_path, THREE_JOINTS))
    with pytest.raises(ValueError, match=r"common_joint_indices\(\): cannot map .* lacks"):
        common_joint_indices(m.names)
    with pytest.raises(ValueError, match=r"unit_mm\(\): unknown skeleton"):
        unit_mm(m)


def _bone_lengths_are_constant(m: Motion) -> None:
    pos = forward_kinematics(m, slice(None, None, 25))
    parents = np.array(m.parents[1:])
    lengths = np.linalg.norm(pos[:, 1:] - pos[:, parents], axis=-1)  # (F, J - 1)
    np.testing.assert_allclose(lengths, np.broadcast_to(np.linalg.norm(m.offsets[1:], axis=-1), lengths.shape))


def _stature_mm(m: Motion) -> float:
    """Rest-pose height from the lowest End Site (toes) to the highest (head top), millimetres."""
    rest = _rest(m)
    ends = [rest[j, 1] + site[1] for j, site in enumerate(m.end_sites) if site is not None]
    return (max(ends) - min(ends)) * unit_mm(m)


def test_cmu_capture():
    m = read_bvh(debian_file(f"{BVH_DIR}/01_01.bvh"))
    assert len(m.names) == 31 and m.names[0] == "Hips" and m.parents[0] == -1
    assert m.num_frames == 2752 and m.frames.shape == (2752, 6 + 30 * 3)
    assert m.frame_time == pytest.approx(1 / 120, rel=1e-4)
    _bone_lengths_are_constant(m)
    assert unit_mm(m) == pytest.approx(56.444, abs=1e-3)
    idx = common_joint_indices(m.names)
    assert [m.names[i] for i in idx[7:11]] == ["Spine", "Spine1", "Neck1", "Head"]
    common = forward_kinematics(m)[:, idx] * unit_mm(m)  # (F, 17, 3) mm, y up
    head_to_ankle = common[:, 10, 1] - common[:, [3, 6], 1].mean(1)
    assert 1200 < np.median(head_to_ankle) < 1600  # this conversion's torso is short: ~1310 mm
    assert 1400 < _stature_mm(m) < 1900
    assert 900 < common[0, 0, 1] < 1100  # standing hip height


def test_boxing_capture_maps_to_the_common_skeleton():
    m = read_bvh(debian_file(f"{BVH_DIR}/Boxing_Toes.bvh"))
    assert len(m.names) == 21 and m.channels[1] == ("Zrotation", "Xrotation", "Yrotation")
    assert m.num_frames == 3069
    _bone_lengths_are_constant(m)
    idx = common_joint_indices(m.names)
    assert [m.names[i] for i in idx[:4]] == ["Hips", "RightHip", "RightKnee", "RightAnkle"]
    assert unit_mm(m) == 10.0
    rest = _rest(m)[idx] * unit_mm(m)
    assert 1400 < rest[10, 1] - rest[3, 1] < 1900  # head to ankle: ~1500 mm
    assert 1400 < _stature_mm(m) < 1900
    assert rest[4, 0] > 0 > rest[1, 0]  # the left hip is on +x: both skeletons face +z


@pytest.fixture(scope="module")
def mocap():
    files = [str(debian_file(f"{BVH_DIR}/{name}")) for name in ("01_01.bvh", "Boxing_Toes.bvh")]
    return Mocap(MocapConfig(files=files, stride=20, batch_size=16, resolution=64, focal=80.0))


def test_pool_is_root_relative_metres_y_up(mocap):
    assert mocap.poses.shape == (138 + 154, 17, 3) and mocap.names == COMMON_JOINTS
    assert mocap.parents == COMMON_PARENTS and torch.equal(mocap.poses[:, 0], torch.zeros(292, 3))
    height = mocap.poses[:, 10, 1] - mocap.poses[:, [3, 6], 1].mean(1)
    assert 1.0 < float(height.median()) < 1.7


def test_source_is_deterministic_per_seed_and_batch(mocap):
    a, b, c = mocap.generate(5, 3), mocap.generate(5, 3), mocap.generate(5, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["kp2d"], c["kp2d"]) and not torch.equal(a["index"], c["index"])


def test_keypoints_follow_the_camera(mocap):
    b = mocap.generate(1, 0)
    torch.testing.assert_close(b["kp3d"], b["pose"] @ b["R"].transpose(1, 2) + b["t"].unsqueeze(1))
    proj = b["kp3d"] @ b["K"].transpose(1, 2)
    torch.testing.assert_close(b["kp2d"], proj[..., :2] / proj[..., 2:], rtol=1e-5, atol=1e-4)
    # The pelvis is on the optical axis at the sampled distance, projected at the image centre.
    pelvis = torch.stack([torch.zeros(16), torch.zeros(16), b["distance"]], -1)
    torch.testing.assert_close(b["kp3d"][:, 0], pelvis, atol=1e-5, rtol=0)
    torch.testing.assert_close(b["kp2d"][:, 0], torch.full((16, 2), 32.0))
    assert torch.equal(b["K"][0], torch.tensor([[80.0, 0, 32], [0, 80, 32], [0, 0, 1]]))
    # Camera y points down: the head is above (smaller v than) the pelvis in nearly every view.
    assert float((b["kp2d"][:, 10, 1] < b["kp2d"][:, 0, 1]).float().mean()) > 0.8


def test_noise_moves_only_kp2d(mocap):
    noisy = Mocap(MocapConfig(**{**vars(mocap.config), "noise_px": 2.0}))
    a, b = mocap.generate(2, 1), noisy.generate(2, 1)
    assert torch.equal(a["kp3d"], b["kp3d"])
    std = float((b["kp2d"] - a["kp2d"]).std())
    assert 1.5 < std < 2.5


def test_samples_round_trip_through_the_schema(mocap):
    b = mocap.generate(3, 2)
    samples = mocap.to_samples(b, [3] * 16, [f"k{i}" for i in range(16)])
    s = samples[5]
    assert s["kp2d.npy"].shape == (17, 2) and s["kp3d.npy"].shape == (17, 3) and s["kp2d.npy"].dtype == np.float32
    out = decode_sample(encode_sample(s), shard="s.tar")
    assert torch.equal(out["kp2d.npy"], b["kp2d"][5]) and torch.equal(out["kp3d.npy"], b["kp3d"][5])
    torch.testing.assert_close(out["cam.json"]["R"], b["R"][5])
    assert out["cam.json"]["K"].shape == (3, 3) and float(out["cam.json"]["distance"]) == pytest.approx(
        float(b["distance"][5])
    )
    meta = out["meta.json"]
    assert meta["source"] == "mocap" and meta["seed"] == 3 and meta["config"] == mocap.config.digest()
    # The recorded file and frame give back the pose.
    m = read_bvh(meta["file"])
    pose = forward_kinematics(m, [meta["frame"]])[0, common_joint_indices(m.names)] * unit_mm(m) / 1000
    torch.testing.assert_close(b["pose"][5], torch.as_tensor(pose - pose[:1], dtype=torch.float32))


def test_frame_range_splits_a_sequence():
    path = str(debian_file(f"{BVH_DIR}/01_01.bvh"))
    train = Mocap(MocapConfig(files=[path], frame_range=(0.0, 0.8), stride=10))
    test = Mocap(MocapConfig(files=[path], frame_range=(0.8, 1.0), stride=10))
    assert int(train.frame_of.max()) < 2202 <= int(test.frame_of.min()) and int(test.frame_of.max()) < 2752
    assert len(train.poses) == 221 and len(test.poses) == 55


def test_all_joints_need_one_skeleton():
    cmu = str(debian_file(f"{BVH_DIR}/01_01.bvh"))
    src = Mocap(MocapConfig(files=[cmu], joints="all", stride=50, batch_size=2))
    assert src.generate(0, 0)["kp3d"].shape == (2, 31, 3) and src.names[1] == "LHipJoint"
    boxing = str(debian_file(f"{BVH_DIR}/Boxing_Toes.bvh"))
    with pytest.raises(ConfigError, match=r"source\.joints: 'all' needs one skeleton"):
        Mocap(MocapConfig(files=[cmu, boxing], joints="all"))


def test_unknown_skeleton_needs_explicit_units(tmp_path):
    path = str(_write(tmp_path, THREE_JOINTS))
    with pytest.raises(ConfigError, match=r"source\.units_mm: .*unknown skeleton"):
        Mocap(MocapConfig(files=[path], joints="all"))
    src = Mocap(MocapConfig(files=[path], joints="all", units_mm=[1000.0], stride=1, batch_size=4))
    torch.testing.assert_close(src.poses[1, 2], torch.tensor([0.0, 1.0, 2.0]))  # tip - root, frame 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"files": []}, "source.files"),
        ({"frame_range": (0.5, 0.5)}, "source.frame_range"),
        ({"stride": 0}, "source.stride"),
        ({"joints": "coco"}, "source.joints"),
        ({"units_mm": [10.0, 10.0]}, "source.units_mm"),
        ({"distance": (0.0, 2.0)}, "source.distance"),
        ({"elevation_deg": (0.0, 90.0)}, "source.elevation_deg"),
        ({"noise_px": -1.0}, "source.noise_px"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config error at {key}"):
        MocapConfig(**{"files": ["a.bvh"], **kwargs})


def test_missing_file_and_yaml_node():
    with pytest.raises(ConfigError, match=r"source\.files: no such file"):
        Mocap(MocapConfig(files=["missing.bvh"]))
    cfg = to_schema(MocapConfig, {"files": ["a.bvh"], "frame_range": [0.0, 0.5], "units_mm": [10.0]}, "source")
    assert cfg.frame_range[1] == 0.5 and cfg.units_mm == [10.0]
    with pytest.raises(ConfigError, match=r"source\.files"):
        to_schema(MocapConfig, {"stride": 2}, "source")
