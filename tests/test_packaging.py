"""A built wheel holds the whole project and works on its own.

setup.py installs the repository's top-level folders as sub-packages of ``renderloop``; a package
it misses is absent from the wheel, which the checkout on ``sys.path`` or an editable install
would hide. So these tests build a real wheel once, install it into a bare folder and use it from
there only, with the checkout off ``sys.path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from renderloop.renderers import backends

# The project's API that the config checks call; update it here when these modules move.
#   method(name): validate method config ``name`` through the method registry; the method's name.
#   source(name): the composed source config ``name`` (a DictConfig) and its schema dataclass.
#   validate_source(node): validate a source config node through the source registry; its name.
PROJECT_API = """
from renderloop.config import load_config
from renderloop.datasets.sources import SOURCES, source_config
from renderloop.cluster.launch import TrainConfig

def method(name):
    from omegaconf import OmegaConf

    missing = OmegaConf.missing_keys(load_config("train", [f"method={name}"]))  # paths (???) left to the user
    overrides = [f"method={name}", *(f"{key}=placeholder" for key in sorted(missing))]
    return load_config("train", overrides, TrainConfig).method_name

def source(name):
    node = load_config("generate", [f"source={name}"]).source
    return node, SOURCES[node.name].config

def validate_source(node):
    return source_config(node)[0]
"""

ROOT = Path(__file__).resolve().parents[1]
# Source folder → where it installs (setup.py's package_dir).
FOLDERS = {
    "renderloop": "renderloop",
    **{name: f"renderloop/{name}" for name in ("renderers", "models", "datasets", "trainers", "cluster")},
}
DATA = ("renderloop/conf/**/*.yaml", "cluster/dashboards/*")  # source files that ship besides *.py

# Python imports ``sitecustomize`` from PYTHONPATH at startup; put next to the installed wheel it
# drops the finders of an editable install of the checkout (setuptools names their modules
# ``__editable__*``), which would otherwise supply, in every process, the modules the wheel lacks.
ISOLATE = """
import sys

editable = lambda hook: getattr(hook, "__module__", "").startswith("__editable__")
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path_importer_cache.clear()
"""

# Run inside the installed tree: import every module, then load every method and source config.
CHECK_INSTALLED = r"""
import importlib, json, sys, traceback, typing
from pathlib import Path

api_code, out = sys.argv[1:]
import renderloop

pkg = Path(renderloop.__file__).parent
finders = [getattr(f, "__module__", repr(f)) for f in sys.meta_path]
report = {"sys_path": sys.path, "finders": finders, "modules": {}, "methods": {}, "sources": {}, "errors": {}}
for path in sorted(pkg.rglob("*.py")):
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    try:
        if parts[-1] == "__main__":  # importing it would run the program: compile it instead
            compile(path.read_text(), str(path), "exec")
            report["modules"][name] = str(path)
        else:
            report["modules"][name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as err:
        report["errors"][name] = f"needs the missing module {err.name!r}"
    except Exception:
        report["errors"][name] = traceback.format_exc(limit=-3)

api = {}
try:
    exec(api_code, api)
except Exception:  # the configs cannot be checked: report why
    report["errors"]["PROJECT_API"] = traceback.format_exc(limit=-2)
    Path(out).write_text(json.dumps(report, indent=1))
    sys.exit()
from omegaconf import OmegaConf

conf = pkg / "conf"
for path in sorted((conf / "method").rglob("*.yaml")):
    name = path.relative_to(conf / "method").with_suffix("").as_posix()
    try:
        report["methods"][name] = api["method"](name)
    except Exception:
        report["errors"][f"method={name}"] = traceback.format_exc(limit=-3)
for path in sorted((conf / "source").glob("*.yaml")):
    try:
        node, schema = api["source"](path.stem)
        node = OmegaConf.create(OmegaConf.to_container(node))  # a root, so keys are relative to it
        hints = typing.get_type_hints(schema)
        for key in OmegaConf.missing_keys(node):  # values (???) the config leaves to the user
            listed = typing.get_origin(hints.get(key)) in (list, tuple)
            OmegaConf.update(node, key, ["placeholder"] if listed else "placeholder")
        report["sources"][path.stem] = api["validate_source"](node)
    except Exception:
        report["errors"][f"source={path.stem}"] = traceback.format_exc(limit=-3)
Path(out).write_text(json.dumps(report, indent=1))
"""


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode:
        shown = " ".join(str(c) if len(str(c)) < 100 else "..." for c in cmd)
        pytest.fail(f"{shown} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> dict[str, Path]:
    """The checkout's files (tracked and new, not ignored), the wheel built from them, and the
    folder it is installed into (with ``ISOLATE`` as its ``sitecustomize``). The build runs on a
    copy so that no build output lands in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, site = tmp / "src", tmp / "dist", tmp / "site"
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for rel in filter(None, files.split("\0")):
        if (ROOT / rel).is_file():  # skips tracked files deleted in the working tree
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src])
    (whl,) = dist.glob("renderloop-*.whl")
    _run([*pip, "install", "--no-deps", "--target", site, whl])
    (site / "sitecustomize.py").write_text(ISOLATE)
    return {"src": src, "wheel": whl, "site": site}


