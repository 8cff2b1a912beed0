"""Bad user input ends every command with one line on stderr naming the key or file, exit status 2,
and nothing written: each case stops at the config stage, before any render, shard or checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from renderloop.cli import main
from renderloop.config import ConfigError, check_number
from renderloop.errors import InputError, RenderloopError
from renderloop.renderers.meshes import MeshFileError, load_mesh

CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISSING_GPU = f"cuda:{max(3, CUDA_COUNT)}"  # cuda:3 on a machine without CUDA; past the last GPU on one with it
no_cuda = pytest.mark.skipif(CUDA_COUNT > 0, reason="CUDA is available here")

# Small mesh files, each broken in one way (the good one shows the checks let a real mesh through).
MESHES = {
    "good.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n",
    "no_triangles.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\n",
    "empty.off": "OFF\n",
    "index.off": "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",
    "index.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n",
    "degenerate.obj": "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\nf 3 2 1\n",
    "junk.ply": "not a ply file\n",
}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """``(inputs, outputs)``: the case's input files, and the folder every output is pointed into."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    for name, text in MESHES.items():
        (inputs / name).write_text(text)
    (inputs / "a_folder").mkdir()
    (inputs / "a_file").write_text("not a folder\n")
    (inputs / "streams" / "simulator" / "ledger").mkdir(parents=True)  # a stream as inspect finds one
    return inputs, outputs


def _argv(command: str, args: list[str], inputs: Path, outputs: Path) -> list[str]:
    """The command line of a case: ``{in}``/``{out}`` filled in, outputs defaulted into ``outputs``."""
    args = [a.format(**{"in": inputs, "out": outputs}) for a in args]
    defaults = {
        "turntable": ["renderer.height=16", "renderer.width=16", f"output={outputs}/sheet.png"],
        "generate": ["source=debug", "num_samples=8", "samples_per_shard=8", f"storage.root={outputs}/data"],
        "train": ["method=simgan_debug", f"storage.root={outputs}/data", f"run_dir={outputs}/run"],
        "inspect": [f"output={outputs}/sheet.png"],
    }[command]
    root = [args.pop(0)] if command == "inspect" else []
    return [command, *root, *defaults, *args]  # later overrides win, so a case's own value replaces a default


def _refused(capsys, argv: list[str], needles: tuple[str, ...], outputs: Path) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"renderloop {argv[0]}: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in captured.err
    assert not [p for p in outputs.rglob("*") if p.is_file()], "partial output left behind"


MESH_CASES = [
    (["mesh="], ("config error at mesh:", "got ''")),
    (["mesh={in}/missing.obj"], ("config error at mesh:", "missing.obj")),
    (["mesh={in}/a_folder"], ("config error at mesh:", "a_folder", "folder")),
    (["mesh={in}/no_triangles.obj"], ("config error at mesh:", "no_triangles.obj", "no triangles")),
    (["mesh={in}/empty.off"], ("config error at mesh:", "empty.off", "cannot be parsed")),
    (["mesh={in}/index.off"], ("config error at mesh:", "index.off", "face index")),
    (["mesh={in}/index.obj"], ("config error at mesh:", "index.obj", "face index beyond its vertices")),
    (["mesh={in}/degenerate.obj"], ("config error at mesh:", "degenerate.obj", "non-zero area")),
    (["mesh={in}/junk.ply"], ("config error at mesh:", "junk.ply", "cannot be parsed")),
]

TURNTABLE_CASES = [
    (["distance=inf"], ("config error at distance:", "got inf")),
    (["elevation_deg=nan"], ("config error at elevation_deg:", "got nan")),
    (["fov_deg=0"], ("config error at fov_deg:",)),
    (["renderer.near=50", "renderer.far=100"], ("config error at renderer.near:", "outside the view volume")),
    (["renderer.far=3"], ("config error at renderer.far:", "outside the view volume")),
    (["renderer.far=inf"], ("config error at renderer.far:", "got inf")),
    (["renderer.height=100000"], ("config error at renderer.height:", "got 100000")),
    (["views=10000000"], ("config error at views:", "MAX_BATCH_PIXELS")),
    (["output={out}"], ("config error at output:", "is a folder")),
    (["output={in}/a_file/sheet.png"], ("config error at output:", "a_file is a file")),
    (["output=/proc/renderloop-sheet.png"], ("config error at output:", "cannot be written")),
    (["output={out}/sheet.txt"], ("config error at output:", "sheet.txt")),
    (["output="], ("config error at output:",)),
    (["device=tpu"], ("config error at device:", "'tpu'")),
    pytest.param(["device=cuda"], ("config error at device:", "CUDA"), marks=no_cuda),
    ([f"device={MISSING_GPU}"], ("config error at device:", MISSING_GPU)),
]

