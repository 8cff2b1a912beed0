"""The training engine: one loop for every method.

The engine builds one DeepSpeed engine per trainable model of a method, reads the method's
streams, and runs its phases step after step. It owns precision, ZeRO, gradient accumulation,
GAN alternation (a model that a phase does not update is frozen, so it gets no gradient and ZeRO
never reduces it), EMA, checkpoints with exact resume, logging and metrics. Methods see plain
modules only; DeepSpeed stays inside this file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from renderloop.config import ConfigError
from renderloop.errors import InputError
from renderloop.metrics import MetricsSink
from renderloop.seeding import derive_seed

from .checkpoint import CheckpointStore
from .config import EngineConfig, deepspeed_config, lr_multiplier
from .data import StreamBatches, to_device
from .distributed import init_distributed, rng_state, seed_everything, set_rng_state
from .evaluation import plain
from .method import Method, Phase
from .methods import METHODS
from .reporting import Reporter, StepTimes

__all__ = ["Trainer", "stream_name"]


def stream_name(prefix: str, role: str) -> str:
    """The stream a method's data role reads: ``<prefix>-<role>``."""
    return f"{prefix}-{role}"


class EMA:
    """Exponential moving average of a model's weights (fp32, on the model's device)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module, beta: float, zero3: bool) -> None:
        params = list(source.parameters())
        gather = contextlib.nullcontext()
        if zero3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params)
        with gather:  # one fused update over all tensors, not a kernel launch per parameter
            torch._foreach_lerp_(list(self.module.parameters()), [p.detach().float() for p in params], 1 - beta)
        for ema, b in zip(self.module.buffers(), source.buffers(), strict=True):
            ema.copy_(b)


def _trained(parameter: str, trains: tuple[str, ...]) -> bool:
    """Whether ``parameter`` (a dotted name) lies in one of the ``trains`` sub-modules (all if none)."""
    return not trains or any(parameter == t or parameter.startswith(t + ".") for t in trains)


def _check_trains(phase: Phase, named: dict[str, nn.Parameter], zero_stage: int) -> None:
    """A phase's ``trains`` must name sub-modules with parameters, and needs ZeRO stage 0: ZeRO's
    flat partitions give the rest zero gradients, which Adam's momentum and decay still apply."""
    if not phase.trains:
        return
    if zero_stage:
        raise ConfigError("engine.zero_stage", f"phase {phase.name!r} updates only {list(phase.trains)} of "
                          f"{phase.model!r}, which needs ZeRO stage 0; got {zero_stage}")  # fmt: skip
    if missing := [t for t in phase.trains if not any(_trained(n, (t,)) for n in named)]:
        raise ValueError(f"phase {phase.name!r} trains {missing}, which {phase.model!r} has no parameters in")


def _prepared_for(engine: Any, loss: torch.Tensor) -> torch.Tensor:
    """``loss``, set to run DeepSpeed's backward prologue when its gradient starts to flow.

    DeepSpeed hooks that prologue (ZeRO's accumulation boundary and reduction state) onto the
    outputs of its own forward; methods call the plain module, so the hook goes on the loss. It
    runs once, before any parameter gradient; without it ZeRO-3 accumulates wrongly.
    """
    from deepspeed.runtime.base_optimizer import ZeROOptimizer
    from deepspeed.runtime.utils import register_output_backward_hooks

    if isinstance(engine.optimizer, ZeROOptimizer):
        engine.optimizer.clear_backward_seen_flag()  # as the engine's forward does
    register_output_backward_hooks(loss, engine._backward_prologue, engine._backward_prologue_per_tensor)
    return loss


