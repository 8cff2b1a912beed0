"""Chunked records (shard format version 2): a whole batch of samples per record, one array per field.

A record ``<chunk>`` holds ``<chunk>.chunk.json`` (the header), one ``<chunk>.<stem>.npy`` per
array field (``[B, ...]`` in the field's encoding, see ``encodings``) and one
``<chunk>.<stem>.json`` per JSON field (a list of B values). The header says what to expect::

    {"format": 2, "count": B,
     "keys": {"prefix": "p0_000000007_", "start": 0, "width": 4},   # or a list of B keys
     "seeds": [7, 7, ...],                                           # B batch indices
     "fields": {"rgb.png": {"member": "rgb.npy", "encoding": "unorm8", "dtype": "uint8",
                            "shape": [B, H, W, 3]},
                "mask.png": {..., "encoding": "bits", "shape": [B, H, 2], "width": W},
                "cam.json": {"member": "cam.json", "encoding": "json"}, ...}}

A mask that is exactly the nonzero pixels of the chunk's part labels (``seg.png``) is not stored:
its spec says ``"derived": "seg.png"`` and names no member, and the reader computes it.

Sample ``i`` of the chunk is row ``i`` of every array and item ``i`` of every list; its key is
``prefix + str(start + i).zfill(width)``. Arrays are read as views of the shard's bytes; every
member is checked against the header (dtype, shape, count) before any sample is used.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from renderloop.errors import RenderloopError

from .encodings import ENCODINGS, decode, member_name
from .schema import FIELDS, JSON_VALUES, SchemaError, check_key

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "Chunk",
    "ChunkError",
    "ShardFormatError",
    "chunk_members",
    "no_cyclic_gc",
    "parse_chunk",
    "plain_values",
]

FORMAT_VERSION = 2
HEADER = "chunk.json"


class ShardFormatError(RenderloopError):
    """A shard written in a format (version, field, encoding) this reader does not know: update renderloop."""


class ChunkError(SchemaError):
    """A chunk whose members disagree with its header (the shard is skipped like a corrupt one)."""


@dataclass(eq=False)
class Chunk:
    """One record of a version-2 shard: ``count`` samples, field by field.

    ``arrays`` hold ``[count, ...]`` arrays in their stored encoding (read-only views of the shard
    when parsed), ``values`` the JSON fields as lists of ``count`` plain values.
    """

    key: str
    keys: list[str]
    seeds: list[int]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)
    values: dict[str, list] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    """Image width of each ``bits`` mask."""
    shard: str = "?"
    columns: dict[str, Any] = field(default_factory=dict, repr=False)
    """JSON fields turned into columns, kept by the reader once made (``batches``)."""

    @property
    def count(self) -> int:
        return len(self.keys)

    @property
    def fields(self) -> list[str]:
        return sorted([*self.arrays, *self.values])

    def select(self, fields: set[str] | None) -> Chunk:
        """The chunk with only ``fields`` (None: all)."""
        if fields is None:
            return self
        keep = {f: a for f, a in self.arrays.items() if f in fields}
        return replace(self, arrays=keep, values={f: v for f, v in self.values.items() if f in fields})

    def head(self, n: int) -> Chunk:
        """The first ``n`` samples."""
        return replace(
            self,
            keys=self.keys[:n],
            seeds=self.seeds[:n],
            arrays={f: a[:n] for f, a in self.arrays.items()},
            values={f: v[:n] for f, v in self.values.items()},
        )

    def sample(self, i: int) -> dict[str, Any]:
        """Sample ``i`` decoded exactly as ``schema.decode_sample`` decodes a per-sample record."""
        out: dict[str, Any] = {"__key__": self.keys[i]}
        for name, arr in self.arrays.items():
            encoding = self.encodings[name]
            if encoding == "int64":
                out[name] = int(arr[i])
            else:
                one = torch.from_numpy(np.array(arr[i : i + 1]))
                out[name] = decode(name, encoding, one, self.widths.get(name))[0]
        for name, values in self.values.items():
            out[name] = JSON_VALUES[name](values[i])
        return out

    def schema_value(self, name: str, i: int) -> Any:
        """Sample ``i``'s ``name`` as ``schema.encode_sample`` takes it (for per-sample export)."""
        if name in self.values:
            return self.values[name][i]
        arr, encoding = self.arrays[name], self.encodings[name]
        if encoding in ("unorm8", "label8", "float32"):
            return arr[i]
        if encoding == "int64":
            return int(arr[i])
        one = decode(name, encoding, torch.from_numpy(np.array(arr[i : i + 1])), self.widths.get(name))[0]
        if encoding == "bits":  # [1, H, W] in {0, 1} → uint8 0/255 [H, W]
            return (one[0] * 255).to(torch.uint8).numpy()
        if encoding == "snorm8":  # [3, H, W] → [H, W, 3]
            return one.permute(1, 2, 0).numpy()
        return one.numpy()

    def export(self, i: int) -> Mapping[str, bytes]:
        """Sample ``i`` as a per-sample record (``schema.encode_sample``'s bytes), encoded on access."""
        return _Exported(self, i)


