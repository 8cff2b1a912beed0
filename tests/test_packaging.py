"""A plain (non-editable) install carries every sub-package and the config tree, and no top-level
``datasets`` (or other sibling) package that would shadow a popular name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_plain_install_has_subpackages_and_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    top_level = sorted(
        p.name for p in target.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info"))
    )
    assert top_level == ["bin", "renderloop"] or top_level == ["renderloop"]
    for sub in ("renderers", "models", "datasets", "trainers", "cluster", "conf"):
        assert (target / "renderloop" / sub / "__init__.py").is_file()
    assert (target / "renderloop" / "conf" / "renderer" / "default.yaml").is_file()
    assert (target / "renderloop" / "trainers" / "aign" / "pose.py").is_file()
    assert (target / "renderloop" / "conf" / "method" / "aign" / "pose.yaml").is_file()
    code = (
        "import renderloop.renderers.ops as ops, renderloop.config as c; "
        "cfg = c.load_config('turntable', ['views=2']); print(ops.__file__); print(cfg.views)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    module_file, views = out.stdout.split()
    assert module_file.startswith(str(target)) and views == "2"
