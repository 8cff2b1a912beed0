"""The sample schema: one place that defines every WebDataset field, its encoder and its decoder.

A sample is a dict: ``"__key__"`` (a string without dots) plus any of the fields below. Every
source writes and every method reads through :func:`encode_sample` and :func:`decode_sample`.
Decoded images are float32 ``[C, H, W]`` tensors in ``[0, 1]``.
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


def _camera(data: bytes) -> dict[str, torch.Tensor]:
    raw = json.loads(data)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in raw.items()}


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
        Field("view.txt", lambda v: str(int(v)).encode(), lambda b: int(b.decode()), "view index within a group"),
        Field("group.txt", lambda v: str(int(v)).encode(), lambda b: int(b.decode()), "multi-view group id"),
        Field("meta.json", _json, json.loads, "source name and version, seed, config hash"),
    )
}  # fmt: skip


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
