"""renderloop: train inverse-graphics and sim-to-real methods on synthetic data made while training runs.

The core package holds the CLI, the Hydra config tree, metrics and small shared utilities. It
imports none of its sub-packages (``renderers``, ``models``, ``datasets``, ``trainers``,
``cluster``) at load time, so each of them may import it freely.
"""

__version__ = "0.1.0"
