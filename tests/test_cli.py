"""The ``renderloop`` console script: help, info, turntable, generate/inspect, train/run/eval, and
config errors before heavy work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from renderloop.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("info", "demo", "generate", "inspect", "train", "run", "eval", "turntable"):
        assert command in out


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "renderloop.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: renderloop" in result.stdout


def test_info_reports_versions_devices_backends_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RENDERLOOP_CACHE_DIR", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "deepspeed", "devices:", "cpu", "renderer backends:", "nvdiffrast", f"{tmp_path}/compile"):
        assert needle in out


def test_turntable_writes_a_sheet(tmp_path, capsys):
    path = tmp_path / "sheet.png"
    assert main(["turntable", "views=3", "renderer.height=24", "renderer.width=24", f"output={path}"]) == 0
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (4 * 24, 3 * 24, 3)
    colour_row = sheet[:24]
    assert (colour_row.sum(-1) > 0).mean() > 0.1  # the mesh is visible
    assert not np.array_equal(colour_row[:, :24], colour_row[:, 24:48])  # and the views differ


def test_bad_config_is_refused_with_the_key(capsys, tmp_path):
    assert main(["turntable", "renderer.height=-1", f"output={tmp_path}/x.png"]) == 2
    assert "config error at renderer.height" in capsys.readouterr().err
    assert main(["turntable", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_generate_then_inspect(tmp_path, capsys):
    root = tmp_path / "data"
    args = [
        "generate",
        "source=debug",
        f"storage.root={root}",
        "num_samples=24",
        "samples_per_shard=8",
        "cluster.producers=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "24 samples" in out and "4 shards" in out  # each producer: one full shard and one of 4
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(root), f"output={sheet}", "samples=3"]) == 0
    out = capsys.readouterr().out
    assert "simulator: 24 samples in 4 shards" in out and "closed" in out and "kp2d.npy" in out
    image = np.asarray(Image.open(sheet))
    assert image.shape[0] == 3 * 128 and image.shape[1] == 5 * 128  # 3 samples × (rgb, overlay, depth, normals, seg)


def test_generate_refuses_bad_config_before_work(tmp_path, capsys):
    assert main(["generate", "source=debug", f"storage.root={tmp_path}", "samples_per_shard=6"]) == 2
    assert "samples_per_shard: must be a multiple of source.batch_size=8" in capsys.readouterr().err
    assert main(["generate", "source=debug", "source.style=cartoon", f"storage.root={tmp_path}"]) == 2
    assert "config error at source.style" in capsys.readouterr().err
    assert main(["generate", "cluster.mode=slurm", f"storage.root={tmp_path}"]) == 2
    assert "config error at cluster.mode" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_info_refuses_bad_renderer_values(capsys):
    assert main(["info", "renderer.height=abc"]) == 2
    assert "config error at renderer.height" in capsys.readouterr().err


def test_inspect_of_an_empty_root_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "config error at root: no stream under" in capsys.readouterr().err


def test_inspect_refuses_a_stream_that_does_not_exist_and_no_rows(tmp_path, capsys):
    assert main(["generate", "source=debug", f"storage.root={tmp_path}", "num_samples=8", "samples_per_shard=8"]) == 0
    capsys.readouterr()
    for args, key in ((["stream=nope"], "stream"), (["samples=-1"], "samples")):
        assert main(["inspect", str(tmp_path), *args, f"output={tmp_path / 'sheet.png'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"config error at {key}" in err[0]
    assert not (tmp_path / "sheet.png").exists()
