"""Per-field array encodings of chunked shards: quantize on the producer's device, decode on the trainer's.

Each array field of a chunk is stored as one ``[B, ...]`` array in the encoding that keeps its
meaning at the fewest bytes. Encoders and decoders are plain torch functions, so the producer
quantizes where the source made the batch (a GPU) before its single copy to the host, and the
trainer decodes after its single copy to the device.

==============  =========  ===========================  ===================================  ==========================
field           encoding   stored                       decoded (as ``schema.decode_sample``)  error
==============  =========  ===========================  ===================================  ==========================
rgb.png/.jpg    unorm8     uint8 ``[B, H, W, 3]``       float ``[B, 3, H, W]`` in [0, 1]       none (the source's uint8)
mask.png        bits       uint8 ``[B, H, ceil(W/8)]``  float ``[B, 1, H, W]`` in {0, 1}       none (masks are binary)
seg.png         label8     uint8 ``[B, H, W]``          int64 ``[B, H, W]``                    none
normal.npy      snorm8     uint8 ``[B, H, W, 3]``       float ``[B, 3, H, W]`` in [-1, 1]      ≤ 0.389° (0.17° mean)
depth.npy       float16    float16 ``[B, H, W]``        float ``[B, H, W]``                    ≤ 2^-11 relative
kp2d/kp3d.npy   float32    float32 ``[B, J, 2|3]``      float ``[B, J, 2|3]``                  none
latent.npy      float32    float32 ``[B, ...]``         float ``[B, ...]``                     none
view/group.txt  int64      int64 ``[B]``                int64 ``[B]``                          none
==============  =========  ===========================  ===================================  ==========================

* ``snorm8`` stores ``round((n + 1) · 127.5)`` per component. A component is off by at most
  ``0.5 / 127.5``, so a unit normal turns by at most ``asin(√3 · 0.5 / 127.5) = 0.389°``
  (2·10⁶ random unit normals: max 0.386°, mean 0.170°). The zero normal of background pixels
  stores as 128 in all three components, which no unit normal does, and decodes to exactly 0.
* ``float16`` keeps 11 significant bits: the relative error of a depth in float16's normal range
  is at most ``2^-11 ≈ 4.9·10⁻⁴`` (mean 1.8·10⁻⁴), 0 stays 0; a depth beyond ±65504 is refused.
* ``bits`` packs 8 pixels into a byte, most significant first (``np.packbits`` order: undo with
  ``np.unpackbits(m, axis=-1)[..., :W]``), as ``mask.png`` decodes: a pixel is set above 127.

Per-sample (version 1) shards read through the same decoders with the encodings ``mask8``
(uint8 0/255), ``float32`` depth and normals (``[B, H, W, 3]``), so a batch of either format
means the same.
"""

from __future__ import annotations

import torch

__all__ = ["ENCODINGS", "FLOAT16_MAX", "encode", "decode", "member_name"]

FLOAT16_MAX = 65504.0

ENCODINGS: dict[str, str] = {
    "rgb.png": "unorm8",
    "rgb.jpg": "unorm8",
    "mask.png": "bits",
    "seg.png": "label8",
    "normal.npy": "snorm8",
    "depth.npy": "float16",
    "kp2d.npy": "float32",
    "kp3d.npy": "float32",
    "latent.npy": "float32",
    "view.txt": "int64",
    "group.txt": "int64",
}
"""Array fields and their chunk encoding; every other schema field is a JSON list."""

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def member_name(field: str) -> str:
    """The chunk member of a field: ``.npy`` for arrays, ``.json`` for JSON lists (``rgb.png`` → ``rgb.npy``)."""
    stem = field.partition(".")[0]
    return f"{stem}.npy" if field in ENCODINGS else f"{stem}.json"


def _check(field: str, x: torch.Tensor, shape: str, ok: bool, dtype: torch.dtype | None = None) -> None:
    if not ok:
        raise ValueError(f"encode(): {field} must have shape {shape}; got {list(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"encode(): {field} must be {dtype}; got {x.dtype}")


def encode(field: str, x: torch.Tensor) -> torch.Tensor:
    """A batch of one field, in its schema layout (what ``encode_sample`` takes, stacked), as stored.

    Args:
        field: an array field of ``ENCODINGS``.
        x: ``[B, ...]`` on any device: uint8 ``[B, H, W, 3]`` images, uint8 0/255 or bool
            ``[B, H, W]`` masks, uint8 ``[B, H, W]`` labels, ``[B, H, W, 3]`` camera normals,
            ``[B, H, W]`` depth, float keypoints and latents, integer views and groups.

    Returns:
        The stored tensor on ``x``'s device (see the module's table).

    Raises:
        ValueError: a shape or dtype the field cannot hold.
    """
    kind = ENCODINGS[field]
    if kind == "unorm8":
        _check(field, x, "[B, H, W, 3]", x.ndim == 4 and x.shape[-1] == 3, torch.uint8)
        return x.contiguous()
    if kind == "bits":
        _check(field, x, "[B, H, W]", x.ndim == 3)
        on = x if x.dtype == torch.bool else x > 127
        pad = -on.shape[-1] % 8
        if pad:
            on = torch.nn.functional.pad(on, (0, pad))
        B, H, W8 = on.shape[0], on.shape[1], on.shape[2] // 8
        weights = _BITS.to(on.device)
        return (on.view(B, H, W8, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)  # [B, H, ceil(W / 8)]
    if kind == "label8":
        _check(field, x, "[B, H, W]", x.ndim == 3, torch.uint8)
        return x.contiguous()
    if kind == "snorm8":
        _check(field, x, "[B, H, W, 3]", x.ndim == 4 and x.shape[-1] == 3)
        return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    if kind == "float16":
        _check(field, x, "[B, H, W]", x.ndim == 3)
        return x.to(torch.float16)
    if kind == "float32":
        return x.to(torch.float32).contiguous()
    _check(field, x, "[B]", x.ndim == 1)
    return x.to(torch.int64)


def decode(field: str, encoding: str, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """A stored batch of one field, decoded as ``schema.decode_sample`` decodes one sample (batched).

    Args:
        field: the schema field (``rgb.png``, ``normal.npy``, ...).
        encoding: how ``x`` is stored: a chunk's encoding, or a per-sample shard's (``mask8``,
            ``float32``).
        x: ``[B, ...]`` stored tensor, on the device that should do the work.
        width: image width of a ``bits`` mask.

    Returns:
        float32 images ``[B, C, H, W]`` (masks ``[B, 1, H, W]``), float32 depth ``[B, H, W]``,
        int64 labels ``[B, H, W]``, float32 keypoints and latents, int64 views and groups.
    """
    if encoding == "unorm8":
        return x.permute(0, 3, 1, 2).float().div_(255).contiguous()
    if encoding == "bits":
        bits = (x.unsqueeze(-1) & _BITS.to(x.device)) != 0  # [B, H, ceil(W / 8), 8]
        return bits.flatten(-2)[..., :width].float().unsqueeze(1)
    if encoding == "mask8":
        return (x > 127).float().unsqueeze(1)
    if encoding == "label8":
        return x.long()
    if encoding == "snorm8":
        n = x.float().div_(127.5).sub_(1)
        n = n.masked_fill_((x == 128).all(-1, keepdim=True), 0.0)  # the background's zero normal
        return n.permute(0, 3, 1, 2).contiguous()
    if encoding in ("float16", "float32"):
        x = x.float()
        return x.permute(0, 3, 1, 2).contiguous() if field == "normal.npy" else x
    if encoding == "int64":
        return x.long()
    raise ValueError(f"decode(): unknown encoding {encoding!r} of field {field!r}")