def _isolated_env(site: Path) -> dict[str, str]:
    """The environment of a process that sees the installed wheel, and the checkout not at all."""
    return {**os.environ, "PYTHONPATH": str(site)}


def test_wheel_holds_every_package_module_and_config(wheel):
    src = wheel["src"]
    with zipfile.ZipFile(wheel["wheel"]) as zf:
        names = set(zf.namelist())

    def installed(path: Path) -> str:
        folder, *rest = path.relative_to(src).parts
        return "/".join([FOLDERS[folder], *rest])

    packages = sorted(installed(p.parent) for folder in FOLDERS for p in (src / folder).rglob("__init__.py"))
    assert "renderloop/models/stylegan2" in packages and "renderloop/conf" in packages
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages missing from the wheel: {missing}"

    shipped = [p for folder in FOLDERS for p in (src / folder).rglob("*.py")]
    shipped += [p for pattern in DATA for p in src.glob(pattern)]
    assert {"renderloop/conf/method/aign/pose.yaml", "renderloop/cluster/dashboards/grafana.json"} <= {
        installed(p) for p in shipped
    }
    missing = sorted(installed(p) for p in shipped if installed(p) not in names)
    assert not missing, f"files missing from the wheel: {missing}"
    # One import package: no top-level `datasets` (or other sibling) to shadow a popular name.
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"renderloop"}


def test_installed_wheel_imports_every_module_and_loads_every_config(wheel, tmp_path):
    site = wheel["site"].resolve()
    report_path = tmp_path / "report.json"
    _run(
        [sys.executable, "-c", CHECK_INSTALLED, PROJECT_API, report_path],
        cwd=tmp_path,
        env=_isolated_env(site),
    )
    report = json.loads(report_path.read_text())
    # Renderer adapters need their own library, which the wheel does not require.
    optional = {f"renderloop.renderers.{module}": f"needs the missing module {library!r}"
                for library, module in backends._ADAPTERS.items()}  # fmt: skip
    errors = {k: v for k, v in report["errors"].items() if optional.get(k) != v}
    assert not errors, "\n".join(f"{k}: {v}" for k, v in errors.items())
    assert not [f for f in report["finders"] if f.startswith("__editable__")], report["finders"]
    on_path = {Path(p or tmp_path).resolve() for p in report["sys_path"]}
    assert ROOT not in on_path and not on_path & {ROOT / folder for folder in FOLDERS}
    outside = {name: file for name, file in report["modules"].items() if not Path(file).resolve().is_relative_to(site)}
    assert not outside, f"modules imported from outside the installed wheel: {outside}"
    assert {"renderloop", "renderloop.models.stylegan2", "renderloop.trainers.aign"} <= set(report["modules"])

    conf = ROOT / "renderloop" / "conf"
    methods = {p.relative_to(conf / "method").with_suffix("").as_posix() for p in (conf / "method").rglob("*.yaml")}
    assert set(report["methods"]) == methods and report["methods"]["simgan_debug"] == "simgan"
    assert set(report["sources"]) == {p.stem for p in (conf / "source").glob("*.yaml")}
    assert report["sources"]["debug"] == "simulator"


@pytest.mark.slow
def test_installed_console_script_runs_and_exports_models(wheel, tmp_path):
    script = wheel["site"] / "bin" / "renderloop"
    run_dir = tmp_path / "run"
    args = ["run", "method=simgan_debug", "engine=debug", "device=cpu", "samples_per_shard=8"]
    args += [f"storage.root={tmp_path / 'data'}", f"run_dir={run_dir}"]
    _run([script, *args], cwd=tmp_path, env=_isolated_env(wheel["site"]), timeout=600)
    assert sorted(p.name for p in (run_dir / "models").glob("*.pt")), "the run exported no models"
