"""What a method declares to the engine: its models, its phases, a step and an evaluation.

A method is a small class (``trainers/<method>.py``) registered in ``trainers/methods.py`` with its config
dataclass. The engine (``trainers/engine.py``) owns everything else: DeepSpeed engines, precision,
ZeRO, gradient accumulation, GAN alternation, EMA, checkpoints, logging and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Method", "ModelSpec", "Phase"]


@dataclass
class ModelSpec:
    """A network of a method. Trainable ones get a DeepSpeed engine and an Adam optimizer."""

    module: nn.Module
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = True
    """AdamW's decay of the weights themselves; false: an L2 term added to the gradient before
    Adam's normalization (``torch.optim.Adam``'s ``weight_decay``), as some papers' code trains."""
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
    ``trains`` names the sub-modules of ``model`` (attribute paths) the phase updates; the rest
    of ``model`` takes no gradient, so neither Adam's momentum nor its weight decay moves it
    (empty: all of ``model``).
    """

    name: str
    model: str
    inputs: tuple[str, ...]
    repeats: int = 1
    interval: int = 1
    start: int = 0
    stop: int | None = None
    trains: tuple[str, ...] = ()

    def updates(self, max_steps: int) -> int:
        """Optimizer updates this phase makes in a run of ``max_steps`` engine steps."""
        stop = max_steps if self.stop is None else min(self.stop, max_steps)
        return len(range(self.start, stop, self.interval)) * self.repeats

    def active(self, step: int) -> bool:
        in_range = self.start <= step and (self.stop is None or step < self.stop)
        return in_range and (step - self.start) % self.interval == 0


class Method:
    """Base class of methods. Subclasses set ``name`` and implement the four calls below.

    ``nets`` passed to :meth:`step` maps each model name to its plain ``nn.Module``; only the
    parameters of the model the phase updates take gradients, so a discriminator used inside the
    generator's loss never receives any. The engine keeps the optimizers and routes each step's
    loss through them.
    """

    name: str = "?"
    run_dir: Path | None = None
    """The run's folder, set when a finished run is loaded for evaluation (its ``snapshots``)."""

    def __init__(self, config: Any, device: torch.device) -> None:
        self.config, self.device = config, device

    @classmethod
    def check_engine(cls, config: Any, engine: Any) -> None:
        """Refuse engine settings (``engine.*``) this method cannot train with, before anything is
        built; raise ``ConfigError`` naming the key."""

    @classmethod
    def data_roles(cls, config: Any) -> dict[str, Any]:
        """Data role → ``source`` config node (``name`` + the source's keys) of each stream a method
        with ``config`` reads: what ``renderloop run`` starts producers for."""
        return dict(config.data)

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

    def step(
        self, phase: Phase, batch: dict[str, dict[str, torch.Tensor]], nets: Mapping[str, nn.Module], gain: int
    ) -> dict:
        """Losses of one micro-batch of ``phase``: a dict of scalar tensors whose ``"loss"`` is
        back-propagated into ``phase.model``; the other entries are logged.

        ``gain`` is ``phase.interval``: a lazy regularizer that runs every ``interval`` steps scales
        its penalty by it, so that on average it weighs as much as one applied at every step."""
        raise NotImplementedError

    def held_samples(self, phase: Phase) -> int:
        """Images one micro-batch of ``phase`` fits when it reads no stream (a method that holds its
        own images, as per-image optimization does): what the engine counts for its samples/s."""
        return 0

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
