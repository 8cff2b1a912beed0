"""The Triton kernels (``renderers/_raster_triton.py``) against the tensor path: the z-buffer's face
ids bit for bit, the fragments, the soft silhouette and their gradients to rounding. On the CPU under Triton's
interpreter (a subprocess, since the interpreter is chosen when a kernel is defined; Triton 3.6's
interpreter cannot run them, 3.9's can), on a GPU compiled."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from renderloop.renderers import cameras, ops
from renderloop.renderers.meshes import icosphere, pad_meshes, torus

from .helpers import orbit_scene, pixels_to_clip
from .test_rasterize import _fan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _scenes(device: str = "cpu", batch: int = 3, subdivisions: int = 2):
    """Scenes that exercise the tie rule, per-item meshes, padding, culling and both precisions."""
    res = (32, 32)
    for dtype in (torch.float32, torch.float64):
        verts, faces, R, t, K = orbit_scene(batch, (48, 40), subdivisions=subdivisions, dtype=dtype, device=device)
        clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, (48, 40))
        yield f"orbit-{dtype}", clip, faces, (48, 40)
    xy, faces = _fan(res)  # vertices on pixel centres and corners: every edge rule decides
    yield "fan", pixels_to_clip(xy, res).unsqueeze(0).to(device), faces.to(device), res
    verts, faces = pad_meshes([icosphere(1), torus(rings=12, sides=8)])
    R, t = cameras.orbit_camera(torch.tensor([0.0, 2.0]), torch.tensor([0.5, -0.3]), torch.tensor([3.0, 2.5]))
    K = cameras.fov_intrinsics(40.0, *res, batch=2)
    clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, res)
    yield "padded", clip.to(device), faces.to(device), res


def _launches(scene: str) -> tuple[str, ...]:
    """Z-buffer launch shapes compared on a scene: a tile of several faces everywhere; a program per
    face (the interpreter's slowest) and a block longer than most boxes where the interpreter is
    quick enough."""
    if "float64" in scene:
        return ("4x16x1",)
    return ("1x32x4", "4x16x1") if scene.startswith("orbit") else ("1x32x4", "4x16x1", "2x64x2")


def _compare(device: str = "cpu") -> dict[str, list[int]]:
    """Per scene, culling and launch shape: pixels whose face id differs, and covered pixels."""
    from renderloop.renderers._raster_triton import Launch, nearest_face_keys

    tensor_path = ops.RasterContext()
    out = {}
    for name, clip, faces, res in _scenes(device):
        for cull in (False, True):
            want = ops.rasterize(clip, faces, res, cull_backfaces=cull, ctx=tensor_path).face_id
            for launch in _launches(name):
                kernel = functools.partial(nearest_face_keys, launch=Launch.parse(launch))
                got = ops.rasterize(clip, faces, res, cull_backfaces=cull, ctx=ops.RasterContext(zbuffer=kernel))
                differing = int((got.face_id != want).sum())
                out[f"{name}, cull={cull}, launch={launch}"] = [differing, int((want >= 0).sum())]
    return out


def _compare_soft(device: str = "cpu") -> dict[str, list[float]]:
    """Per scene: the largest silhouette difference, and the largest gradient difference relative to
    the largest gradient (a random weighting of the pixels backpropagated). Sharp and wide sigmas,
    and launch shapes, alternate between scenes, since the interpreter takes seconds per call."""
    from renderloop.renderers._raster_triton import Launch, soft_sums

    tensor_path = ops.RasterContext()
    out = {}
    scenes = _scenes(device, batch=1, subdivisions=1)
    settings = ((0.5, "4x32x4"), (2.0, "1x32x4"), (0.5, "2x64x2"), (2.0, "4x16x1"))
    for (name, clip, faces, res), (sigma, launch) in zip(scenes, settings, strict=True):
        triton_path = ops.RasterContext(soft_sums=functools.partial(soft_sums, launch=Launch.parse(launch)))
        clip = clip.detach().requires_grad_(True)
        want = ops.soft_silhouette(clip, faces, res, sigma=sigma, ctx=tensor_path)
        got = ops.soft_silhouette(clip, faces, res, sigma=sigma, ctx=triton_path)
        weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(0)).to(want)
        (grad_want,) = torch.autograd.grad((want * weight).sum(), clip)
        (grad_got,) = torch.autograd.grad((got * weight).sum(), clip)
        scale = float(grad_want.abs().max())
        out[f"{name}, sigma={sigma}"] = [
            float((got - want).abs().max()),
            float((grad_got - grad_want).abs().max()) / scale,
        ]
    return out


def _compare_fragments(device: str = "cpu") -> dict[str, list[float]]:
    """Per scene: the largest barycentric and (relative) depth difference of the fragment kernels
    against ``ops._fragment_math``, and the largest gradient difference relative to the largest
    gradient (random weights on barycentrics and depth backpropagated to the clip coordinates). The
    backward pass sums runs of pixels in two scenes and adds pixel by pixel in the other two."""
    from renderloop.renderers._raster_triton import fragments

    tensor_path = ops.RasterContext()
    out = {}
    for (name, clip, faces, res), runs in zip(_scenes(device, batch=2, subdivisions=1), (True, False) * 2, strict=True):
        triton_path = ops.RasterContext(fragments=functools.partial(fragments, runs=runs))
        clip = clip.detach().requires_grad_(True)
        want = ops.rasterize(clip, faces, res, ctx=tensor_path)
        got = ops.rasterize(clip, faces, res, ctx=triton_path)
        assert torch.equal(got.face_id, want.face_id), name
        generator = torch.Generator().manual_seed(0)
        on_bary, on_depth = (torch.randn(t.shape, generator=generator).to(clip) for t in (want.bary, want.depth))
        (grad_want,) = torch.autograd.grad((want.bary * on_bary).sum() + (want.depth * on_depth).sum(), clip)
        (grad_got,) = torch.autograd.grad((got.bary * on_bary).sum() + (got.depth * on_depth).sum(), clip)
        out[name] = [
            float((got.bary - want.bary).abs().max()),
            float((got.depth - want.depth).abs().max() / want.depth.abs().max()),
            float((grad_got - grad_want).abs().max() / grad_want.abs().max()),
        ]
    return out


def _check_fragments(result: dict[str, list[float]]) -> None:
    assert len(result) == 4
    for scene, errors in result.items():
        bound = 1e-12 if "float64" in scene else 1e-5
        assert max(errors) < bound, f"{scene}: barycentrics, depth, gradients differ by {errors}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the compiled kernel is tested instead")
def test_interpreted_kernels_match_the_tensor_path():
    """The interpreter runs on one core: the three comparisons run side by side, one single-threaded
    process each."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    compares = ("_compare", "_compare_soft", "_compare_fragments")
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import json; from renderloop.renderers import _raster_triton; "
                "_raster_triton.supports = lambda device: True; "  # ops runs them on CUDA only
                f"from tests.renderers.test_raster_triton import {name}; print(json.dumps({name}()))",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in compares
    ]
    results = []
    try:
        for name, run in zip(compares, runs, strict=True):
            stdout, stderr = run.communicate(timeout=600)
            assert run.returncode == 0, f"{name}: {stderr[-3000:]}"
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for run in runs:  # a failed comparison leaves none of the others running
            run.kill()
    faces, soft, fragments = results
    _check(faces)
    _check_soft(soft)
    _check_fragments(fragments)


