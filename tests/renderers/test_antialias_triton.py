"""The antialias walk's Triton kernel compiles for a GPU as its bit-for-bit claim needs: correctly
rounded fp32 division and no fused multiply-adds (its results are checked against the tensor walk
in ``test_antialias.py``, in the interpreter, and on CUDA by the gpu-marked test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from renderloop.renderers import _antialias_triton

pointers = ["own", "other", "face_id", "clip", "faces", "neighbours", "drawn", "met", "blended_face", "blended_edge",
            "end_face"]
report = {}
for dtype in ("fp32", "fp64"):
    types = dict(zip(pointers, ["*i64"] * 3 + [f"*{dtype}"] + ["*i64"] * 2 + ["*i8"] * 2 + ["*i64"] * 3))
    signature = {f"{name}_ptr": kind for name, kind in types.items()}
    signature |= dict.fromkeys(["total", "H", "W", "V", "F", "max_hops"], "i32") | {"sx": "fp32", "sy": "fp32"}
    signature |= {"HORIZONTAL": "constexpr", "BLOCK": "constexpr"}
    source = triton.compiler.ASTSource(fn=_antialias_triton._walk_kernel, signature=signature,
                                       constexprs={"HORIZONTAL": True, "BLOCK": _antialias_triton.WALK_BLOCK})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"]
    report[dtype] = {op: ptx.count(op) for op in ("div.rn", "div.full", "div.approx", "fma.")}
print(json.dumps(report))
"""


@pytest.mark.slow
def test_the_walk_kernel_compiles_for_a_gpu_with_exact_arithmetic():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for dtype, ops in report.items():
        assert ops["div.rn"] > 0 and ops["fma."] == 0, f"{dtype}: {ops}"
        assert ops["div.full"] == ops["div.approx"] == 0, f"{dtype}: {ops}"
