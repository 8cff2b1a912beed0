"""The sample schema: one place that defines every WebDataset field, its encoder and its decoder.

A sample is a dict: ``"__key__"`` (a string without dots) plus any of the fields below. Every
source writes and every method reads through :func:`encode_sample` and :func:`decode_sample`.
Decoded images are float32 ``[C, H, W]`` tensors in ``[0, 1]``.

Shards hold samples in one of two formats (the ledger entry's ``format``):

* **1, per-sample records**: ``<key>.<field>`` members encoded here (PNG images, NPY arrays,
  JSON). For export, and for people and tools that expect one file per field.
* **2, chunks** (``datasets.chunks``, the producers' default): one record per batch of B
  samples, ``<chunk>.chunk.json`` (format, count, keys, seeds, and each field's member,
  encoding, dtype and shape) plus one member per field: ``<chunk>.<stem>.npy`` holding
  ``[B, ...]`` in the field's encoding (``datasets.encodings``: uint8 images, masks as bits,
  labels and normals, float16 depth, float32 keypoints and latents, int64 views and groups) or
  ``<chunk>.<stem>.json`` holding a list of B values (``cam``, ``light``, ``meta``). Sample ``i``
  is row ``i`` of every array and item ``i`` of every list; its key is the header's
  ``keys[i]``, or ``prefix + str(start + i).zfill(width)``. The schema field ``rgb.png`` is the
  member ``rgb.npy``, ``view.txt`` is ``view.npy``, and so on.

Both are plain tars; the ``webdataset`` library unbatches a chunk into samples (stored
encodings, e.g. uint8 ``[H, W, 3]`` RGB and float16 depth) in one line::

    wds.WebDataset(url, shardshuffle=False).decode().to_tuple("rgb.npy", "depth.npy", "cam.json").unbatched()

and Ray Data's ``read_webdataset`` yields one row per chunk, each column an array ``[B, ...]``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["FIELDS", "SchemaError", "encode_sample", "decode_sample", "check_key"]


class SchemaError(ValueError):
    """A sample that does not follow the schema; the message names the shard and key."""


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _png(x: Any) -> bytes:
    arr = _to_numpy(x)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image; got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpg(x: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_to_numpy(x).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _image(data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data))
    arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _gray(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")).copy()


def _mask(data: bytes) -> torch.Tensor:
    return torch.from_numpy(_gray(data) > 127).float()[None]


def _labels(data: bytes) -> torch.Tensor:
    return torch.from_numpy(_gray(data)).long()


def _normals(data: bytes) -> torch.Tensor:
    return _from_npy(data).permute(2, 0, 1)


def _npy(x: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _to_numpy(x).astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def _json(x: Mapping) -> bytes:
    def plain(v):
        if isinstance(v, (torch.Tensor, np.ndarray)):
            return _to_numpy(v).tolist()
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, Mapping):
            return {k: plain(u) for k, u in v.items()}
        return v

    return json.dumps(plain(x), sort_keys=True).encode()


def _tensors(raw: Mapping) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in raw.items()}


def _camera(data: bytes) -> dict[str, torch.Tensor]:
    return _tensors(json.loads(data))


@dataclass(frozen=True)
class Field:
    """One WebDataset field: file extension, encoder (value → bytes), decoder (bytes → value)."""

    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    doc: str


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("rgb.png", _png, _image, "image: uint8 [H, W, 3] in, float [3, H, W] in [0, 1] out"),
        Field("rgb.jpg", _jpg, _image, "image (lossy), as rgb.png"),
        Field("mask.png", _png, _mask, "object mask 0/255 → float [1, H, W] in {0, 1}"),
        Field("depth.npy", _npy, _from_npy, "float32 [H, W] camera depth, 0 in the background"),
        Field("normal.npy", _npy, _normals, "float32 camera normals [H, W, 3] → [3, H, W]"),
        Field("seg.png", _png, _labels, "uint8 part labels (0 = background) → int64 [H, W]"),
        Field("kp2d.npy", _npy, _from_npy, "float32 [J, 2] keypoints, pixels"),
        Field("kp3d.npy", _npy, _from_npy, "float32 [J, 3] keypoints, camera frame"),
        Field("cam.json", _json, _camera, "K [3, 3], R [3, 3], t [3], azimuth, elevation, distance"),
        Field("light.json", _json, _camera, "direction [3] (towards the light, camera frame), ambient, diffuse"),
        Field("latent.npy", _npy, _from_npy, "float32 generator latent (z or w)"),
        Field("view.txt", lambda v: str(int(v)).encode(), lambda b: int(b.decode()), "view code's pool index"),
        Field("group.txt", lambda v: str(int(v)).encode(), lambda b: int(b.decode()), "multi-view group id"),
        Field("meta.json", _json, json.loads, "source name and version, seed, config hash"),
    )
}  # fmt: skip


JSON_VALUES: dict[str, Callable[[Any], Any]] = {
    "cam.json": _tensors,
    "light.json": _tensors,
    "meta.json": lambda v: v,
}
"""JSON fields → what their parsed value decodes to (a chunk holds them as one JSON list)."""
NUMERIC_JSON = frozenset({"cam.json", "light.json"})
"""JSON fields whose every value decodes to a float32 tensor."""


def check_key(key: str) -> str:
    """Sample keys are non-empty and contain no dots (WebDataset splits the field name at the first dot)."""
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise SchemaError(f"sample key must be a non-empty string without '.' or '/'; got {key!r}")
    return key


def encode_sample(sample: Mapping[str, Any]) -> dict[str, bytes]:
    """Encode a sample dict (``__key__`` + schema fields) into the bytes WebDataset writes."""
    key = check_key(sample.get("__key__", ""))
    out: dict[str, bytes] = {"__key__": key}
    for name, value in sample.items():
        if name == "__key__":
            continue
        field = FIELDS.get(name)
        if field is None:
            raise SchemaError(f"sample {key}: unknown field {name!r}; known fields: {sorted(FIELDS)}")
        try:
            out[name] = field.encode(value)
        except (TypeError, ValueError) as err:
            raise SchemaError(f"sample {key}: field {name!r} cannot be encoded: {err}") from None
    return out


def decode_sample(raw: Mapping[str, bytes], shard: str = "?") -> dict[str, Any]:
    """Decode WebDataset bytes into tensors; errors name the shard and the sample key."""
    key = raw.get("__key__", "?")
    out: dict[str, Any] = {"__key__": key}
    for name, data in raw.items():
        if name.startswith("__"):
            continue
        field = FIELDS.get(name)
        if field is None:
            raise SchemaError(f"shard {shard}, sample {key}: unknown field {name!r}")
        try:
            out[name] = field.decode(data)
        except Exception as err:  # noqa: BLE001 - any decoder failure means malformed data
            raise SchemaError(f"shard {shard}, sample {key}: malformed field {name!r}: {err}") from None
    return out
