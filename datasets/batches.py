"""What the reader hands out: shards as units of samples, and host batches assembled from them.

A shard becomes a list of *units*: each chunk of a version-2 shard is one, and the per-sample
records of a version-1 shard form one. A unit answers for its samples by row: its key, the
sample decoded (``sample``), or the stored arrays of a field for some rows (``stored``).
Batches are assembled field by field from those arrays (slices and gathers of the chunks, no
per-sample decoding) into one buffer (``host_batch.HostBatch``), decoded later on the device
that will use them (``host_batch.decode_batch``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from .chunks import HEADER, Chunk, no_cyclic_gc, parse_chunk
from .encodings import ENCODINGS, decode
from .host_batch import HostBatch, pack
from .schema import FIELDS, JSON_VALUES, NUMERIC_JSON, SchemaError, decode_sample
from .tar import tar_records

__all__ = ["SampleRecords", "Unit", "assemble", "read_units"]


class Unit(Protocol):
    """Samples of a shard, by row: a :class:`Chunk` or :class:`SampleRecords`."""

    shard: str
    keys: list[str]

    @property
    def count(self) -> int: ...

    @property
    def fields(self) -> list[str]: ...

    def sample(self, i: int) -> dict[str, Any]: ...


class SampleRecords:
    """The per-sample (version 1) records of a shard, decoded only when a row is used."""

    def __init__(self, raws: list[dict[str, bytes]], shard: str) -> None:
        self.raws, self.shard = raws, shard
        self.keys = [raw["__key__"] for raw in raws]

    @property
    def count(self) -> int:
        return len(self.raws)

    @property
    def fields(self) -> list[str]:
        return sorted(k for k in self.raws[0] if not k.startswith("__")) if self.raws else []

    def sample(self, i: int) -> dict[str, Any]:
        return decode_sample(self.raws[i], shard=self.shard)

    def stored(self, name: str, rows: Sequence[int]) -> tuple[np.ndarray, str, int | None]:
        """``(array [len(rows), ...], encoding, width)`` of ``rows``, decoded from their files into the
        layouts of ``encodings`` (``unorm8`` images, ``mask8`` and ``label8`` maps, ``float32`` arrays)."""
        try:
            values = [_stored_value(name, self.raws[r][name]) for r in rows]
        except Exception as err:  # noqa: BLE001 - any decoder failure means malformed data
            raise SchemaError(f"shard {self.shard}: malformed field {name!r}: {err}") from None
        encoding = {"rgb.png": "unorm8", "rgb.jpg": "unorm8", "mask.png": "mask8", "seg.png": "label8"}
        if name in ("view.txt", "group.txt"):
            return np.asarray(values, dtype=np.int64), "int64", None
        return np.stack(values), encoding.get(name, "float32"), None

    def json_values(self, name: str, rows: Sequence[int]) -> list:
        return [json.loads(self.raws[r][name]) for r in rows]


def _stored_value(name: str, data: bytes) -> Any:
    if name in ("rgb.png", "rgb.jpg"):
        image = Image.open(io.BytesIO(data))
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if name in ("mask.png", "seg.png"):
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    if name in ("view.txt", "group.txt"):
        return int(data.decode())
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32, copy=False)


def read_units(data: bytes, shard: str, fields: set[str] | None = None) -> list[Chunk | SampleRecords]:
    """The units of a shard's bytes (already checked against its checksum), in shard order.

    Every chunk is parsed and checked before any unit is returned, so a damaged shard is refused
    whole (``ChunkError``, ``tarfile.TarError``), never half-read.
    """
    units: list[Chunk | SampleRecords] = []
    raws: list[dict[str, bytes]] = []
    with no_cyclic_gc():
        for key, record in tar_records(data):
            if HEADER in record:
                if raws:
                    units.append(SampleRecords(raws, shard))
                    raws = []
                units.append(parse_chunk(key, record, shard, fields))
            else:
                kept = {k: bytes(v) for k, v in record.items() if fields is None or k in fields}
                raws.append({"__key__": key, **kept})
    if raws:
        units.append(SampleRecords(raws, shard))
    return units


def _stored(unit, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """``(array, row index into it, encoding, width)``: a chunk's whole array (a view), or a
    per-sample unit's decoded rows."""
    if isinstance(unit, Chunk):
        return unit.arrays[name], rows, unit.encodings[name], unit.widths.get(name)
    arr, encoding, width = unit.stored(name, rows.tolist())
    return arr, np.arange(len(rows)), encoding, width


