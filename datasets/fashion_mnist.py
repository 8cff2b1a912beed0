"""Fashion-MNIST as a source: labeled 28×28 greyscale clothing images from the IDX files of
Debian's ``dataset-fashion-mnist`` package, optionally restricted to some classes and to a slice
of the split. ``generate(seed, batch_index)`` draws images with replacement from that pool, so two
sources over disjoint ``index_range`` slices (or class sets) make disjoint streams.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from renderloop.config import ConfigError, check_image_size, check_number

from .seeding import batch_seed, config_digest

__all__ = ["CLASS_NAMES", "read_idx", "load_fashion_mnist", "FashionMNISTConfig", "FashionMNIST"]

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
"""Class names in label order (label ``k`` is ``CLASS_NAMES[k]``)."""

SPLITS = {"train": "train", "test": "t10k"}  # split → file prefix
VERSION = "1"
SIZE = 28  # stored image size
PAD_TO = 32  # the default resolution: zero padding keeps pixels exact

# IDX type codes → big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, detected from its first bytes).

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    int32; the values follow in C order.

    Returns:
        The array with the header's shape, in native byte order.

    Raises:
        ValueError: bad magic, unsupported type code, or a data size that does not match the header;
            the message names the file.
    """
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"read_idx(): {path}: broken gzip stream: {err}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(f"read_idx(): {path}: bad magic; expected 00 00 <type> <ndim>, got {data[:4].hex(' ')}")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"read_idx(): {path}: unsupported type code 0x{code:02x}; known: {sorted(_IDX_TYPES)}")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise ValueError(f"read_idx(): {path}: truncated header; expected {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - start != expected:
        raise ValueError(
            f"read_idx(): {path}: header shape {shape} needs {expected} data bytes; got {len(data) - start}"
        )
    return np.frombuffer(data, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a split (``train``: 60,000, ``test``: 10,000) from the IDX files in ``root``.

    Files are ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (or the same names without ``.gz``).

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` in ``[0, 10)``, in file order.

    Raises:
        FileNotFoundError: a file is missing (Debian's ``dataset-fashion-mnist`` package provides them).
        ValueError: an unknown split, or files that do not hold matching images and labels.
    """
    if split not in SPLITS:
        raise ValueError(f"load_fashion_mnist(): split must be one of {sorted(SPLITS)}; got {split!r}")
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = Path(root) / f"{SPLITS[split]}-{kind}-ubyte.gz"
        path = next((p for p in (name, name.with_suffix("")) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"missing {name}; Debian's dataset-fashion-mnist package provides it "
                "(apt install dataset-fashion-mnist)"
            )
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(
            f"load_fashion_mnist(): {root}: images must be uint8 [N, 28, 28]; got {images.dtype} {images.shape}"
        )
    if labels.shape != images.shape[:1] or labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(f"load_fashion_mnist(): {root}: labels must be [{len(images)}] in [0, 10); got {labels.shape}")
    return images, labels.astype(np.int64)


@dataclass
class FashionMNISTConfig:
    """Settings of the Fashion-MNIST source (Hydra group ``source``, option ``fashion_mnist``)."""

    root: str = "/usr/share/datasets/fashion-mnist"
    """Folder of the IDX files (where Debian's ``dataset-fashion-mnist`` installs them)."""
    split: str = "train"
    """``train`` (60,000 images) or ``test`` (10,000)."""
    classes: list[int] | None = None
    """Keep only these labels (a class-biased pool); ``None`` keeps all ten."""
    index_range: tuple[float, float] = (0.0, 1.0)
    """Fraction ``[lo, hi)`` of the split used, in file order after class filtering."""
    resolution: int = 32
    """Square output size: 32 zero-pads the 28×28 images; other sizes resize them (bilinear)."""
    batch_size: int = 64
    """Images per ``generate`` call."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if self.split not in SPLITS:
            raise bad("split", f"must be one of {sorted(SPLITS)}; got {self.split!r}")
        if self.classes is not None and (
            not self.classes or any(not isinstance(c, int) or not 0 <= c < len(CLASS_NAMES) for c in self.classes)
        ):
            raise bad("classes", f"must be null or a non-empty list of labels in [0, 9]; got {self.classes}")
        check_number("source.index_range", self.index_range, at_least=0, at_most=1, strict=True)
        if self.resolution < 8:
            raise bad("resolution", f"must be >= 8; got {self.resolution}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1; got {self.batch_size}")
        check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))

    def digest(self) -> str:
        return config_digest(self)


class FashionMNIST:
    """Fashion-MNIST images as a source: ``generate(seed, batch_index)`` → ``rgb``, ``label``, ``index``.

    The selected pool is loaded once, at construction, and kept on ``device`` as uint8.
    """

    name = "fashion_mnist"

    def __init__(self, config: FashionMNISTConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or FashionMNISTConfig()
        self.device = torch.device(device)
        try:
            images, labels = load_fashion_mnist(cfg.root, cfg.split)
        except FileNotFoundError as err:
            raise ConfigError("source.root", str(err)) from None
        keep = np.arange(len(labels)) if cfg.classes is None else np.flatnonzero(np.isin(labels, cfg.classes))
        lo, hi = (round(f * len(keep)) for f in cfg.index_range)  # same rounding: adjacent ranges are disjoint
        keep = keep[lo:hi]
        if len(keep) == 0:
            raise ConfigError("source.index_range", f"selects no images of {cfg.split} classes {cfg.classes}")
        self.images = torch.from_numpy(images[keep]).to(self.device)  # (P, 28, 28) uint8
        self.labels = torch.from_numpy(labels[keep]).to(self.device)  # (P,) int64
        self.indices = torch.from_numpy(keep.astype(np.int64)).to(self.device)  # (P,) position in the split

    def __len__(self) -> int:
        """Number of images in the selected pool."""
        return len(self.indices)

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": VERSION, "split": self.config.split, "config": self.config.digest()}

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        """One batch, a pure function of ``(seed, batch_index)`` (the same on every device).

        Returns:
            ``rgb`` float32 ``[B, 3, S, S]`` in ``[0, 1]`` (grey in all three channels), ``label``
            int64 ``[B]`` and ``index`` int64 ``[B]`` (the image's position in the split's files).
        """
        gen = torch.Generator().manual_seed(batch_seed(seed, batch_index))
        # Indices are drawn on the CPU so that every device picks the same images.
        pick = torch.randint(len(self), (self.config.batch_size,), generator=gen).to(self.device)
        x = self.images[pick].unsqueeze(1).float() / 255  # (B, 1, 28, 28)
        res = self.config.resolution
        if res == PAD_TO:
            pad = (PAD_TO - SIZE) // 2
            x = F.pad(x, (pad, pad, pad, pad))
        elif res != SIZE:
            x = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return {"rgb": x.expand(-1, 3, -1, -1).contiguous(), "label": self.labels[pick], "index": self.indices[pick]}

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """Schema samples (``rgb.png``, ``meta.json`` with ``label`` and ``index``) from a batch."""
        rgb = (batch["rgb"].detach().cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        labels, indices = batch["label"].tolist(), batch["index"].tolist()
        meta = self.meta
        return [
            {
                "__key__": key,
                "rgb.png": rgb[i],
                "meta.json": {**meta, "seed": int(seed), "label": labels[i], "index": indices[i]},
            }
            for i, (key, seed) in enumerate(zip(keys, seeds, strict=True))
        ]
