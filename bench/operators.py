"""Counting the tensor operators a piece of work runs: on a GPU each non-view operator is about one
kernel launch, so the count says how launch-bound small batches are, on any machine."""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = frozenset({"view", "_unsafe_view", "reshape", "slice", "select", "detach", "alias", "as_strided", "expand",
                   "unsqueeze", "squeeze", "t", "transpose", "permute", "lift_fresh"})  # fmt: skip
"""Operators that only make a new view of existing memory (no kernel)."""


class OperatorCount(TorchDispatchMode):
    """``with OperatorCount() as count: ...`` → ``count.total``, ``count.kernels`` (non-view) and
    ``count.by_name``. Backward passes run inside the block are counted too."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    @property
    def kernels(self) -> int:
        return sum(n for name, n in self.by_name.items() if name not in VIEWS)
