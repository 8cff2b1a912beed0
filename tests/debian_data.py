"""Test data shipped by Debian packages: installed system-wide, or unpacked by ``.ci/run`` under
``$RENDERLOOP_TEST_DATA`` (``dpkg -x``, without the packages' dependencies)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest


def debian_file(path: str) -> Path:
    """The installed file at absolute ``path``, or skip the test if its package is missing."""
    for root in (Path("/"), Path(os.environ.get("RENDERLOOP_TEST_DATA", "/nonexistent"))):
        candidate = root / path.lstrip("/")
        if candidate.is_file():
            return candidate
    pytest.skip(f"{path} not installed (CI installs it; see .ci/run)")


def cgal_mesh(name: str, dest: Path) -> Path:
    """Extract ``data/meshes/<name>`` from libcgal-demo's data archive into ``dest``."""
    archive = debian_file("/usr/share/doc/libcgal-demo/data.tar.gz")
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"data/meshes/{name}")
        out = dest / name
        out.write_bytes(tar.extractfile(member).read())
    return out
