"""``renderloop info``: what this installation has to work with."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = (
    "renderloop", "torch", "numpy", "deepspeed", "ray", "webdataset", "hydra-core",
    "omegaconf", "kornia", "trimesh", "prometheus-client", "pillow",
)  # fmt: skip


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect(renderer) -> dict[str, dict[str, str]]:
    """Versions, devices, renderer backends and compile cache of this process, as nested dicts."""
    import torch

    from renderloop.renderers.backends import backend_report

    cpu = platform.processor() or platform.machine()
    devices = {"cpu": f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"}
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices[f"cuda:{i}"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"
    if not torch.cuda.is_available():
        devices["cuda"] = "not available"
    cache = os.path.expanduser(renderer.compile_cache_dir)
    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "devices": devices,
        "renderer backends": backend_report(),
        "compile cache": {
            "renderer.compile_cache_dir": cache,
            "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
                "TORCHINDUCTOR_CACHE_DIR", f"(unset; a compiling renderer sets {cache}/inductor)"
            ),
        },
    }


def format_report(report: dict[str, dict[str, str]]) -> str:
    lines = []
    for section, rows in report.items():
        lines.append(f"{section}:")
        width = max(len(k) for k in rows)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows.items()]
    return "\n".join(lines)
