"""Row gathers that stay fast on CUDA.

``table.index_select(0, index)`` on a 2D table runs a generic gather kernel that is many times
slower than a 1D ``index_select`` on current CUDA builds; gathering the flattened table with
per-element indices is memory-bound again. On the CPU the 2D gather is the fast one.
Differentiable like ``index_select``.
"""

from __future__ import annotations

import torch


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``table[index]`` of a ``[N, C]`` table for an integer ``index`` of any shape → ``[*index.shape, C]``."""
    C = table.shape[1]
    if table.device.type != "cuda":  # the plain 2D gather is the fast one on the CPU
        return table.index_select(0, index.reshape(-1)).view(*index.shape, C)
    return _take_rows_flat(table, index)


def _take_rows_flat(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``take_rows`` as a 1D gather of the flattened table (the fast form on CUDA)."""
    C = table.shape[1]
    if C == 1:
        return table.view(-1).index_select(0, index.reshape(-1)).view(*index.shape, 1)
    flat = (index.reshape(-1, 1) * C + torch.arange(C, device=index.device)).view(-1)
    return table.reshape(-1).index_select(0, flat).view(*index.shape, C)