class _Exported(Mapping):
    """A chunk's sample as version-1 bytes; a field is encoded (PNG, NPY, JSON) only when read."""

    def __init__(self, chunk: Chunk, i: int) -> None:
        self.chunk, self.i = chunk, i

    def __getitem__(self, name: str):
        if name == "__key__":
            return self.chunk.keys[self.i]
        if name not in self.chunk.arrays and name not in self.chunk.values:
            raise KeyError(name)
        return FIELDS[name].encode(self.chunk.schema_value(name, self.i))

    def __iter__(self) -> Iterator[str]:
        return iter(["__key__", *self.chunk.fields])

    def __len__(self) -> int:
        return 1 + len(self.chunk.fields)


@contextlib.contextmanager
def no_cyclic_gc():
    """Pause the cyclic garbage collector while a batch's JSON values are built or parsed.

    They are tens of thousands of small acyclic containers (reference counting frees them), and
    the collector's passes over them cost more than making them. Process-wide, like ``gc``
    itself; it is switched back on afterwards only if it was on.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


# -- writing ----------------------------------------------------------------------------------


def _keys_header(keys: Sequence[str]) -> dict | list[str]:
    """Keys numbered ``prefix + zero-padded index`` as a range, any others as a list."""
    match = re.fullmatch(r"(.*?)(\d+)", keys[0]) if keys else None
    if match:
        prefix, start, width = match[1], int(match[2]), len(match[2])
        if all(k == f"{prefix}{start + i:0{width}d}" for i, k in enumerate(keys)):
            return {"prefix": prefix, "start": start, "width": width}
    return list(keys)


def _npy_header(arr: np.ndarray) -> bytes:
    """An NPY 1.0 header for a C-ordered ``arr`` (what ``np.save`` writes before the data)."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(arr.dtype)!r}, 'fortran_order': False, 'shape': {arr.shape!r}, }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"  # data starts 64-byte aligned
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def chunk_members(chunk: Chunk) -> list[tuple[str, list]]:
    """The tar members of a chunk, ``(name, buffers)``: its header, then one member per field.

    Array payloads are passed as views (no copy). Raises ``SchemaError`` naming the chunk for a
    key with a dot, a field outside the schema, or a field whose length is not ``count``.
    """
    check_key(chunk.key)
    for key in chunk.keys:
        check_key(key)
    n = chunk.count
    fields: dict[str, dict] = {}
    members: list[tuple[str, list]] = []
    stems: dict[str, str] = {}
    for name in chunk.fields:
        if name not in FIELDS:
            raise SchemaError(f"chunk {chunk.key}: unknown field {name!r}; known fields: {sorted(FIELDS)}")
        member = member_name(name)
        if member in stems:
            raise SchemaError(f"chunk {chunk.key}: fields {stems[member]!r} and {name!r} would share {member}")
        stems[member] = name
        if name in chunk.arrays:
            arr = np.ascontiguousarray(chunk.arrays[name])
            if len(arr) != n or chunk.encodings.get(name) != ENCODINGS.get(name):
                raise SchemaError(
                    f"chunk {chunk.key}: field {name!r} must hold {n} rows encoded as {ENCODINGS.get(name)}; "
                    f"got {list(arr.shape)} {chunk.encodings.get(name)}"
                )
            spec = {"member": member, "encoding": ENCODINGS[name], "dtype": arr.dtype.name, "shape": list(arr.shape)}
            if name in chunk.widths:
                spec["width"] = chunk.widths[name]
            if name == "mask.png" and _mask_of_parts(chunk) is not None:
                fields[name] = spec | {"member": None, "derived": "seg.png"}  # the parts' nonzero pixels
                continue
            members.append((f"{chunk.key}.{member}", [_npy_header(arr), memoryview(arr).cast("B")]))
        else:
            values = chunk.values[name]
            if len(values) != n:
                raise SchemaError(f"chunk {chunk.key}: field {name!r} must hold {n} values; got {len(values)}")
            spec = {"member": member, "encoding": "json"}
            members.append(
                (f"{chunk.key}.{member}", [json.dumps(values, sort_keys=True, separators=(",", ":")).encode()])
            )
        fields[name] = spec
    header = {"format": FORMAT_VERSION, "count": n, "keys": _keys_header(chunk.keys), "seeds": chunk.seeds}
    header["fields"] = fields
    return [(f"{chunk.key}.{HEADER}", [json.dumps(header).encode()]), *members]


