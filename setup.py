"""renderloop: inverse graphics and sim-to-real training on synthetic data made while training runs.

The repository's top-level folders install as sub-packages of one import package, so nothing
shadows a popular top-level name (a top-level ``datasets`` would hide Hugging Face ``datasets``).
"""

from pathlib import Path

from setuptools import setup

SUBPACKAGES = ("renderers", "models", "datasets", "trainers", "cluster")
NESTED = ("renderloop.trainers.aign",)  # packages inside the sub-packages

setup(
    name="renderloop",
    version="0.1.0",
    description="Train inverse-graphics and sim-to-real methods on synthetic data made while training runs.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["renderloop", "renderloop.conf", *(f"renderloop.{name}" for name in SUBPACKAGES), *NESTED],
    package_dir={
        "renderloop": "renderloop",
        **{f"renderloop.{name}": name for name in SUBPACKAGES},
        **{name: name.removeprefix("renderloop.").replace(".", "/") for name in NESTED},
    },
    # The Hydra config tree ships as data of the importable `renderloop.conf` module.
    package_data={"renderloop.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"], "renderloop.cluster": ["dashboards/*"]},
    install_requires=[
        # torch is deliberately unpinned here: `make` pins the build for the machine it runs on.
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=9",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "prometheus-client>=0.17",
        "kornia>=0.7",
        "trimesh>=4",
        "webdataset>=0.2.86",
        "fsspec>=2023.1",
        "tqdm>=4.60",
        "tensorboardX>=2.6",
        "psutil>=5",
        "deepspeed>=0.14",
        "ray[default,data,train]>=2.40",
    ],
    # Triton comes with CUDA builds of torch; CPU tests run its kernels in its interpreter.
    extras_require={"test": ["pytest>=7", "ruff>=0.5", "triton>=3.0; platform_system == 'Linux'"]},
    entry_points={"console_scripts": ["renderloop = renderloop.cli:main"]},
)
