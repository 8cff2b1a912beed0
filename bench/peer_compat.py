"""Run a peer's training script written for PyTorch 1.x on today's PyTorch, unchanged.

    python -m bench.peer_compat PATH/train.py ARGS...

Two things such scripts relied on are gone, and both are restored for the script's process only:

- ``torch.utils.cpp_extension.load`` used to leave the compiled module in ``sys.modules``; code that
  builds a plugin and then calls ``importlib.import_module(name)`` now finds nothing and falls back
  to slower reference ops. The loaded module is registered under its name again.
- ``torch.utils.data.Sampler`` took its data source as an argument; a subclass calling
  ``super().__init__(dataset)`` now fails. The argument is accepted and ignored, as it was.

Two settings, for a side-by-side run on a machine without a GPU (stylegan2-ada-pytorch's
``training_loop`` asks for ``cuda`` by name):

- ``PEER_DEVICE=cpu``: in that module ``torch.device("cuda", i)`` is the CPU and CUDA events and
  memory statistics do nothing; pinning memory is skipped. Its networks' custom ops already take
  their reference implementations off CUDA.
- ``PEER_CHANNELS=BASE,MAX``: the generator's and discriminator's ``channel_base`` and
  ``channel_max`` (its ``--cfg`` presets fix them), so both trainers can train one small network.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
import types
from pathlib import Path

import torch
import torch.utils.cpp_extension
import torch.utils.data


def _registering(load):
    def load_and_register(*args, **kwargs):
        module = load(*args, **kwargs)
        name = kwargs.get("name", args[0] if args else None)
        if name and not isinstance(module, str):
            sys.modules.setdefault(name, module)
        return module

    return load_and_register


def _accept_data_source(self, *args, **kwargs) -> None:
    """``Sampler.__init__(data_source)`` of PyTorch 1.x: the argument was never used."""


class _CudaOnCpu:
    """``torch.cuda`` as a CUDA-only training loop uses it, on a machine without one."""

    class Event:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def record(self, *args, **kwargs) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, other) -> float:
            return 0.0

    @staticmethod
    def current_stream(*args, **kwargs) -> None:
        return None

    @staticmethod
    def max_memory_allocated(*args, **kwargs) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(*args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """``torch`` for one module: every name is torch's, but ``cuda`` devices are the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CudaOnCpu()

    @staticmethod
    def device(kind, index=None):
        if str(kind).startswith("cuda"):
            return torch.device("cpu")
        return torch.device(kind) if index is None else torch.device(kind, index)

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _with_channels(construct, base: int, most: int):
    """``construct_class_by_name`` building the peer's networks with these channel counts."""

    def build(*args, class_name: str | None = None, **kwargs):
        if class_name and class_name.endswith("networks.Generator"):
            kwargs["synthesis_kwargs"] = {**kwargs["synthesis_kwargs"], "channel_base": base, "channel_max": most}
        elif class_name and class_name.endswith("networks.Discriminator"):
            kwargs |= {"channel_base": base, "channel_max": most}
        return construct(*args, class_name=class_name, **kwargs)

    return build


def _settings() -> None:
    """Apply ``PEER_DEVICE`` and ``PEER_CHANNELS`` to the peer's modules (on ``sys.path``)."""
    if os.environ.get("PEER_DEVICE") == "cpu":
        importlib.import_module("training.training_loop").torch = _TorchOnCpu()
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    if channels := os.environ.get("PEER_CHANNELS"):
        base, most = (int(v) for v in channels.split(","))
        util = importlib.import_module("dnnlib.util")
        util.construct_class_by_name = _with_channels(util.construct_class_by_name, base, most)


def install() -> None:
    torch.utils.cpp_extension.load = _registering(torch.utils.cpp_extension.load)
    if torch.utils.data.Sampler.__init__ is object.__init__:
        torch.utils.data.Sampler.__init__ = _accept_data_source


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    script = Path(sys.argv[1]).resolve()
    install()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    _settings()
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