def _mask_of_parts(chunk: Chunk) -> np.ndarray | None:
    """The chunk's packed mask if it is exactly the nonzero pixels of its part labels (so it need
    not be stored: the simulator's masks always are), else None."""
    mask, seg = chunk.arrays.get("mask.png"), chunk.arrays.get("seg.png")
    if mask is None or seg is None or chunk.widths.get("mask.png") != seg.shape[-1]:
        return None
    derived = np.packbits(seg != 0, axis=-1)
    return derived if np.array_equal(derived, mask) else None


_PLAIN = frozenset({str, int, float, bool, type(None)})


def plain_values(values: Sequence[Any]) -> list:
    """Per-sample JSON values (dicts of tensors, arrays, numbers) as plain lists and numbers.

    Works column by column: the tensors of one key are stacked and converted once per batch,
    not once per sample.
    """
    if not values:
        return []
    first = values[0]
    if isinstance(first, Mapping):
        if all(isinstance(v, Mapping) and v.keys() == first.keys() for v in values):
            columns = {k: plain_values([v[k] for v in values]) for k in first}
            return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    elif isinstance(first, torch.Tensor):
        try:
            return torch.stack(values).tolist()  # host tensors of one shape
        except (TypeError, RuntimeError):
            pass
    elif isinstance(first, np.ndarray | np.generic):
        try:
            return np.stack(values).tolist()
        except (TypeError, ValueError):
            pass
    elif {type(v) for v in values} <= _PLAIN:
        return list(values)
    elif isinstance(first, list) and all(type(x) in _PLAIN for v in values for x in v):
        return list(values)  # flat lists of plain values (nested ones go item by item below)
    return [_plain(v) for v in values]


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, np.ndarray | np.generic):
        return v.tolist()
    if isinstance(v, Mapping):
        return {k: _plain(u) for k, u in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(u) for u in v]
    return v


# -- reading ----------------------------------------------------------------------------------


_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \} *\n"
)


def _npy(data, where: str) -> np.ndarray:
    """A read-only view of an NPY member's array (no copy)."""
    view = memoryview(data)
    if bytes(view[:6]) != b"\x93NUMPY" or len(view) < 10:
        raise ChunkError(f"{where}: not an NPY array")
    major = view[6]
    start = 10 if major == 1 else 12
    size = int.from_bytes(view[8:start], "little")
    text = bytes(view[start : start + size]).decode("latin1")
    try:
        if match := _NPY_HEADER.fullmatch(text):  # what ``_npy_header`` writes, without ``ast``
            dims = match[3].replace(" ", "").rstrip(",")
            dtype, fortran = np.dtype(match[1]), match[2] == "True"
            shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        else:
            header = ast.literal_eval(text)
            dtype, shape, fortran = np.dtype(header["descr"]), tuple(header["shape"]), header["fortran_order"]
    except (ValueError, SyntaxError, KeyError, TypeError) as err:
        raise ChunkError(f"{where}: bad NPY header ({err})") from None
    offset = start + size
    count = int(np.prod(shape, dtype=np.int64))
    if fortran or dtype.hasobject or len(view) - offset != count * dtype.itemsize:
        raise ChunkError(
            f"{where}: payload of {len(view) - offset} bytes does not hold a C-ordered {dtype} array "
            f"of shape {list(shape)}"
        )
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)


def _header_keys(raw: Any, count: int, where: str) -> list[str]:
    if isinstance(raw, dict):
        prefix, start, width = raw.get("prefix"), raw.get("start"), raw.get("width")
        if isinstance(prefix, str) and isinstance(start, int) and isinstance(width, int):
            return [f"{prefix}{start + i:0{width}d}" for i in range(count)]
    elif isinstance(raw, list) and len(raw) == count and all(isinstance(k, str) for k in raw):
        return raw
    raise ChunkError(f"{where}: keys must be {count} strings or {{prefix, start, width}}; got {str(raw)[:80]}")


