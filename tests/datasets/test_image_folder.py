"""Image-folder source: files or an existing stream, resized and centre-cropped, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from renderloop.config import ConfigError
from renderloop.datasets.image_folder import ImageFolder, ImageFolderConfig
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.storage import Storage
from renderloop.errors import InputError

from .helpers import tiny_producer


def _folder(tmp_path, n=5):
    folder = tmp_path / "real"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        img = np.zeros((40, 60, 3), np.uint8)
        img[:, :, 0] = 50 * i
        img[:, 20:40, 1] = 255  # a centred green band survives the centre crop
        Image.fromarray(img).save(folder / ("sub" if i % 2 else "") / f"im{i}.{'png' if i % 2 else 'jpg'}")
    return folder


def test_folder_images_are_resized_cropped_and_deterministic(tmp_path):
    source = ImageFolder(ImageFolderConfig(path=str(_folder(tmp_path)), resolution=16, batch_size=4))
    a, b = source.generate(3, 1)["rgb"], source.generate(3, 1)["rgb"]
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    assert float(a[:, 1, :, 6:10].mean()) > 0.9 and float(a[:, 1, :, :2].mean()) < 0.1
    epoch = torch.cat([source.generate(0, k)["rgb"] for k in range(5)])[:5]  # batch_size 4: first 5 = one epoch
    assert len({round(float(x[0].mean()), 2) for x in epoch}) == 5  # every image once per epoch


def test_stream_input_and_producer_round_trip(tmp_path):
    tiny_producer(str(tmp_path / "sim")).run(8)
    source = ImageFolder(ImageFolderConfig(path=str(tmp_path / "sim"), stream="s", resolution=16, batch_size=4))
    assert source.generate(0, 0)["rgb"].shape == (4, 3, 16, 16)
    Producer(source, Ledger(Storage(str(tmp_path / "real")), "r"), "p0", samples_per_shard=4).run(8)
    samples = list(ShardStream(str(tmp_path / "real"), "r", follow=False))
    assert len(samples) == 8 and set(samples[0]) == {"__key__", "rgb.png", "meta.json"}


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config error at source.path: no such folder"):
        ImageFolder(ImageFolderConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        ImageFolder(ImageFolderConfig(path=str(tmp_path / "empty")))


def test_mixed_sizes_and_modes_are_converted_to_rgb_squares(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.full((30, 50), 200, np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(np.full((64, 20, 4), 100, np.uint8), mode="RGBA").save(folder / "alpha.png")
    palette = Image.new("P", (17, 17))
    palette.putpalette([10, 10, 10] * 256)
    palette.save(folder / "palette.png")
    source = ImageFolder(ImageFolderConfig(path=str(folder), resolution=16, batch_size=3))
    rgb = source.generate(0, 0)["rgb"]
    assert rgb.shape == (3, 3, 16, 16)
    means = sorted(round(float(x.mean()) * 255) for x in rgb)
    assert means == [10, 100, 200]  # each image's constant colour, grey in all three channels
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])


def test_an_undecodable_file_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    source = ImageFolder(ImageFolderConfig(path=str(folder), resolution=16, batch_size=1))
    with pytest.raises(InputError, match=r"broken\.png is not a readable image"):
        source.generate(0, 0)
