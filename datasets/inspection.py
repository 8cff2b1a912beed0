"""``renderloop inspect ROOT``: summary of a stream and a contact sheet of samples with labels.

Imported by the CLI on demand. The summary checks the ledger against the shards: which listed
shards are present (``renderloop run`` deletes consumed ones), and, for those read, that each
matches its checksum and holds the samples its entry counts. Damaged shards and unreadable or
duplicate ledger files are reported and passed over. Columns of the sheet: image; image with the
mask tinted and keypoints marked; depth as colour (near = warm); normals; part segmentation.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from renderloop.config import ConfigError, check_output_file
from renderloop.datasets.ledger import Ledger, LedgerEntry
from renderloop.datasets.reader import ShardFormatError, check_shard
from renderloop.datasets.schema import decode_sample
from renderloop.datasets.storage import Storage, check_root
from renderloop.datasets.storage import check_stream as check_stream_name


@dataclass
class InspectConfig:
    root: str = "???"
    stream: str = ""
    samples: int = 8
    output: str = "inspect.png"
    verify_all: bool = False
    """Read and check every present shard (by default only the oldest intact ones the summary and
    the contact sheet need: a large stream is not read whole)."""

    def __post_init__(self) -> None:
        check_root("root", self.root)
        if self.samples < 1:
            raise ConfigError("samples", f"must be >= 1 (rows of the contact sheet); got {self.samples}")
        check_output_file("output", self.output)
        if self.stream:
            check_stream_name("stream", self.stream)


def _streams(storage: Storage, stream: str) -> list[str]:
    if stream:
        if not storage.exists(f"{stream}/ledger"):
            there = ", ".join(_streams(storage, "")) or "none"
            raise ConfigError("stream", f"no such stream under {storage.url('')} (it has: {there}); got {stream!r}")
        return [stream]
    return [name for name in storage.list("") if storage.exists(f"{name}/ledger")]


@dataclass
class StreamCheck:
    """One stream as its ledger lists it and as reading its shards found it."""

    stream: str
    entries: list[LedgerEntry]
    closed: bool
    backlog_shards: int
    unreadable: dict[str, str]
    """Ledger files that could not be parsed, and why."""
    duplicates: list[str]
    """Ledger files ignored because another one lists their shard."""
    present: set[str] = field(default_factory=set)
    """Listed shards whose files exist."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Shards read that failed their checksum, did not parse, or hold another count than listed."""
    read: int = 0
    read_samples: int = 0
    """Samples found in the shards read."""
    read_listed: int = 0
    """Samples the ledger lists for the shards read."""
    fields: set[str] = field(default_factory=set)
    samples: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    """``(shard, raw sample)`` for the contact sheet, oldest first, from intact shards only."""
    reads: Counter[tuple[str, int]] = field(default_factory=Counter)
    """Read receipts (``engine.data.read_receipts``): reads per ``(shard, pass)``."""


def check_stream(storage: Storage, stream: str, rows: int, verify_all: bool = False) -> StreamCheck:
    """Read the oldest present shards until the fields and ``rows`` samples are known (every
    present shard with ``verify_all``), checking each against its ledger entry."""
    ledger = Ledger(storage, stream)
    entries = ledger.entries()
    unreadable, duplicates = dict(ledger.unreadable), sorted(ledger.duplicates)
    check = StreamCheck(stream, entries, ledger.closed, ledger.backlog(), unreadable, duplicates)
    check.reads = ledger.reads()
    on_disk = set(storage.list(ledger.rel("shards")))
    check.present = {e.shard for e in entries if e.shard in on_disk}
    for entry in entries:
        if entry.shard not in check.present:
            continue
        if not verify_all and check.fields and len(check.samples) >= rows:
            break
        _check_shard(storage, ledger, entry, check, rows)
    return check


def _check_shard(storage: Storage, ledger: Ledger, entry: LedgerEntry, check: StreamCheck, rows: int) -> None:
    try:
        raws = check_shard(storage.read_bytes(ledger.rel("shards", entry.shard)), entry)
    except FileNotFoundError:  # deleted since the listing (a reader consumed it)
        check.present.discard(entry.shard)
        return
    except (OSError, ValueError, tarfile.TarError, ShardFormatError) as err:
        raws, check.damaged[entry.shard] = [], str(err)
    check.read += 1
    check.read_listed += entry.count
    check.read_samples += len(raws)
    if raws and len(raws) != entry.count:  # the bytes match their checksum: the entry's count is wrong
        check.damaged[entry.shard] = f"ledger says {entry.count} samples, shard holds {len(raws)}"
    check.fields.update(k for raw in raws for k in raw if k != "__key__")
    check.samples += [(entry.shard, raw) for raw in raws[: max(rows - len(check.samples), 0)]]


def summary_lines(check: StreamCheck) -> list[str]:
    """The summary: the ledger's totals, then what the shards read confirmed."""
    entries = check.entries
    producers = ", ".join(sorted({e.producer for e in entries})) or "-"
    lines = [
        f"{check.stream}: {sum(e.count for e in entries)} samples in {len(entries)} shards, "
        f"{sum(e.bytes for e in entries) / 2**20:.1f} MiB, producers {producers}, "
        f"{'closed' if check.closed else 'open'}, backlog {check.backlog_shards} shards",
        f"  {len(entries)} shards listed, {len(check.present)} present, {len(entries) - len(check.present)} missing, "
        f"{len(check.damaged)} damaged; {check.read} read: {check.read_samples} samples "
        f"(ledger: {check.read_listed})",
    ]
    lines += [f"  damaged {shard}: {why}" for shard, why in check.damaged.items()]
    lines += [f"  skipped unreadable ledger file {name}: {why}" for name, why in check.unreadable.items()]
    lines += [f"  ignored duplicate ledger file {name}" for name in check.duplicates]
    lines.append(f"  fields: {' '.join(sorted(check.fields))}")
    if check.reads:
        twice = sorted(f"{shard} (pass {epoch}: {n}×)" for (shard, epoch), n in check.reads.items() if n > 1)
        passes = len({epoch for _, epoch in check.reads})
        lines.append(
            f"  read receipts: {sum(check.reads.values())} reads of {len({s for s, _ in check.reads})} shards "
            f"in {passes} pass{'es' * (passes > 1)}; {len(twice)} shards read more than once in a pass"
        )
        lines += [f"  read more than once: {item}" for item in twice]
    return lines


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
    """Draw ``rows`` samples of the oldest intact shards of ``stream`` into ``path``."""
    return _draw(check_stream(storage, stream, rows), path)


def _draw(check: StreamCheck, path: Path) -> Path:
    samples = [decode_sample(raw, shard) for shard, raw in check.samples]
    if not samples:
        raise ConfigError("stream", f"stream {check.stream!r} has no intact published samples")
    panels = [_panels(s) for s in samples]
    if not panels[0]:
        raise ConfigError("stream", f"stream {check.stream!r} has no image fields to show ({sorted(samples[0])})")
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
        check = check_stream(storage, stream, cfg.samples, cfg.verify_all)
        lines += summary_lines(check)
        if check.samples:
            out = Path(cfg.output)
            if len(streams) > 1:  # one sheet per stream
                out = out.with_name(f"{out.stem}-{stream}{out.suffix}")
            lines.append(f"  contact sheet: {_draw(check, out)}")
        elif check.entries:
            lines.append("  contact sheet: none (no intact shard present)")
    return lines
