"""A batch on the host in one buffer: one shared-memory segment between processes, one copy into
pinned memory, one copy to the device, decoded there.

Every tensor of the batch (stored image arrays, keypoints, camera columns, ...) is a slice of a
single uint8 buffer; strings (sample keys, metadata strings) travel beside it as lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .encodings import decode

__all__ = ["HostBatch", "Slot", "pack", "decode_batch"]

Path = tuple[str, ...]


@dataclass(frozen=True)
class Slot:
    """Where one tensor of a batch lies in its buffer."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: tuple[str, str, int | None] | None = None
    """(schema field, encoding, width) of a stored array that is decoded on the device; None: as is."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


class HostBatch:
    """A trainer's batch before it reaches the device.

    Reading ``batch[key]`` gives host views (stored encodings: uint8 images, float16 depth, ...),
    nested dicts for JSON fields (``batch["cam"]["K"]``), lists for strings and ``batch["key"]``
    (the sample keys). ``decode_batch`` gives what a method sees. The DataLoader pins it with
    :meth:`pin_memory`: the whole buffer in one copy.
    """

    def __init__(self, buffer: torch.Tensor, slots: dict[Path, Slot], lists: dict[Path, list]) -> None:
        self.buffer, self.slots, self.lists = buffer, slots, lists

    def pin_memory(self) -> HostBatch:
        return HostBatch(self.buffer.pin_memory(), self.slots, self.lists)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(path[0] for path in [*self.slots, *self.lists]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __getitem__(self, key: str) -> Any:
        return _nested(self, key, lambda slot: _view(self.buffer, slot))

    def __len__(self) -> int:
        return len(self.lists[("key",)])


def _view(buffer: torch.Tensor, slot: Slot) -> torch.Tensor:
    return buffer[slot.offset : slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)


def _nested(batch: HostBatch, key: str, tensor: Callable[[Slot], Any]) -> Any:
    """The value under ``key``: a tensor, a list, or a dict of them for nested paths."""
    if (key,) in batch.slots:
        return tensor(batch.slots[(key,)])
    if (key,) in batch.lists:
        return batch.lists[(key,)]
    out: dict[str, Any] = {}
    found = False
    for path, slot in batch.slots.items():
        if path[0] == key:
            _put(out, path[1:], tensor(slot))
            found = True
    for path, values in batch.lists.items():
        if path[0] == key:
            _put(out, path[1:], values)
            found = True
    if not found:
        raise KeyError(key)
    return out


def _put(tree: dict, path: Path, value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def pack(
    arrays: list[tuple[Path, np.dtype, tuple[int, ...], tuple | None, Callable[[np.ndarray], None]]],
    lists: dict[Path, list],
    shared: bool,
) -> HostBatch:
    """Lay out ``arrays`` in one buffer and have each filled in place.

    Args:
        arrays: ``(path, dtype, shape, codec, fill)``; ``fill(out)`` writes the array into ``out``.
        lists: string values by path.
        shared: allocate the buffer in shared memory (a dataloader worker's batch crosses to the
            main process without a copy).
    """
    slots, offset = {}, 0
    for path, dtype, shape, codec, _ in arrays:
        slot = Slot(offset, torch.from_numpy(np.empty(0, dtype)).dtype, tuple(shape), codec)
        slots[path] = slot
        offset += -(-slot.nbytes // 16) * 16  # 16-byte aligned: any dtype views its slice, on any device
    if shared:
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(offset))
    else:
        buffer = torch.empty(offset, dtype=torch.uint8)
    for (_, _, _, _, fill), slot in zip(arrays, slots.values(), strict=True):
        fill(_view(buffer, slot).numpy())
    return HostBatch(buffer, slots, lists)


def decode_batch(batch: HostBatch, device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """A host batch on ``device``: its buffer copied once (``non_blocking``: from pinned memory the
    copy overlaps), then every stored array decoded there (``encodings.decode``); floating
    results take ``dtype``. Keys, nesting and meaning as ``collate`` of decoded samples."""
    buffer = batch.buffer.to(device, non_blocking=True)

    def tensor(slot: Slot) -> torch.Tensor:
        x = _view(buffer, slot)
        if slot.codec is not None:
            x = decode(slot.codec[0], slot.codec[1], x, slot.codec[2])
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    return {key: _nested(batch, key, tensor) for key in batch}
