"""Run a peer's training script written for PyTorch 1.x on today's PyTorch, unchanged.

    python -m bench.peer_compat PATH/train.py ARGS...

Two things such scripts relied on are gone, and both are restored for the script's process only:

- ``torch.utils.cpp_extension.load`` used to leave the compiled module in ``sys.modules``; code that
  builds a plugin and then calls ``importlib.import_module(name)`` now finds nothing and falls back
  to slower reference ops. The loaded module is registered under its name again.
- ``torch.utils.data.Sampler`` took its data source as an argument; a subclass calling
  ``super().__init__(dataset)`` now fails. The argument is accepted and ignored, as it was.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

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
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
