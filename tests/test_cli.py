"""The ``renderloop`` console script: help, info, demo, and config errors before heavy work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from renderloop.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "demo" in out


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


def test_demo_writes_a_turntable_sheet(tmp_path, capsys):
    path = tmp_path / "sheet.png"
    assert main(["demo", "views=3", "renderer.height=24", "renderer.width=24", f"output={path}"]) == 0
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (4 * 24, 3 * 24, 3)
    colour_row = sheet[:24]
    assert (colour_row.sum(-1) > 0).mean() > 0.1  # the mesh is visible
    assert not np.array_equal(colour_row[:, :24], colour_row[:, 24:48])  # and the views differ


def test_bad_config_is_refused_with_the_key(capsys, tmp_path):
    assert main(["demo", "renderer.height=-1", f"output={tmp_path}/x.png"]) == 2
    assert "config error at renderer.height" in capsys.readouterr().err
    assert main(["demo", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
