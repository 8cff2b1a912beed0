"""Every schema field round-trips; unknown or malformed fields name the shard and key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from renderloop.datasets.schema import FIELDS, SchemaError, decode_sample, encode_sample


def _sample():
    rng = np.random.default_rng(0)
    return {
        "__key__": "p0_000000001_0003",
        "rgb.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "rgb.jpg": np.full((8, 8, 3), 128, np.uint8),
        "mask.png": (rng.random((6, 5)) > 0.5).astype(np.uint8) * 255,
        "depth.npy": rng.random((6, 5)).astype(np.float32),
        "normal.npy": rng.standard_normal((6, 5, 3)).astype(np.float32),
        "seg.png": rng.integers(0, 7, (6, 5), dtype=np.uint8),
        "kp2d.npy": rng.random((4, 2)).astype(np.float32),
        "kp3d.npy": rng.random((4, 3)).astype(np.float32),
        "cam.json": {
            "K": torch.eye(3), "R": torch.eye(3), "t": torch.tensor([0.0, 0.0, 3.0]),
            "azimuth": 0.5, "elevation": 0.1, "distance": 3.0,
        },
        "light.json": {"direction": [0.0, 0.0, -1.0], "ambient": 0.3, "diffuse": 0.7},
        "latent.npy": rng.standard_normal(512).astype(np.float32),
        "view.txt": 2,
        "group.txt": 17,
        "meta.json": {"source": "simulator", "version": "1", "seed": 3},
    }  # fmt: skip


def test_every_field_round_trips():
    sample = _sample()
    assert set(sample) - {"__key__"} == set(FIELDS)
    out = decode_sample(encode_sample(sample), shard="s.tar")
    assert out["__key__"] == sample["__key__"]
    assert torch.equal(out["rgb.png"], torch.from_numpy(sample["rgb.png"]).permute(2, 0, 1).float() / 255)
    assert out["rgb.jpg"].shape == (3, 8, 8) and abs(float(out["rgb.jpg"].mean()) - 128 / 255) < 0.01
    assert torch.equal(out["mask.png"][0], torch.from_numpy(sample["mask.png"] > 0).float())
    assert torch.equal(out["depth.npy"], torch.from_numpy(sample["depth.npy"]))
    assert torch.equal(out["normal.npy"], torch.from_numpy(sample["normal.npy"]).permute(2, 0, 1))
    assert torch.equal(out["seg.png"], torch.from_numpy(sample["seg.png"]).long())
    for name in ("kp2d.npy", "kp3d.npy", "latent.npy"):
        assert torch.equal(out[name], torch.from_numpy(sample[name]))
    assert torch.equal(out["cam.json"]["t"], torch.tensor([0.0, 0.0, 3.0])) and out["cam.json"]["K"].shape == (3, 3)
    assert float(out["light.json"]["ambient"]) == pytest.approx(0.3)
    assert out["view.txt"] == 2 and out["group.txt"] == 17 and out["meta.json"]["seed"] == 3


def test_errors_name_shard_and_key():
    with pytest.raises(SchemaError, match=r"sample k1: unknown field 'colour.png'"):
        encode_sample({"__key__": "k1", "colour.png": b""})
    with pytest.raises(SchemaError, match=r"without '\.'"):
        encode_sample({"__key__": "a.b", "view.txt": 1})
    with pytest.raises(SchemaError, match=r"sample k2: field 'rgb.png' cannot be encoded"):
        encode_sample({"__key__": "k2", "rgb.png": np.zeros((2, 2, 3), np.float32)})
    with pytest.raises(SchemaError, match=r"shard s-000001.tar, sample k3: malformed field 'depth.npy'"):
        decode_sample({"__key__": "k3", "depth.npy": b"not numpy"}, shard="s-000001.tar")
    with pytest.raises(SchemaError, match=r"shard s.tar, sample k4: unknown field 'foo.bin'"):
        decode_sample({"__key__": "k4", "foo.bin": b""}, shard="s.tar")
