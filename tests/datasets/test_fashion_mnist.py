"""Fashion-MNIST source: IDX reading, the Debian files, class and range selection, padding, samples."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from renderloop.config import ConfigError, to_schema
from renderloop.datasets.fashion_mnist import (
    CLASS_NAMES,
    FashionMNIST,
    FashionMNISTConfig,
    load_fashion_mnist,
    read_idx,
)
from renderloop.datasets.schema import decode_sample, encode_sample


@pytest.fixture(scope="module")
def root():
    from tests.debian_data import debian_file

    return str(debian_file("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").parent)


@pytest.fixture(scope="module")
def test_split(root):
    return load_fashion_mnist(root, "test")


# A 2×3 uint8 array and a 1-D big-endian int32 array, byte by byte.
U8 = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 0, 7])
I32 = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFE])


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_hand_written(tmp_path, compress):
    for name, data in (("u8.idx", U8), ("i32.idx", I32)):
        (tmp_path / name).write_bytes(gzip.compress(data) if compress else data)
    u8, i32 = read_idx(tmp_path / "u8.idx"), read_idx(tmp_path / "i32.idx")
    assert u8.dtype == np.uint8 and u8.tolist() == [[1, 2, 3], [250, 0, 7]]
    assert i32.dtype == np.int32 and i32.tolist() == [256, -2]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01" + U8[1:], "bad magic"),
        (U8[:2] + b"\x07" + U8[3:], "unsupported type code 0x07"),
        (U8[:-1], r"header shape \(2, 3\) needs 6 data bytes; got 5"),
        (U8[:6], "truncated header"),
    ],
    ids=["magic", "type", "truncated", "header"],
)
def test_read_idx_errors_name_the_file(tmp_path, data, match):
    path = tmp_path / "broken.idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"read_idx\(\): .*broken\.idx: {match}"):
        read_idx(path)
    path.write_bytes(gzip.compress(data))  # the same checks after decompression
    with pytest.raises(ValueError, match=rf"read_idx\(\): .*broken\.idx: {match}"):
        read_idx(path)


def test_read_idx_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(U8)[:-6])
    with pytest.raises(ValueError, match=r"read_idx\(\): .*cut\.idx\.gz: broken gzip stream"):
        read_idx(path)


def test_debian_files_have_the_documented_counts(root, test_split):
    images, labels = load_fashion_mnist(root, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [6000] * 10
    test_images, test_labels = test_split
    assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels).tolist() == [1000] * 10
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[9] == "Ankle boot"
    assert labels[:4].tolist() == [9, 0, 0, 3] and test_labels[:4].tolist() == [9, 2, 1, 1]
    assert abs(float(images.mean()) / 255 - 0.2860) < 1e-3  # the published training-set pixel mean


def test_class_filter_and_index_range_select_disjoint_slices(root, test_split):
    _, labels = test_split
    wanted = np.flatnonzero(np.isin(labels, [3, 7]))  # file order
    halves = [
        FashionMNIST(FashionMNISTConfig(root=root, split="test", classes=[3, 7], index_range=r, batch_size=16))
        for r in ((0.0, 0.5), (0.5, 1.0))
    ]
    assert [len(h) for h in halves] == [1000, 1000]
    assert torch.cat([h.indices for h in halves]).tolist() == wanted.tolist()
    for h in halves:
        assert set(h.labels.tolist()) == {3, 7}
        b = h.generate(0, 0)
        assert set(b["label"].tolist()) <= {3, 7} and torch.equal(b["label"], torch.from_numpy(labels[b["index"]]))
    first = set(halves[0].generate(1, 0)["index"].tolist())
    assert first <= set(wanted[:1000].tolist()) and not first & set(wanted[1000:].tolist())


def test_generate_is_deterministic_per_seed_and_batch(root):
    source = FashionMNIST(FashionMNISTConfig(root=root, split="test", batch_size=8))
    a, b, c = source.generate(5, 3), source.generate(5, 3), source.generate(5, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["index"], c["index"])
    assert a["rgb"].shape == (8, 3, 32, 32) and a["rgb"].dtype == torch.float32
    assert a["label"].dtype == torch.int64 and a["index"].dtype == torch.int64


def test_padding_centres_the_image_in_a_32x32_frame(root, test_split):
    images, _ = test_split
    b = FashionMNIST(FashionMNISTConfig(root=root, split="test", batch_size=8)).generate(2, 0)
    rgb = b["rgb"]
    expected = torch.from_numpy(images[b["index"]]).float() / 255  # (B, 28, 28)
    assert all(torch.equal(rgb[:, c, 2:30, 2:30], expected) for c in range(3))
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[2:30, 2:30] = False
    assert float(rgb[:, :, frame].abs().max()) == 0.0


def test_other_resolutions_resize(root):
    b = FashionMNIST(FashionMNISTConfig(root=root, split="test", resolution=64, batch_size=4)).generate(0, 0)
    assert b["rgb"].shape == (4, 3, 64, 64)
    assert float(b["rgb"].min()) >= 0.0 and float(b["rgb"].max()) <= 1.0 and float(b["rgb"].mean()) > 0.05


def test_samples_round_trip_through_the_schema(root):
    source = FashionMNIST(FashionMNISTConfig(root=root, split="test", classes=[8], batch_size=4))
    batch = source.generate(9, 1)
    samples = source.to_samples(batch, [9] * 4, [f"k{i}" for i in range(4)])
    assert samples[0]["rgb.png"].shape == (32, 32, 3) and samples[0]["rgb.png"].dtype == np.uint8
    for i, sample in enumerate(samples):
        out = decode_sample(encode_sample(sample), shard="s.tar")
        assert out["__key__"] == f"k{i}" and torch.equal(out["rgb.png"], batch["rgb"][i])
        meta = out["meta.json"]
        assert meta["source"] == "fashion_mnist" and meta["seed"] == 9 and meta["label"] == 8
        assert meta["index"] == int(batch["index"][i]) and meta["config"] == source.config.digest()


def test_hydra_style_config_validates(root):
    cfg = to_schema(FashionMNISTConfig, {"root": root, "classes": [1, 2], "index_range": [0.0, 0.25]}, "source")
    assert cfg.classes == [1, 2] and tuple(cfg.index_range) == (0.0, 0.25)
    with pytest.raises(ConfigError, match="config error at source.classes"):
        to_schema(FashionMNISTConfig, {"classes": [12]}, "source")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"split": "val"}, "source.split"),
        ({"classes": []}, "source.classes"),
        ({"classes": [0, 10]}, "source.classes"),
        ({"index_range": (0.5, 0.5)}, "source.index_range"),
        ({"index_range": (-0.1, 0.5)}, "source.index_range"),
        ({"resolution": 4}, "source.resolution"),
        ({"batch_size": 0}, "source.batch_size"),
    ],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config error at {key}"):
        FashionMNISTConfig(**kwargs)


def test_missing_files_name_the_file_and_the_debian_package(tmp_path):
    with pytest.raises(
        ConfigError, match=r"source.root: missing .*train-images-idx3-ubyte.gz; .*dataset-fashion-mnist"
    ):
        FashionMNIST(FashionMNISTConfig(root=str(tmp_path)))


def test_tiny_range_selecting_nothing_is_a_config_error(root):
    with pytest.raises(ConfigError, match="source.index_range"):
        FashionMNIST(FashionMNISTConfig(root=root, split="test", classes=[0], index_range=(0.0, 0.0001)))