@dataclass
class _Columns:
    """A JSON field of many samples as columns: the numbers of one dtype side by side in one
    matrix (so a batch gathers each matrix once), strings as lists."""

    keys: list[str]
    blocks: dict[str, np.ndarray] = field(default_factory=dict)
    """dtype name → ``[n, width]``."""
    layout: dict[str, tuple[str, int, tuple[int, ...]]] = field(default_factory=dict)
    """key → (dtype name, first column, shape of one sample's value)."""
    lists: dict[str, list] = field(default_factory=dict)

    @property
    def signature(self) -> tuple:
        widths = tuple(sorted((d, b.shape[1]) for d, b in self.blocks.items()))
        return tuple(self.keys), tuple(sorted(self.layout.items())), widths

    def value(self, r: int) -> dict[str, Any]:
        """Row ``r`` as the plain JSON value it came from."""
        out = {}
        for key in self.keys:
            if key in self.lists:
                out[key] = self.lists[key][r]
            else:
                dtype, start, shape = self.layout[key]
                out[key] = self.blocks[dtype][r, start : start + math.prod(shape)].reshape(shape).tolist()
        return out


_SCALARS = {bool: np.bool_, int: np.int64, float: np.float64}


def _columns(name: str, values: list) -> _Columns | None:
    """JSON values as columns, as ``default_collate`` stacks their decoded samples: numbers of
    ``NUMERIC_JSON`` fields as float32, other ints, floats and bools as int64, float64 and bool,
    strings as lists. None for values that are not flat records with one set of keys."""
    if not values or not all(isinstance(v, dict) for v in values):
        return None
    keys = list(values[0])
    if any(v.keys() != values[0].keys() for v in values):
        return None
    columns, parts = _Columns(keys), {}
    for key in keys:
        column = [v[key] for v in values]
        if name in NUMERIC_JSON:
            try:
                arr = np.asarray(column, dtype=np.float32)
            except ValueError:  # ragged
                return None
        else:
            kinds = {type(x) for x in column}
            if kinds == {str}:
                columns.lists[key] = column
                continue
            if len(kinds) != 1 or (kind := kinds.pop()) not in _SCALARS:
                return None
            arr = np.asarray(column, dtype=_SCALARS[kind])
        flat = parts.setdefault(arr.dtype.name, [])
        columns.layout[key] = (arr.dtype.name, sum(p.shape[1] for p in flat), arr.shape[1:])
        flat.append(arr.reshape(len(values), -1))
    columns.blocks = {dtype: np.concatenate(p, axis=1) for dtype, p in parts.items()}
    return columns


def _json_columns(unit, name: str, rows: np.ndarray) -> tuple[_Columns | None, np.ndarray, list]:
    """``(columns or None, row index into them, the rows' values)`` of a JSON field; a chunk's
    columns are made once and kept."""
    if isinstance(unit, Chunk):
        if name not in unit.columns:
            unit.columns[name] = _columns(name, unit.values[name])
        columns = unit.columns[name]
        values = [] if columns is not None else [unit.values[name][r] for r in rows]
        return columns, rows, values
    values = unit.json_values(name, rows.tolist())
    return _columns(name, values), np.arange(len(rows)), values


def _scatter(out: np.ndarray, pos: np.ndarray, arr: np.ndarray, rows: np.ndarray) -> None:
    """``out[pos] = arr[rows]`` in a single copy: one ``take`` where ``pos`` is a run (always with
    one unit), else row by row for large rows (a fancy assignment would copy them twice)."""
    if pos[-1] - pos[0] == len(pos) - 1:
        np.take(arr, rows, axis=0, out=out[pos[0] : pos[-1] + 1])
    elif arr[0].nbytes >= 4096:
        for p, r in zip(pos.tolist(), rows.tolist(), strict=True):
            out[p] = arr[r]
    else:
        out[pos] = arr.take(rows, axis=0)