def parse_chunk(key: str, members: Mapping[str, Any], shard: str = "?", fields: set[str] | None = None) -> Chunk:
    """The chunk of a record, every member checked against its header.

    Args:
        key: the record's key; members: ``{member: bytes or memoryview}`` (``chunk.json``, ``rgb.npy``, ...).
        shard: for messages; fields: keep only these schema fields (None: all).

    Raises:
        ShardFormatError: another format version, or a field or encoding this reader does not know.
        ChunkError: members that disagree with the header (dtype, shape, count, missing or extra).
    """
    where = f"shard {shard}, chunk {key}"
    try:
        header = json.loads(bytes(members[HEADER]))
    except (KeyError, ValueError) as err:
        raise ChunkError(f"{where}: unreadable {HEADER} ({err})") from None
    if not isinstance(header, dict):
        raise ChunkError(f"{where}: {HEADER} must be a JSON object")
    version = header.get("format")
    if version != FORMAT_VERSION:
        raise ShardFormatError(
            f"shard {shard}: chunk {key} has format version {version!r}; this reader reads version 1 "
            f"(per-sample records) and {FORMAT_VERSION} (chunks): update renderloop to read it"
        )
    count, specs = header.get("count"), header.get("fields")
    if not isinstance(count, int) or count < 0 or not isinstance(specs, dict):
        raise ChunkError(f"{where}: header needs an integer count and a fields object")
    seeds = header.get("seeds")
    if not isinstance(seeds, list) or len(seeds) != count:
        raise ChunkError(f"{where}: seeds must list {count} batch indices")
    chunk = Chunk(key, _header_keys(header.get("keys"), count, where), seeds, shard=shard)
    described = {HEADER}
    derived = {n: s for n, s in specs.items() if isinstance(s, dict) and "derived" in s}
    wanted = None if fields is None else set(fields) | {s["derived"] for n, s in derived.items() if n in fields}
    for name, spec in specs.items():
        expected = ENCODINGS.get(name, "json")
        if name not in FIELDS or not isinstance(spec, dict) or spec.get("encoding") != expected:
            raise ShardFormatError(
                f"shard {shard}: chunk {key} has field {name!r} encoded as "
                f"{spec.get('encoding') if isinstance(spec, dict) else spec!r}; this reader knows "
                f"{sorted(FIELDS)} with the encodings of renderloop.datasets.encodings: update renderloop"
            )
        if name in derived:
            continue
        member = spec.get("member")
        if member not in members:
            raise ChunkError(f"{where}: field {name!r}: member {member!r} is missing")
        described.add(member)
        if wanted is not None and name not in wanted:
            continue
        if expected == "json":
            chunk.values[name] = _json_list(members[member], count, f"{where}, field {name!r}")
            continue
        arr = _npy(members[member], f"{where}, field {name!r}")
        want = (spec.get("dtype"), spec.get("shape"))
        if (arr.dtype.name, list(arr.shape)) != want or arr.shape[:1] != (count,):
            raise ChunkError(
                f"{where}: field {name!r} payload is {arr.dtype.name} {list(arr.shape)}; the header says "
                f"{want[0]} {want[1]} for {count} samples"
            )
        if expected == "bits":
            width = spec.get("width")
            if not isinstance(width, int) or arr.ndim != 3 or -(-width // 8) != arr.shape[-1]:
                raise ChunkError(f"{where}: field {name!r}: width {width!r} does not fit packed rows {list(arr.shape)}")
            chunk.widths[name] = width
        chunk.arrays[name], chunk.encodings[name] = arr, expected
    if extra := sorted(set(members) - described):
        raise ChunkError(f"{where}: members {extra} are not described by its header")
    for name, spec in derived.items():
        if fields is None or name in fields:
            _derive(chunk, name, spec, where)
    if fields is not None:
        chunk = chunk.select(set(fields))
    return chunk


def _derive(chunk: Chunk, name: str, spec: dict, where: str) -> None:
    """A field stored as a function of another (today: the mask as the parts' nonzero pixels)."""
    if (name, spec["derived"]) != ("mask.png", "seg.png"):
        raise ShardFormatError(
            f"shard {chunk.shard}: chunk {chunk.key} derives {name!r} from {spec['derived']!r}; this reader "
            "derives only mask.png from seg.png: update renderloop"
        )
    seg = chunk.arrays.get("seg.png")
    if seg is None:
        raise ChunkError(f"{where}: field {name!r} is derived from seg.png, which the chunk lacks")
    arr = np.packbits(seg != 0, axis=-1)
    width = spec.get("width")
    if [list(arr.shape), width] != [spec.get("shape"), seg.shape[-1]]:
        raise ChunkError(f"{where}: field {name!r}: header {spec.get('shape')} width {width!r} does not fit the parts")
    chunk.arrays[name], chunk.encodings[name], chunk.widths[name] = arr, "bits", width


def _json_list(data, count: int, where: str) -> list:
    try:
        values = json.loads(bytes(data))
    except ValueError as err:
        raise ChunkError(f"{where}: unreadable JSON ({err})") from None
    if not isinstance(values, list) or len(values) != count:
        raise ChunkError(f"{where}: must be a JSON list of {count} values")
    return values
