"""``renderloop inspect ROOT``: summary of a stream and a contact sheet of samples with labels.

Imported by the CLI on demand. Columns: image; image with the mask tinted and keypoints marked;
depth as colour (near = warm); normals; part segmentation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from renderloop.config import ConfigError
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.reader import iter_tar_samples
from renderloop.datasets.schema import decode_sample
from renderloop.datasets.storage import Storage


@dataclass
class InspectConfig:
    root: str = "???"
    stream: str = ""
    samples: int = 8
    output: str = "inspect.png"


def _streams(storage: Storage, stream: str) -> list[str]:
    if stream:
        return [stream]
    return [name for name in storage.list("") if storage.exists(f"{name}/ledger")]


def summarize(storage: Storage, stream: str) -> dict:
    ledger = Ledger(storage, stream)
    entries = ledger.entries()
    fields: Counter[str] = Counter()
    if entries:
        first = storage.read_bytes(ledger.rel("shards", entries[0].shard))
        for raw in iter_tar_samples(first):
            fields.update(k for k in raw if k != "__key__")
    return {
        "stream": stream,
        "shards": len(entries),
        "samples": sum(e.count for e in entries),
        "bytes": sum(e.bytes for e in entries),
        "producers": sorted({e.producer for e in entries}),
        "fields": sorted(fields),
        "closed": ledger.closed,
        "backlog_shards": ledger.backlog(),
    }


def _colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB (a compact 'turbo'-like ramp)."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], -1)


def _panels(sample: dict) -> list[np.ndarray]:
    """The sample's image fields side by side; a stream may hold any subset (e.g. depth only)."""
    image = sample.get("rgb.png", sample.get("rgb.jpg"))
    if image is None:  # no RGB to draw the mask and keypoints on: the other maps alone
        return _maps(sample)
    rgb = image.permute(1, 2, 0).numpy()
    H, W = rgb.shape[:2]
    panels = [rgb]
    overlay = rgb.copy()
    if "mask.png" in sample:
        m = sample["mask.png"][0].numpy()[..., None]
        overlay = overlay * (1 - 0.4 * m) + 0.4 * m * np.array([1.0, 0.2, 0.2])
    if "kp2d.npy" in sample:
        colours = _colormap(np.linspace(0, 1, len(sample["kp2d.npy"])))
        for (u, v), c in zip(sample["kp2d.npy"].numpy(), colours, strict=True):
            if not (0 <= u < W and 0 <= v < H):
                continue  # off-image keypoints are not drawn
            j, i = int(np.floor(u)), int(np.floor(v))
            overlay[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = c
    panels.append(overlay)
    return [p[:H, :W] for p in panels + _maps(sample)]


def _maps(sample: dict) -> list[np.ndarray]:
    """Depth, normal and part-label panels of the fields the sample has."""
    panels = []
    if "depth.npy" in sample:
        d = sample["depth.npy"].numpy()
        fg = d > 0
        if fg.any():
            lo, hi = d[fg].min(), d[fg].max()
            panels.append(_colormap(1 - (d - lo) / max(hi - lo, 1e-6)) * fg[..., None])
    if "normal.npy" in sample:
        n = sample["normal.npy"].permute(1, 2, 0).numpy()
        panels.append((n * np.array([0.5, -0.5, -0.5]) + 0.5) * (np.abs(n).sum(-1, keepdims=True) > 0))
    if "seg.png" in sample:
        seg = sample["seg.png"].numpy()
        palette = _colormap(np.linspace(0, 1, 16))[np.arange(16) * 7 % 16]
        panels.append(palette[seg % 16] * (seg > 0)[..., None])
    return panels


def contact_sheet(storage: Storage, stream: str, rows: int, path: Path) -> Path:
    ledger = Ledger(storage, stream)
    samples = []
    for entry in ledger.entries():
        for raw in iter_tar_samples(storage.read_bytes(ledger.rel("shards", entry.shard))):
            samples.append(decode_sample(raw, entry.shard))
            if len(samples) >= rows:
                break
        if len(samples) >= rows:
            break
    if not samples:
        raise ConfigError("stream", f"stream {stream!r} has no published samples")
    panels = [_panels(s) for s in samples]
    if not panels[0]:
        raise ConfigError("stream", f"stream {stream!r} has no image fields to show ({sorted(samples[0])})")
    lines = [np.concatenate(p, axis=1) for p in panels]
    width = max(line.shape[1] for line in lines)
    sheet = np.concatenate([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines], axis=0)
    scale = max(1, 128 // samples[0]["rgb.png"].shape[-1]) if "rgb.png" in samples[0] else 1
    image = torch.from_numpy(np.clip(sheet, 0, 1)).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def run(cfg: InspectConfig) -> list[str]:
    storage = Storage(cfg.root)
    lines = []
    streams = _streams(storage, cfg.stream)
    if not streams:
        raise ConfigError("root", f"no stream under {cfg.root}")
    for stream in streams:
        s = summarize(storage, stream)
        lines.append(
            f"{s['stream']}: {s['samples']} samples in {s['shards']} shards, {s['bytes'] / 2**20:.1f} MiB, "
            f"producers {', '.join(s['producers']) or '-'}, {'closed' if s['closed'] else 'open'}, "
            f"backlog {s['backlog_shards']} shards"
        )
        lines.append(f"  fields: {' '.join(s['fields'])}")
        if s["samples"]:
            out = Path(cfg.output)
            if len(streams) > 1:  # one sheet per stream
                out = out.with_name(f"{out.stem}-{stream}{out.suffix}")
            lines.append(f"  contact sheet: {contact_sheet(storage, stream, cfg.samples, out)}")
    return lines