def assemble(items: Sequence[tuple[Any, int]], shared: bool = False) -> HostBatch:
    """One host batch of ``items`` (``(unit, row)``, in batch order), field by field, in one buffer.

    Args:
        items: the batch's samples; every unit must hold the same fields with the same shapes.
        shared: put the buffer in shared memory (a dataloader worker).

    Returns:
        Stored arrays ``[B, ...]`` under the field's name without extension (``rgb``), decoded on
        the device later (``host_batch.decode_batch``); JSON fields collated as a trainer's batch
        holds them (``cam``: dict of float32 ``[B, ...]``; ``meta``: as ``default_collate`` does);
        ``key``: the sample keys. Where the units disagree on a field's encoding (a stream that
        changed format), that field is decoded here.

    Raises:
        SchemaError: units with different fields or shapes.
    """
    groups: dict[int, tuple[Any, list[int], list[int]]] = {}
    for pos, (unit, row) in enumerate(items):
        group = groups.setdefault(id(unit), (unit, [], []))
        group[1].append(pos)
        group[2].append(row)
    index = [(unit, np.asarray(positions), np.asarray(rows)) for unit, positions, rows in groups.values()]
    fields = index[0][0].fields
    if any(unit.fields != fields for unit, _, _ in index):
        raise SchemaError(f"a batch mixes samples with different fields: { {u.shard: u.fields for u, _, _ in index} }")
    if unknown := sorted(set(fields) - set(FIELDS)):
        raise SchemaError(f"shard {index[0][0].shard}: unknown fields {unknown}")
    arrays: list = []
    lists: dict[tuple[str, ...], list] = {}
    for name in fields:
        key = name.partition(".")[0]
        if name in ENCODINGS:
            arrays.append(_array_field(key, name, index, len(items)))
        else:
            _flatten((key,), _json_field(name, index, len(items)), arrays, lists)
    lists[("key",)] = [unit.keys[row] for unit, row in items]
    return pack(arrays, lists, shared)


def _flatten(path: tuple[str, ...], value: Any, arrays: list, lists: dict) -> None:
    """A collated JSON field's tensors into ``arrays`` (copied into the batch) and its lists into ``lists``."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten((*path, k), v, arrays, lists)
    elif isinstance(value, torch.Tensor):
        arr = value.numpy()
        arrays.append((path, arr.dtype, arr.shape, None, lambda out, arr=arr: np.copyto(out, arr)))
    else:
        lists[path] = value


def _array_field(key: str, name: str, index: list, B: int) -> tuple:
    """``(path, dtype, shape, codec, fill)`` of an array field: gathered from the units' stored
    arrays, or decoded here when their encodings differ."""
    parts = [(_stored(unit, name, rows), positions) for unit, positions, rows in index]
    layouts = {(arr.shape[1:], arr.dtype, encoding, width) for (arr, _, encoding, width), _ in parts}
    if len(layouts) == 1:
        shape, dtype, encoding, width = layouts.pop()

        def gather(out: np.ndarray) -> None:
            for (arr, rows, _, _), positions in parts:
                _scatter(out, positions, arr, rows)

        return (key,), dtype, (B, *shape), (name, encoding, width), gather
    decoded = [
        (decode(name, enc, torch.from_numpy(arr.take(rows, axis=0)), w), pos) for (arr, rows, enc, w), pos in parts
    ]
    if len({tuple(d.shape[1:]) for d, _ in decoded}) > 1:
        raise SchemaError(f"a batch mixes {name} of shapes {sorted({tuple(d.shape[1:]) for d, _ in decoded})}")
    full = torch.empty((B, *decoded[0][0].shape[1:]), dtype=decoded[0][0].dtype)
    for d, positions in decoded:
        full[torch.from_numpy(positions)] = d
    arr = full.numpy()
    return (key,), arr.dtype, arr.shape, None, lambda out: np.copyto(out, arr)


def _json_field(name: str, index: list, B: int) -> Any:
    """A JSON field collated: block by block when every unit has columns of one layout."""
    parts = [(_json_columns(unit, name, rows), positions) for unit, positions, rows in index]
    columns = [c for (c, _, _), _ in parts]
    if all(c is not None for c in columns) and len({c.signature for c in columns}) == 1:
        first, blocks = columns[0], {}
        for dtype, block in first.blocks.items():
            blocks[dtype] = np.empty((B, block.shape[1]), block.dtype)
            for (c, rows, _), positions in parts:
                _scatter(blocks[dtype], positions, c.blocks[dtype], rows)
        out: dict[str, Any] = {}
        for key in first.keys:
            if key in first.lists:
                values: list[Any] = [None] * B
                for (c, rows, _), positions in parts:
                    for p, r in zip(positions.tolist(), rows.tolist(), strict=True):
                        values[p] = c.lists[key][r]
                out[key] = values
            else:
                dtype, start, shape = first.layout[key]
                column = blocks[dtype][:, start : start + math.prod(shape)]
                out[key] = torch.from_numpy(np.ascontiguousarray(column).reshape(B, *shape))
        return out
    values = [None] * B  # of different layouts: as default_collate stacks their decoded samples
    for (c, rows, vals), positions in parts:
        if c is not None:
            vals = [c.value(r) for r in rows.tolist()]
        for p, v in zip(positions.tolist(), vals, strict=True):
            values[p] = v
    return default_collate([JSON_VALUES[name](v) for v in values])
