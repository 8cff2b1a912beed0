"""A source's batch → a chunk: image fields quantized where the source made them, one copy to the host.

Sources name their batch tensors after the schema's image fields (``rgb``, ``mask``, ``seg``,
``depth``, ``normal``: see ``IMAGE_TENSORS``). Those are converted as the sources' ``to_samples``
converts them and quantized on the batch's device (``encodings.encode``); then every tensor of
the batch travels to the host in a single transfer. The other fields (keypoints, cameras,
metadata) come from the source on that host copy, as columns (``source.to_columns``, where a
source has it) or per sample (``to_samples``, given 1×1 stand-ins for the images it no longer
needs to convert), and :func:`chunk_from_columns` stacks them field by field. A source whose
image tensors have another layout keeps them full size: its ``to_samples`` converts them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .chunks import Chunk, plain_values
from .encodings import ENCODINGS, FLOAT16_MAX, encode

__all__ = [
    "IMAGE_TENSORS",
    "HostCopy",
    "chunk_from_columns",
    "chunk_from_samples",
    "columns_of",
    "quantize_batch",
    "rows_of",
]


@dataclass(frozen=True)
class ImageTensor:
    """How a batch tensor becomes a schema field (as the sources' ``to_samples`` convert it)."""

    field: str
    ndim: int
    spatial: tuple[int, int]
    """The H and W dimensions (shrunk to 1 in the stand-in ``to_samples`` receives)."""
    to_schema: Callable[[torch.Tensor], torch.Tensor]
    channels: tuple[int, int] | None = None
    """(dimension, size) the layout requires, e.g. RGB's channels."""


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """float ``[B, 3, H, W]`` in [0, 1] → uint8 ``[B, H, W, 3]``."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


IMAGE_TENSORS: dict[str, ImageTensor] = {
    "rgb": ImageTensor("rgb.png", 4, (2, 3), _rgb, (1, 3)),
    # bool or {0, 1} [B, H, W] → bool
    "mask": ImageTensor("mask.png", 3, (1, 2), lambda x: x.to(torch.uint8) != 0),
    # integer labels [B, H, W] → uint8
    "seg": ImageTensor("seg.png", 3, (1, 2), lambda x: x.clamp(0, 255).to(torch.uint8)),
    # camera depth [B, H, W]
    "depth": ImageTensor("depth.npy", 3, (1, 2), lambda x: x),
    # camera normals [B, H, W, 3]
    "normal": ImageTensor("normal.npy", 4, (1, 2), lambda x: x, (3, 3)),
}  # fmt: skip


def _fits(spec: ImageTensor, x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.ndim == spec.ndim
        and (spec.channels is None or x.shape[spec.channels[0]] == spec.channels[1])
    )


class HostCopy:
    """Copies a set of device tensors to the host in one transfer (through a reused pinned
    buffer on CUDA), and gives them back as host tensors viewing that copy: valid until the
    next call, so a producer writes a batch before it copies the next."""

    def __init__(self) -> None:
        self._pinned: torch.Tensor | None = None

    def __call__(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moving = {k: t for k, t in tensors.items() if t.device.type != "cpu"}
        if not moving:
            return dict(tensors)
        layout, parts, offset = {}, [], 0
        for name, t in moving.items():
            flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
            pad = -flat.numel() % 16  # every tensor starts 16-byte aligned in the copy
            layout[name] = (offset, t.dtype, t.shape)
            parts += [flat, flat.new_zeros(pad)] if pad else [flat]
            offset += flat.numel() + pad
        packed = torch.cat(parts)
        device = packed.device
        if device.type == "cuda":
            if self._pinned is None or self._pinned.numel() < offset:
                self._pinned = torch.empty(offset, dtype=torch.uint8, pin_memory=True)
            host = self._pinned[:offset]
            host.copy_(packed, non_blocking=True)
            torch.cuda.current_stream(device).synchronize()
        else:
            host = packed.cpu()
        out = dict(tensors)
        for name, (start, dtype, shape) in layout.items():
            size = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
            out[name] = host[start : start + size].view(dtype).view(shape)
        return out


def quantize_batch(
    batch: Mapping[str, Any], fields: set[str] | None, copy: HostCopy
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, Any]]:
    """Quantize a source's image tensors on their device and bring the whole batch to the host at once.

    Args:
        batch: a source's ``generate`` output, on any device.
        fields: schema fields to keep (None: all).
        copy: the producer's ``HostCopy``.

    Returns:
        ``(stored, widths, host_batch)``: stored host arrays ``[B, ...]`` of the image fields, by
        schema field, and the image width of each; the batch for ``to_samples``: every other
        tensor copied to the host, the quantized images replaced by 1×1 stand-ins.

    Raises:
        ValueError: a depth beyond float16's range.
    """
    on_device: dict[str, torch.Tensor] = {}
    stand_ins: dict[str, torch.Tensor] = {}
    widths: dict[str, int] = {}
    checks: dict[str, torch.Tensor] = {}
    for key, x in batch.items():
        spec = IMAGE_TENSORS.get(key)
        if spec is None or not _fits(spec, x):
            if isinstance(x, torch.Tensor):
                on_device[key] = x
            continue
        if fields is None or spec.field in fields:
            stored = encode(spec.field, spec.to_schema(x))
            on_device[f"field:{spec.field}"] = stored
            widths[spec.field] = x.shape[spec.spatial[1]]
            if stored.dtype == torch.float16:  # travels with the batch: no extra sync
                checks[spec.field] = (torch.isinf(stored) & torch.isfinite(x)).any()
        shape = [1 if d in spec.spatial else n for d, n in enumerate(x.shape)]
        stand_ins[key] = torch.zeros(shape, dtype=x.dtype)
    if checks:
        on_device["checks"] = torch.stack(list(checks.values()))
    host = copy(on_device)
    if checks:
        flags = host.pop("checks").tolist()
        if bad := [name for name, flag in zip(checks, flags, strict=True) if flag]:
            raise ValueError(f"{', '.join(bad)}: values beyond float16's range (±{FLOAT16_MAX:g}); got larger ones")
    stored = {k.removeprefix("field:"): v for k, v in host.items() if k.startswith("field:")}
    rest = {k: v for k, v in host.items() if not k.startswith("field:")}
    rest.update({k: v for k, v in batch.items() if not isinstance(v, torch.Tensor)})
    return stored, widths, {**rest, **stand_ins}


def columns_of(samples: list[dict[str, Any]]) -> dict[str, list]:
    """Per-sample schema dicts (``to_samples``) as columns: field → list of values (``__key__`` too).

    Raises:
        ValueError: samples with different fields.
    """
    names = list(samples[0])
    if any(s.keys() != samples[0].keys() for s in samples):
        raise ValueError(f"samples of one batch have different fields; the first has {sorted(names)}")
    return {name: [s[name] for s in samples] for name in names}


def rows_of(value: Any, n: int) -> list:
    """A JSON column as ``n`` plain per-sample values: a list (made plain, see ``plain_values``),
    or a dict of ``[n, ...]`` columns (tensors, arrays, lists) as one dict per sample."""
    if not isinstance(value, Mapping):
        return plain_values(list(value))
    plain = {
        k: v.tolist() if isinstance(v, torch.Tensor | np.ndarray) else plain_values(list(v)) for k, v in value.items()
    }
    return [dict(zip(plain, row, strict=True)) for row in zip(*plain.values(), strict=True)] if plain else [{}] * n


def chunk_from_columns(
    key: str,
    columns: Mapping[str, Any],
    seeds: list[int],
    stored: Mapping[str, torch.Tensor] = {},  # noqa: B006 - read only
    widths: Mapping[str, int] = {},  # noqa: B006 - read only
) -> Chunk:
    """A chunk of one batch's columns (``__key__`` and schema fields, ``n`` samples each).

    Args:
        columns: ``__key__``: ``n`` keys; array fields: ``[n, ...]`` tensors or arrays in the
            schema layout, or lists of per-sample values; JSON fields: lists of ``n`` values (see
            :func:`rows_of`). Fields in ``stored`` are taken from there instead.
        stored, widths: image fields ``quantize_batch`` already encoded (their rows sliced to ``n``).
    """
    keys = list(columns["__key__"])
    n = len(keys)
    chunk = Chunk(key, keys, [int(s) for s in seeds[:n]])
    for name, column in columns.items():
        if name == "__key__":
            continue
        if name in stored:
            arr = stored[name][:n].numpy()
        elif name in ENCODINGS:
            arr = encode(name, _stacked(column)[:n]).numpy()
        else:
            chunk.values[name] = rows_of(column, n)[:n]
            continue
        chunk.arrays[name], chunk.encodings[name] = arr, ENCODINGS[name]
        if ENCODINGS[name] == "bits":
            chunk.widths[name] = widths.get(name) or _width(column)
    return chunk


def _width(column: Any) -> int:
    """The image width of a mask column (``[n, H, W]``, or a list of ``[H, W]``)."""
    return int(column.shape[-1] if isinstance(column, torch.Tensor | np.ndarray) else np.shape(column[0])[-1])


def _stacked(column: Any) -> torch.Tensor:
    if isinstance(column, torch.Tensor):
        return column
    if isinstance(column, np.ndarray):
        return torch.from_numpy(column)
    if all(isinstance(v, torch.Tensor) for v in column):
        return torch.stack(list(column))
    return torch.from_numpy(np.stack([np.asarray(v) for v in column]))


def chunk_from_samples(
    key: str,
    samples: list[dict[str, Any]],
    seeds: list[int],
    stored: Mapping[str, torch.Tensor] = {},  # noqa: B006 - read only
    widths: Mapping[str, int] = {},  # noqa: B006 - read only
) -> Chunk:
    """A chunk of ``samples`` (schema dicts, as ``to_samples`` makes them); see :func:`chunk_from_columns`."""
    return chunk_from_columns(key, columns_of(samples), seeds, stored, widths)
