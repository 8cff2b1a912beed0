"""Which (face, pixel) pairs to test: screen-space bounding boxes enumerated without Python loops.

Each face's bounding box (optionally grown by a margin) covers a rectangle of pixel centres; all
rectangles are laid end to end in one flat index space, and a candidate's face, row and column
are recovered from its position in that space. Work is split into chunks of a bounded number of
candidates so peak memory stays bounded for huge faces or batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ._gather import take_rows
from .cameras import clip_to_pixel


def screen_triangles(clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]):
    """Corner pixel positions ``[B, F, 3, 2]``, depths ``[B, F, 3]`` and a validity mask ``[B, F]``.

    A face is invalid if it is padding (``-1``) or any corner lies behind the near plane
    (``z < -w``): such faces are culled, not clipped. Differentiable w.r.t. ``clip_pos``.
    """
    B, V, D = clip_pos.shape
    # Clamped so a bad index cannot fault the gather; rasterize() reports it after its one sync.
    index = (faces.clamp(0, V - 1) + V * torch.arange(B, device=faces.device).view(B, 1, 1)).view(-1)
    corners = take_rows(clip_pos.reshape(B * V, D), index).view(B, -1, 3, D)
    w = corners[..., 3]
    valid = (faces >= 0).all(-1) & ((corners[..., 2] >= -w) & (w > 0)).all(-1)
    # Culled faces get a harmless w so the divide (and its gradient) stays finite.
    keep = valid.view(B, -1, 1)
    safe = torch.cat(
        [torch.where(keep.unsqueeze(-1), corners[..., :3], 0.0), torch.where(keep, w, 1.0).unsqueeze(-1)], -1
    )
    return clip_to_pixel(safe, resolution), w, valid


@dataclass(frozen=True)
class Chunk:
    """``n`` candidates: ``face [n]`` (int32 flat index into ``B * F``) and ``pos [n]`` (int32
    position in the chunk). ``meta [B * F, 4]`` int32 holds each face's first column, first row,
    bbox width and start position in the chunk, from which :func:`pixel_of` recovers the pixel."""

    face: torch.Tensor
    pos: torch.Tensor
    meta: torch.Tensor


def pixel_of(meta: torch.Tensor, face: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column ``[n]`` of candidates ``(face, pos)`` (see :class:`Chunk`)."""
    m = take_rows(meta, face)
    offset = pos - m[:, 3]
    return m[:, 1] + offset // m[:, 2], m[:, 0] + offset % m[:, 2]


def pixel_boxes(
    xy: torch.Tensor, valid: torch.Tensor, resolution: tuple[int, int], margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each face's first pixel centre ``(col, row)`` and box size ``(width, height)`` in pixels,
    both int64 ``[B * F, 2]``: the centres in its bbox grown by ``margin`` (empty for invalid faces)."""
    H, W = resolution
    xy = xy.detach()
    lo = xy.amin(dim=-2) - margin  # (B, F, 2)
    hi = xy.amax(dim=-2) + margin
    # Pixel j's centre is j + 0.5: the first centre >= lo is ceil(lo - 0.5), the last <= hi is floor(hi - 0.5).
    first = torch.ceil(lo - 0.5).clamp(0, max(H, W))
    last = torch.minimum(torch.floor(hi - 0.5), xy.new_tensor([W - 1, H - 1]))
    size = (last - first + 1).clamp(min=0) * valid.unsqueeze(-1)
    return first.nan_to_num(0).long().view(-1, 2), size.nan_to_num(0).long().view(-1, 2)


def candidate_chunks(
    xy: torch.Tensor,
    valid: torch.Tensor,
    resolution: tuple[int, int],
    margin: float,
    max_candidates: int,
    check: tuple[torch.Tensor, Callable[[list[float]], None]] | None = None,
) -> Iterator[Chunk]:
    """Yield the (face, pixel) pairs whose pixel centre lies in the face's bbox grown by ``margin``.

    ``check = (values, fn)``: device ``values`` are copied to the host in the same transfer as the
    candidate count (the one CPU-GPU sync) and passed to ``fn``, which may raise, before any work.
    """
    first, size = pixel_boxes(xy, valid, resolution, margin)
    counts = size[:, 0] * size[:, 1]
    ends = counts.cumsum(0)
    starts = ends - counts
    host = torch.cat([ends[-1:].double(), check[0].double().view(-1) if check else ends.new_zeros(0).double()])
    total, *values = host.tolist()  # the CPU-GPU sync: output sizes depend on it
    if check:
        check[1](values)
    total = int(total)
    if total == 0:
        return
    # Chunk boundaries fall between faces, about max_candidates pairs apart (a huge face gets its own).
    stops = [counts.numel()]
    if total > max_candidates:
        targets = torch.arange(max_candidates, total, max_candidates, device=ends.device)
        stops = sorted(set(torch.searchsorted(ends, targets, right=True).tolist() + stops))
        stops = [s for s in stops if s > 0]
        bounds = torch.cat([ends.new_zeros(1), ends])[torch.tensor([0, *stops], device=ends.device)].tolist()
    else:
        bounds = [0, total]
    start = 0
    for stop, lo_pos, hi_pos in zip(stops, bounds[:-1], bounds[1:], strict=True):
        n = hi_pos - lo_pos
        if n > 0:
            faces = torch.arange(start, stop, device=counts.device, dtype=torch.int32)
            face = torch.repeat_interleave(faces, counts[start:stop], output_size=n)
            # Positions relative to the chunk fit in int32 (rows of faces outside it are never read).
            meta = torch.stack([first[:, 0], first[:, 1], size[:, 0].clamp(min=1), starts - lo_pos], dim=-1)
            yield Chunk(face, torch.arange(n, device=counts.device, dtype=torch.int32), meta.int())
        start = stop
