"""Unlabeled real images: a folder of PNG/JPG files, or the ``rgb`` field of an existing stream,
converted to RGB (grayscale replicated to three channels, alpha and palettes dropped), resized
(shorter side) and centre-cropped to a square, so a folder may mix sizes and modes; a file that
does not decode stops the source with an error naming it. Deterministic per ``(seed, batch_index)``:
each epoch is a seeded permutation of the images. Producers draw their orders independently, so
converting a folder into a stream exactly once per image takes one producer."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from renderloop.config import ConfigError, check_image_size
from renderloop.errors import InputError

from .ledger import Ledger
from .reader import iter_tar_samples
from .seeding import batch_seed
from .storage import Storage, check_root, check_stream

__all__ = ["ImageFolderConfig", "ImageFolder"]

EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class ImageFolderConfig:
    """Settings of the image-folder source (Hydra group ``source``, option ``image_folder``)."""

    path: str = "???"
    """Folder of images, or a storage root when ``stream`` is set."""
    stream: str = ""
    """Read the ``rgb`` field of this stream under ``path`` instead of image files."""
    resolution: int = 128
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ConfigError("source.resolution", f"must be >= 8; got {self.resolution}")
        if self.batch_size < 1:
            raise ConfigError("source.batch_size", f"must be >= 1; got {self.batch_size}")
        check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))
        if self.stream:  # a stream under a storage root, as storage.stream names one
            check_root("source.path", self.path)
            check_stream("source.stream", self.stream)


class ImageFolder:
    """Real images as a source: ``generate(seed, batch_index)`` → ``{"rgb": [B, 3, S, S]}``."""

    name = "image_folder"

    def __init__(self, config: ImageFolderConfig, device: torch.device | str = "cpu") -> None:
        self.config, self.device = config, torch.device(device)
        if config.stream:
            ledger = Ledger(Storage(config.path), config.stream)
            entries = ledger.entries()  # read once: the stream may grow meanwhile
            self._shards = {e.shard: ledger.rel("shards", e.shard) for e in entries}
            self._storage = ledger.storage
            self.items = [(e.shard, i) for e in entries for i in range(e.count)]
        else:
            root = Path(config.path)
            if not root.is_dir():
                raise ConfigError("source.path", f"no such folder: {root}")
            self.items = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not self.items:
            raise ConfigError("source.path", f"no images found in {config.path} {config.stream}".strip())
        self._cached: tuple[str, list[bytes]] | None = None
        self._order: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": "1", "path": self.config.path, "stream": self.config.stream}

    def _bytes(self, item) -> bytes:
        if isinstance(item, str):
            return Path(item).read_bytes()
        shard, index = item
        if self._cached is None or self._cached[0] != shard:
            data = self._storage.read_bytes(self._shards[shard])
            self._cached = (shard, [raw.get("rgb.png") or raw.get("rgb.jpg") for raw in iter_tar_samples(data)])
        return self._cached[1][index]

    def _load(self, item) -> torch.Tensor:
        try:
            image = np.asarray(Image.open(io.BytesIO(self._bytes(item))).convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a damaged or foreign file
            raise InputError(f"image_folder: {item} is not a readable image ({err})") from None
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
        size = self.config.resolution
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(
            x,
            size=(max(size, round(h * scale)), max(size, round(w * scale))),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        return x[0, :, top : top + size, left : left + size]

    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        n, B = len(self.items), self.config.batch_size
        images = []
        for k in range(batch_index * B, (batch_index + 1) * B):
            epoch, pos = divmod(k, n)
            images.append(self._load(self.items[int(self._permutation(seed, epoch)[pos])]))
        return {"rgb": torch.stack(images).to(self.device)}

    def _permutation(self, seed: int, epoch: int) -> torch.Tensor:
        """The seeded order of the images in ``epoch`` (cached for the current epoch)."""
        if self._order is None or self._order[0] != (seed, epoch):
            mixed = batch_seed(seed, epoch)
            self._order = (
                (seed, epoch),
                torch.randperm(len(self.items), generator=torch.Generator().manual_seed(mixed)),
            )
        return self._order[1]

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        rgb = (batch["rgb"].detach().cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        return [
            {"__key__": key, "rgb.png": rgb[i], "meta.json": {**self.meta, "seed": int(seed)}}
            for i, (key, seed) in enumerate(zip(keys, seeds, strict=True))
        ]