def _check_soft(result: dict[str, list[float]]) -> None:
    assert len(result) == 4  # one sigma per scene
    for scene, (value_error, gradient_error) in result.items():
        float64 = "float64" in scene
        assert value_error < (1e-12 if float64 else 1e-5), f"{scene}: silhouettes differ by {value_error}"
        assert gradient_error < (1e-12 if float64 else 1e-4), (
            f"{scene}: gradients differ by {gradient_error} (relative)"
        )


def _check(result: dict[str, list[int]]) -> None:
    assert len(result) == 2 * (1 + 2 + 3 + 3)  # culling × the launches of the four scenes
    for scene, (differing, covered) in result.items():
        assert covered > 0 or scene.startswith("fan, cull=True"), scene  # the fan faces away from the camera
        assert differing == 0, f"{scene}: {differing} of {covered} pixels differ"


def test_the_kernel_is_used_only_where_it_runs():
    from renderloop.renderers import _raster_triton

    assert not _raster_triton.supports(torch.device("cpu"))  # even where the tests interpret Triton
    assert ops.make_context().zbuffer is ops.make_context(compile=True).zbuffer is _raster_triton.nearest_face_keys
    assert ops.make_context().soft_sums is ops.make_context(compile=True).soft_sums is _raster_triton.soft_sums
    assert ops.make_context().fragments is ops.make_context(compile=True).fragments is _raster_triton.fragments
    built_directly = ops.RasterContext()  # the tensor paths everywhere
    assert built_directly.zbuffer is built_directly.soft_sums is built_directly.fragments is None


