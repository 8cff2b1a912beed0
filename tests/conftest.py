"""Shared fixtures. Tests marked ``gpu`` skip cleanly where CUDA is missing."""

from __future__ import annotations

import os

# MKL picks its kernels per CPU (AVX-512 on some Intel parts), and their rounding moves a few
# rasterized edge pixels and recorded losses past the tolerances of the tests that pin values
# earlier runs streamed; its compatible path gives the same bits on every x86 CPU. Set before
# torch first calls MKL.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels then run on CPU tensors, in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
