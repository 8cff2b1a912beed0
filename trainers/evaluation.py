"""Evaluating a finished run: the models it exported, with the method config it trained with."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from renderloop.config import ConfigError, to_schema
from renderloop.devices import resolve_device

from .methods import METHODS

__all__ = ["evaluate_run", "load_run", "plain"]


def plain(obj: Any) -> Any:
    """A config dataclass as plain dicts and lists (anything else as it is), for JSON."""
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def load_run(method_name: str, method_config: Any, run_dir: str | Path, device: str = "auto"):
    """The method (with its exported state) and its trained networks (eval mode on ``device``) from
    ``<run_dir>/models``.

    The architecture comes from the run's ``method.json`` where there is one; the evaluation
    settings (``method.evaluation``) come from ``method_config`` (if given), so one run can be
    scored anew.
    """
    run_dir = Path(run_dir)
    models = run_dir / "models"
    if not models.is_dir():
        raise ConfigError("run_dir", f"{run_dir} has no exported models; train first (renderloop train/run)")
    saved = run_dir / "method.json"
    if saved.exists():
        trained = json.loads(saved.read_text())
        if hasattr(method_config, "evaluation"):
            trained["evaluation"] = plain(method_config.evaluation)
        method_config = to_schema(METHODS[method_name].config, trained, "method")
    elif method_config is None:
        raise ConfigError("run_dir", f"{run_dir} has no method.json to rebuild its networks from")
    resolved = resolve_device(device)
    method = METHODS[method_name].cls(method_config, resolved)
    method.run_dir = run_dir
    nets = {}
    for name, spec in method.build().items():
        spec.module.load_state_dict(torch.load(models / f"{name}.pt", map_location="cpu", weights_only=True))
        nets[name] = spec.module.to(resolved).eval()
    if (models / "method_state.pt").exists():  # what the method learned besides weights (e.g. annotations)
        method.load_state_dict(torch.load(models / "method_state.pt", map_location="cpu", weights_only=True))
    return method, nets


def evaluate_run(method_name: str, method_config: Any, run_dir: str | Path, device: str = "auto") -> dict[str, float]:
    """Evaluate the models ``<run_dir>/models`` holds; write figures to ``<run_dir>/eval``."""
    method, nets = load_run(method_name, method_config, run_dir, device)
    return method.evaluate(nets, Path(run_dir) / "eval")