def test_compiled_zbuffer_inputs_equal_the_eager_ones():
    """The z-buffer's per-face table and pixel boxes, compiled (``make_context(compile=True)``), bit
    for bit the eager ones: the kernel's face ids then agree with the tensor path's as well."""
    name, clip, faces, res = next(_scenes())
    faces = faces.long().expand(clip.shape[0], -1, -1)
    compiled = ops.make_context(compile=True).zbuffer_inputs(clip, faces, res, True)
    for got, want in zip(compiled, ops._zbuffer_inputs(clip, faces, res, True), strict=True):
        assert torch.equal(got, want), name


@pytest.mark.gpu
def test_compiled_kernels_match_the_tensor_path_cuda():
    _check(_compare("cuda"))
    _check_soft(_compare_soft("cuda"))
    _check_fragments(_compare_fragments("cuda"))


_COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from renderloop.renderers import _raster_triton as kernels

def pointers(*names, kind="*fp32"):
    return {f"{name}_ptr": kind for name in names}

soft = {**pointers("tri"), **pointers("box", kind="*i32")}
sizes = dict.fromkeys(["total_faces", "num_faces", "H", "W"], "i32") | {"sigma": "fp32"}
sizes |= dict.fromkeys(["FACES", "BLOCK"], "constexpr")
fragments = {**pointers("clip"), **pointers("faces", "face_id", kind="*i64")}
fragments |= pointers("grad_bary", "grad_depth", "grad_clip") | {"total": "i64"}
fragments |= dict.fromkeys(["V", "face_stride", "H", "W"], "i32") | dict.fromkeys(["RUNS", "BLOCK"], "constexpr")
tile = {"FACES": 4, "BLOCK": 32}
soft_forward = {**soft, **pointers("log"), **pointers("covered", kind="*i32"), **sizes}
cases = {
    "soft forward": (kernels._soft_forward_kernel, soft_forward, tile),
    "soft backward": (kernels._soft_backward_kernel, {**soft, **pointers("grad_log", "grad_tri"), **sizes}, tile),
    "fragment backward, runs": (kernels._fragment_backward_kernel, fragments, {"RUNS": True, "BLOCK": 256}),
    "fragment backward, pixelwise": (kernels._fragment_backward_kernel, fragments, {"RUNS": False, "BLOCK": 256}),
}
report = {}
for name, (fn, signature, constexprs) in cases.items():
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    report[name] = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"].count("atom.")
print(json.dumps(report))
"""


def test_the_changed_kernels_compile_for_a_gpu():
    """Compiled for sm_90 without a GPU (the interpreter checks their values, not that they
    compile): the soft silhouette's forward adds with atomics and its backward sums in registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    atomics = json.loads(done.stdout.strip().splitlines()[-1])
    assert atomics["soft backward"] == 0 and atomics["soft forward"] > 0
    assert atomics["fragment backward, runs"] > 0 and atomics["fragment backward, pixelwise"] > 0


def test_a_launch_shape_is_checked_when_it_is_made():
    from renderloop.renderers._raster_triton import Launch

    assert str(Launch.parse("4x32x1")) == "4x32x1" and Launch.parse("4x32x4") == Launch()
    with pytest.raises(ValueError, match="FACESxBLOCKxWARPS"):
        Launch.parse("4x32")
    with pytest.raises(ValueError, match="power of two"):
        Launch.parse("3x32x4")