GENERATE_CASES = [
    (["storage.root=nosuch://x"], ("config error at storage.root:", "nosuch")),
    (["storage.root={in}/a_file"], ("config error at storage.root:", "a_file")),
    (["storage.stream="], ("config error at storage.stream:", "got ''")),
    (["storage.stream=../escape"], ("config error at storage.stream:", "../escape")),
    (["metrics_port=99999"], ("config error at metrics_port:", "99999")),
    (["device=tpu"], ("config error at device:", "'tpu'")),
    pytest.param(["device=cuda"], ("config error at device:", "CUDA"), marks=no_cuda),
    ([f"cluster.producer_device={MISSING_GPU}"], ("config error at cluster.producer_device:",)),
    (["source.fov_deg=0"], ("config error at source.fov_deg:",)),
    (["source.azimuth_deg=[10,0]"], ("config error at source.azimuth_deg:", "lo <= hi")),
    (["source.distance=[2.6,inf]"], ("config error at source.distance:",)),
    (["source.batch_size=1000000000", "samples_per_shard=1000000000"], ("config error at source.batch_size:",)),
    (["source.resolution=100000"], ("config error at source.resolution:", "got 100000")),
    (
        ["source.shapes=[mesh]", "source.mesh_paths=[{in}/degenerate.obj]"],
        ("config error at source.mesh_paths.0:", "degenerate.obj"),
    ),
]

TRAIN_CASES = [
    (["storage.root=nosuch://x"], ("config error at storage.root:", "nosuch")),
    (["storage.stream=../escape"], ("config error at storage.stream:",)),
    (["metrics_port=99999"], ("config error at metrics_port:",)),
    pytest.param(["device=cuda"], ("config error at device:", "CUDA"), marks=no_cuda),
    (["method.self_reg=nan"], ("config error at method.self_reg:", "got nan")),
    (["method.lr_refiner=inf"], ("config error at method.lr_refiner:", "got inf")),
]

INSPECT_CASES = [
    (["nosuch://x"], ("config error at root:", "nosuch")),
    (["{in}/a_file"], ("config error at root:", "a_file")),
    (["{in}/streams", "samples=-1"], ("config error at samples:", "got -1")),
    (["{in}/streams", "stream=nope"], ("config error at stream:", "'nope'", "simulator")),
    (["{in}/streams", "output={out}"], ("config error at output:", "is a folder")),
]


def _params(command: str, cases: list) -> list:
    """``(command, args, needles)`` for each case, named by its arguments, with the marks of a
    ``pytest.param`` case."""
    params = []
    for case in cases:
        (args, needles), marks = (case.values, case.marks) if hasattr(case, "marks") else (case, ())
        params.append(pytest.param(command, args, needles, marks=marks, id=f"{command} {' '.join(args)}"))
    return params


@pytest.mark.parametrize(
    "command, args, needles",
    _params("turntable", MESH_CASES + TURNTABLE_CASES)
    + _params("generate", GENERATE_CASES)
    + _params("train", TRAIN_CASES)
    + _params("inspect", INSPECT_CASES),
)
def test_bad_input_is_one_line_and_exit_2(command, args, needles, dirs, capsys):
    inputs, outputs = dirs
    _refused(capsys, _argv(command, args, inputs, outputs), needles, outputs)


def test_a_good_mesh_file_passes_the_checks(dirs):
    mesh = load_mesh(dirs[0] / "good.obj")
    assert mesh.faces.shape == (2, 3)


@pytest.mark.parametrize("name", ["index.obj", "degenerate.obj", "no_triangles.obj", "junk.ply"])
def test_load_mesh_refuses_a_broken_file_by_name(name, dirs):
    with pytest.raises(MeshFileError, match=rf"load_mesh\(\): .*{name}: "):
        load_mesh(dirs[0] / name)


@pytest.mark.parametrize(
    "value, kwargs, rule",
    [
        (math.nan, {"at_least": 0}, "a finite number >= 0"),
        (math.inf, {"above": 0}, "a finite number > 0"),
        (-1.0, {"at_least": 0, "below": 1}, ">= 0 and < 1"),
        ((10.0, 0.0), {}, "lo <= hi"),
        ((0.5, 0.5), {"strict": True}, "lo < hi"),
        ((0.0, math.nan), {"at_least": 0}, "lo <= hi"),
    ],
)
def test_check_number_refuses_what_comparisons_let_through(value, kwargs, rule):
    with pytest.raises(ConfigError, match=r"^config error at k: must be .*; got ") as err:
        check_number("k", value, **kwargs)
    assert rule in str(err.value) and err.value.key == "k"


def test_check_number_accepts_good_values():
    check_number("k", 0.0, at_least=0, below=1)
    check_number("k", [0.5, 0.5])
    check_number("k", None, optional=True, above=0)


@pytest.mark.parametrize(
    "error, status", [(InputError("first line\nsecond line"), 2), (RenderloopError("storage\nfull"), 1)]
)
def test_cli_reports_input_and_run_errors_in_one_line(error, status, monkeypatch, capsys, tmp_path):
    def fail(cfg):
        raise error

    monkeypatch.setattr("renderloop.renderers.turntable.run", fail)
    assert main(["turntable", f"output={tmp_path}/sheet.png"]) == status
    assert capsys.readouterr().err.splitlines() == [f"renderloop turntable: {' '.join(str(error).split())}"]
