"""What every timed bench shares: waiting for the device before reading the clock."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU, whose work is done when it returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
