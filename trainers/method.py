"""What a method declares to the engine: its models, its phases, a step and an evaluation.

A method is a small class (``trainers/<method>.py``) registered in :data:`METHODS` with its config
dataclass. The engine (``trainers/engine.py``) owns everything else: DeepSpeed engines, precision,
ZeRO, gradient accumulation, GAN alternation, EMA, checkpoints, logging and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from renderloop.config import ConfigError, to_schema

__all__ = ["METHODS", "Method", "ModelSpec", "Phase", "method_config", "register_method"]


@dataclass
class ModelSpec:
    """A network of a method. Trainable ones get a DeepSpeed engine and an Adam optimizer."""

    module: nn.Module
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    trainable: bool = True
    ema: bool = False
    """Keep an exponential moving average of the weights (generators); see ``engine.ema_half_life``."""


@dataclass(frozen=True)
class Phase:
    """One optimization phase: which model it updates, which data it reads, and when it runs.

    At every engine step, each phase active at that step (``start <= step < stop``, every
    ``interval`` steps) runs ``repeats`` optimizer updates of ``model`` (each of
    ``gradient_accumulation`` micro-batches), drawing a fresh batch of every stream in ``inputs``
    for each micro-batch. ``repeats`` expresses update ratios such as SimGAN's K_g:K_d.
    """

    name: str
    model: str
    inputs: tuple[str, ...]
    repeats: int = 1
    interval: int = 1
    start: int = 0
    stop: int | None = None

    def updates(self, max_steps: int) -> int:
        """Optimizer updates this phase makes in a run of ``max_steps`` engine steps."""
        stop = max_steps if self.stop is None else min(self.stop, max_steps)
        return len(range(self.start, stop, self.interval)) * self.repeats

    def active(self, step: int) -> bool:
        in_range = self.start <= step and (self.stop is None or step < self.stop)
        return in_range and (step - self.start) % self.interval == 0


class Method:
    """Base class of methods. Subclasses set ``name`` and implement the four calls below.

    ``nets`` passed to :meth:`step` maps each model name to a callable: the DeepSpeed engine of the
    model the phase updates, and the plain module (parameters frozen) of every other model, so a
    discriminator used inside the generator's loss never receives gradients.
    """

    name: str = "?"

    def __init__(self, config: Any, device: torch.device) -> None:
        self.config, self.device = config, device

    def streams(self) -> dict[str, Any]:
        """Data role → ``source`` config node (``name`` + the source's keys) of the stream it reads."""
        return dict(self.config.data)

    def fields(self, role: str) -> list[str] | None:
        """Schema fields the trainer decodes for ``role`` (None: all of them); the producers that
        ``renderloop run`` starts write only these."""
        return None

    def shuffle(self, role: str) -> bool:
        """Whether ``role``'s samples are shuffled (False keeps shard order, e.g. frame sequences)."""
        return True

    def build(self) -> dict[str, ModelSpec]:
        """The method's networks (built on CPU, in float32; the engine places and wraps them)."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def step(self, phase: Phase, batch: dict[str, dict[str, torch.Tensor]], nets: Mapping[str, Any]) -> dict:
        """Losses of one micro-batch of ``phase``: a dict of scalar tensors whose ``"loss"`` is
        back-propagated into ``phase.model``; the other entries are logged."""
        raise NotImplementedError

    def images(self, batch: dict[str, dict[str, torch.Tensor]], nets: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Image grids to log: name → ``[N, 3, H, W]`` in ``[0, 1]`` (optional)."""
        return {}

    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        """Evaluate trained networks (EMA copies where there are any); write figures to ``out_dir``."""
        raise NotImplementedError(f"method {self.name!r} has no evaluation")

    def state_dict(self) -> dict[str, Any]:
        """Method state that a checkpoint must restore (e.g. a history buffer), per rank."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class _Registered:
    config: type
    method: type[Method]
    doc: str = field(default="")


METHODS: dict[str, _Registered] = {}


def register_method(name: str, config: type):
    """Class decorator: ``@register_method("simgan", SimGANConfig)``."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = _Registered(config, cls, (cls.__doc__ or "").strip().splitlines()[0])
        return cls

    return add


def method_config(node: Any) -> tuple[str, Any]:
    """``(name, validated config)`` of a ``method`` config node; unknown names are refused."""
    from omegaconf import OmegaConf

    from . import aign, simgan, stylegan2  # noqa: F401 - registers the built-in methods

    plain = dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)
    name = plain.pop("name", None)
    if name not in METHODS:
        raise ConfigError("method.name", f"must be one of {sorted(METHODS)}; got {name!r}")
    return name, to_schema(METHODS[name].config, plain, "method")