class Trainer:
    """Train ``method`` on its streams under ``root``; ``fit()`` runs to ``engine.max_steps``.

    Args:
        method: registered method name; method_config: its validated config.
        engine: engine settings.
        root: storage root of the streams; stream_prefix: streams are ``<prefix>-<role>``.
        run_dir: logs, TensorBoard and (unless ``checkpoints`` is given) checkpoints.
        device: ``auto``, ``cpu`` or ``cuda``.
        metrics: where this rank reports (Prometheus or Ray); checkpoints: a store other than
            ``<run_dir>/checkpoints`` (Ray Train gives its own).
        status: figures of the data's producers for each log window (``data/<key>`` in the log, and
            the progress bar's keys without a ``/``): e.g. their rate and backlog in a local run.
    """

    def __init__(
        self,
        method: str,
        method_config: Any,
        engine: EngineConfig,
        *,
        root: str,
        stream_prefix: str,
        run_dir: str | Path,
        device: str = "auto",
        metrics: MetricsSink | None = None,
        checkpoints: CheckpointStore | None = None,
        status: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        import deepspeed

        self.cfg, self.run_dir = engine, Path(run_dir)
        self.dist = dist = init_distributed(device)
        self.device = dist.device
        self.dtype = torch.bfloat16 if engine.precision == "bf16" else torch.float32
        self.autocast = engine.precision == "bf16_autocast"
        torch.backends.cudnn.benchmark = engine.cudnn_benchmark and self.device.type == "cuda"
        self.metrics = metrics or MetricsSink()
        self.status = status
        seed_everything(engine.seed)  # identical initial weights on every rank
        self.method: Method = METHODS.entry(method).cls(method_config, self.device)
        self.phases = self.method.phases()
        specs = self.method.build()
        for phase in self.phases:  # before any engine is built
            if phase.model in specs:
                _check_trains(phase, dict(specs[phase.model].module.named_parameters()), engine.zero_stage)
        self._shapes = {name: _shapes(spec.module) for name, spec in specs.items()}  # before ZeRO partitions them
        self.engines: dict[str, Any] = {}
        self.modules: dict[str, nn.Module] = {}
        self.emas: dict[str, EMA] = {}
        self._named: dict[str, dict[str, nn.Parameter]] = {}  # each model's trainable parameters
        for name, spec in specs.items():
            if not spec.trainable:
                self.modules[name] = spec.module.to(self.device, self.dtype).eval().requires_grad_(False)
                continue
            if spec.ema:
                self.emas[name] = EMA(spec.module)
                self.emas[name].module.to(self.device)
            self._named[name] = {n: p for n, p in spec.module.named_parameters() if p.requires_grad}
            params = list(self._named[name].values())
            horizon = sum(p.updates(engine.max_steps) for p in self.phases if p.model == name)
            ds_engine, *_ = deepspeed.initialize(
                model=spec.module,
                model_parameters=params,
                config=deepspeed_config(
                    engine, spec.lr, spec.betas, spec.weight_decay, dist.world_size, spec.decoupled_weight_decay
                ),
                lr_scheduler=lambda opt, h=horizon: torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda u: lr_multiplier(engine, u, h)
                ),
            )
            self.engines[name], self.modules[name] = ds_engine, ds_engine.module
        roles = self.method.data_roles(self.method.config)
        for phase in self.phases:
            if phase.model not in self.engines:
                raise ValueError(f"phase {phase.name!r} updates {phase.model!r}, which is not a trainable model")
            if unknown := set(phase.inputs) - set(roles):
                raise ValueError(f"phase {phase.name!r} reads unknown data roles {sorted(unknown)}")
        self.root, self.stream_prefix, self.roles = root, stream_prefix, list(roles)
        self.checkpoints = checkpoints or CheckpointStore(self.run_dir / "checkpoints", engine.keep_checkpoints, dist)
        self.step = 0
        self.samples = 0
        self.data: dict[str, StreamBatches] = {}
        self._latest: dict[str, Any] = {}  # the last batch of each role, for image grids
        self._positions = dict.fromkeys(self.roles, 0)
        seed_everything(derive_seed(engine.seed, dist.rank))  # per-rank noise from here on

    # -- nets handed to the method ------------------------------------------------------------

    def nets(self, phase: Phase | None) -> dict[str, nn.Module]:
        """Every model as its plain module; only ``phase.model``'s parameters (those of its
        ``trains`` sub-modules, where named) take gradients."""
        for name in self.engines:
            train = phase is not None and name == phase.model
            for key, p in self._named[name].items():  # parameters the method froze stay frozen
                p.requires_grad_(train and _trained(key, phase.trains))
        return dict(self.modules)

    def backward(self, phase: Phase, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's ``loss`` into ``phase.model`` (through its DeepSpeed engine)."""
        engine = self.engines[phase.model]
        engine.backward(_prepared_for(engine, loss))

    def eval_nets(self) -> dict[str, nn.Module]:
        """Modules for evaluation and images: the EMA copy where there is one."""
        self.nets(None)
        return {name: self.emas[name].module if name in self.emas else m for name, m in self.modules.items()}

    # -- data ----------------------------------------------------------------------------------

    def _open_data(self) -> None:
        for role in self.roles:
            if role in self.data:
                continue
            self.data[role] = StreamBatches(
                self.root,
                stream_name(self.stream_prefix, role),
                self.cfg.data if self.method.shuffle(role) else replace(self.cfg.data, shuffle_buffer=0),
                fields=self.method.fields(role),
                seed=derive_seed(self.cfg.seed, self.roles.index(role)),
                consumer=f"train-{self.method.name}",
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                consumed=self._positions[role],
                metrics=self.metrics,
                pin_memory=self.device.type == "cuda",
            )
            self.data[role].start()

    def _batch(self, roles: tuple[str, ...], times: StepTimes) -> tuple[dict[str, Any], int]:
        batch, samples = {}, 0
        for role in roles:
            raw, waited = self.data[role].next()
            times.add("data_wait", waited)
            samples += len(raw["key"])
            batch[role] = self._latest[role] = to_device(raw, self.device, self.dtype)
        return batch, samples

    # -- checkpoints ---------------------------------------------------------------------------

    def _client_state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "samples": self.samples,
            "world_size": self.dist.world_size,
            "rng": rng_state(),
            "data": {role: d.consumed for role, d in self.data.items()} or self._positions,
            "data_layout": self._data_layout(),
            "method": self.method.state_dict(),
            "shapes": self._shapes,
            "method_config": self._method_settings(),
        }
        if self.dist.is_main:
            state["ema"] = {
                name: {k: v.cpu() for k, v in ema.module.state_dict().items()} for name, ema in self.emas.items()
            }
        return state

    def _data_layout(self) -> dict[str, int]:
        """What fixes which samples each rank and worker reads: a resume must keep it."""
        d = self.cfg.data
        return {"batch_size": d.batch_size, "num_workers": d.num_workers, "shuffle_buffer": d.shuffle_buffer,
                "seed": self.cfg.seed}  # fmt: skip

    def save(self, metrics: dict[str, float] | None = None) -> Path:
        client = self._client_state()

        def write(path: Path) -> None:
            for name, engine in self.engines.items():
                engine.save_checkpoint(str(path), tag=name, client_state={}, save_latest=False)
            tmp = path / f".client-rank{self.dist.rank}.pt"
            torch.save(client, tmp)
            tmp.rename(path / f"client-rank{self.dist.rank}.pt")

        return self.checkpoints.save(self.step, write, {**(metrics or {}), "checkpoint_step": self.step})

    def resume(self) -> bool:
        """Restore the newest complete checkpoint, if any (with ``engine.resume`` off, only one of
        this run's own, after a restart); True if one was restored.

        The store passes over damaged ones (and says so), so a bad save costs the steps since the
        previous checkpoint, not the run.
        """
        path = self.checkpoints.latest() if self.cfg.resume or self.checkpoints.only_this_run else None
        if path is None:
            return False
        try:
            self._restore(path)
        finally:
            self.checkpoints.release(path)
        return True

    def _restore(self, path: Path) -> None:
        first = torch.load(path / "client-rank0.pt", map_location="cpu", weights_only=True)
        if first["world_size"] != self.dist.world_size:
            raise InputError(
                f"checkpoint {path} was written by {first['world_size']} ranks; this run has "
                f"{self.dist.world_size} (data positions and RNG states are per rank)"
            )
        if first.get("data_layout") != self._data_layout():
            raise InputError(
                f"checkpoint {path} read its streams with {first.get('data_layout')}; this run has "
                f"{self._data_layout()} (engine.data.* and engine.seed must match to resume)"
            )
        self._check_architecture(path, first)
        client = torch.load(path / f"client-rank{self.dist.rank}.pt", map_location="cpu", weights_only=True)
        for name, engine in self.engines.items():
            loaded, _ = engine.load_checkpoint(
                str(path), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if loaded is None:
                raise FileNotFoundError(f"checkpoint {path} has no DeepSpeed state for model {name!r}")
        if self.emas:
            ema_state = first["ema"]
            for name, ema in self.emas.items():
                ema.module.load_state_dict(ema_state[name])
        self.step, self.samples = client["step"], client["samples"]
        self._positions = dict(client["data"])
        self.method.load_state_dict(client["method"])
        set_rng_state(client["rng"])

    def _method_settings(self) -> dict[str, Any]:
        """The method's config as JSON types (what a weights-only checkpoint load accepts)."""
        return json.loads(json.dumps(plain(self.method.config), default=str))

    def _check_architecture(self, path: Path, first: dict) -> None:
        """Refuse, in one error naming both, a checkpoint whose networks this config does not build."""
        saved = first.get("shapes")
        if saved is None:  # written before shapes were recorded: DeepSpeed's own check remains
            return
        ours, theirs = _flat_shapes(self._shapes), _flat_shapes(saved)
        wrong = [f"{k} {theirs.get(k, 'missing')} (this config: {ours.get(k, 'missing')})"
                 for k in {**theirs, **ours} if theirs.get(k) != ours.get(k)]  # fmt: skip
        if not wrong:
            return
        settings = _differences(first.get("method_config", {}), self._method_settings(), "method")
        because = f"; settings that differ: {', '.join(settings[:6])}" if settings else ""
        raise InputError(
            f"checkpoint {path} holds networks of another architecture than this config builds: "
            f"{'; '.join(wrong[:4])}{f' (+{len(wrong) - 4} more)' if len(wrong) > 4 else ''}{because}. "
            "Resume with the run's settings (its method.json) or start a new run_dir"
        )

    # -- the loop ------------------------------------------------------------------------------

    def _sync(self) -> float:
        if self.cfg.sync_timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def train_step(self, times: StepTimes) -> tuple[dict[str, torch.Tensor], int]:
        """Run every phase active at ``self.step``; returns the mean losses (on the device: the
        reporter reads them once per log window, so the host never waits for a step) and the
        samples read."""
        losses: dict[str, list[torch.Tensor]] = defaultdict(list)
        samples = 0
        micro = self.cfg.gradient_accumulation
        updated: set[str] = set()
        for phase in self.phases:
            if not phase.active(self.step):
                continue
            engine = self.engines[phase.model]
            nets = self.nets(phase)
            for _ in range(phase.repeats * micro):
                batch, n = self._batch(phase.inputs, times)
                samples += n if phase.inputs else self.method.held_samples(phase)
                t0 = self._sync()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    out = self.method.step(phase, batch, nets, phase.interval)
                t1 = self._sync()
                self.backward(phase, out["loss"])
                t2 = self._sync()
                if engine.is_gradient_accumulation_boundary():
                    updated.add(phase.model)
                engine.step()
                t3 = self._sync()
                times.add("forward", t1 - t0)
                times.add("backward", t2 - t1)
                times.add("optimizer", t3 - t2)
                for key, value in out.items():
                    losses[f"{phase.name}/{key}"].append(value.detach())
        beta = self.cfg.ema_beta(self.step)
        for name in updated & self.emas.keys():  # once per step, however many phases updated the model
            self.emas[name].update(self.engines[name].module, beta, self.cfg.zero_stage == 3)
        return {k: torch.stack(v).float().mean() for k, v in losses.items()}, samples

    def fit(self) -> dict[str, float]:
        """Resume if possible, train to ``max_steps``, checkpoint; returns the last log summary."""
        cfg = self.cfg
        resumed = self.resume()
        if self.dist.is_main:  # the settings the networks were built with, for evaluation (after a resume passed)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "method.json").write_text(json.dumps(self._method_settings(), indent=2) + "\n")
        self._open_data()
        reporter = Reporter(
            self.run_dir,
            method=self.method.name,
            rank=self.dist.rank,
            metrics=self.metrics,
            log_every=cfg.log_every,
            tensorboard=cfg.tensorboard,
            progress=cfg.progress,
            start_step=self.step,
            max_steps=cfg.max_steps,
            status=self.status,
        )
        if resumed:
            reporter.message(f"resumed {self.method.name} at step {self.step}")
        summary: dict[str, float] = {}
        saved_at = self.step
        started = time.monotonic()
        try:
            while self.step < cfg.max_steps and not self._out_of_time(started):
                times = StepTimes()
                losses, samples = self.train_step(times)
                times.stop()
                self.samples += samples * self.dist.world_size
                summary = reporter.step(self.step, losses, times, samples) or summary
                if cfg.image_every and (self.step + 1) % cfg.image_every == 0:
                    reporter.images(self.step, self._images())  # every rank: ZeRO-3 forwards gather
                self.step += 1
                if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                    self.export(self.run_dir / "snapshots" / f"step{self.step:08d}", trained_only=True)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(summary)
                    saved_at = self.step
            if saved_at != self.step:
                self.save(summary)
        finally:
            reporter.close()
            for data in self.data.values():
                data.close()
        return summary

    def _out_of_time(self, started: float) -> bool:
        """``engine.max_minutes`` has passed (rank 0's clock, so every rank stops at the same step).
        Several ranks agree once per log window, where the losses are read anyway: a broadcast
        every step would make every step wait for the device."""
        if not self.cfg.max_minutes:
            return False
        if self.dist.world_size > 1 and self.step % max(self.cfg.log_every, 1):
            return False
        over = time.monotonic() - started >= 60 * self.cfg.max_minutes
        if self.dist.world_size == 1:
            return over
        flag = torch.tensor(float(over), device=self.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    @torch.no_grad()
    def _images(self) -> dict[str, torch.Tensor]:
        # EMA copies are fp32 while bf16 runs feed bf16 batches: autocast reconciles them.
        bf16 = self.dtype == torch.bfloat16 or self.autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            grids = self.method.images(self._latest, self.eval_nets())
        return {k: v.float() for k, v in grids.items()}

    def export(self, out: Path | None = None, trained_only: bool = False) -> Path:
        """Write each model's weights (the EMA copy where there is one) to ``<out>/<name>.pt`` (by
        default ``<run_dir>/models``), and rank 0's method state (``method_state.pt``), which
        evaluation restores. ``trained_only`` leaves out the frozen models (a snapshot need not
        copy a pretrained generator each time)."""
        out = out or self.run_dir / "models"
        zero3 = self.cfg.zero_stage == 3
        for name, module in self.modules.items():
            if trained_only and name not in self.engines:
                continue
            gather = contextlib.nullcontext()
            if zero3 and name in self.engines:
                import deepspeed

                gather = deepspeed.zero.GatheredParameters(list(module.parameters()))
            with gather:
                source = self.emas[name].module if name in self.emas else module
                state = {k: v.detach().float().cpu().clone() for k, v in source.state_dict().items()}
            if self.dist.is_main:
                out.mkdir(parents=True, exist_ok=True)
                torch.save(state, out / f".{name}.pt")
                (out / f".{name}.pt").rename(out / f"{name}.pt")
        if self.dist.is_main:
            torch.save(self.method.state_dict(), out / ".method_state.pt")
            (out / ".method_state.pt").rename(out / "method_state.pt")
        self.dist.barrier()
        return out


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _flat_shapes(models: dict[str, dict[str, list[int]]]) -> dict[str, list[int]]:
    """``{"<model> <tensor>": shape}`` over every model."""
    return {f"{name} {k}": shape for name, shapes in models.items() for k, shape in shapes.items()}


def _differences(saved: Any, current: Any, key: str) -> list[str]:
    """Dotted keys whose values differ between two plain configs, each with both values."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for k in sorted(set(saved) | set(current), key=str)
                for d in _differences(saved.get(k), current.get(k), f"{key}.{k}")]  # fmt: skip
    return [] if saved == current else [f"{key} {saved!r} (checkpoint) vs {current!r} (this config)"]
