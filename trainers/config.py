"""Engine settings (Hydra group ``engine``) and their translation into DeepSpeed configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from renderloop.config import ConfigError

__all__ = ["EngineConfig", "DataConfig", "deepspeed_config", "lr_multiplier"]

PRECISIONS = ("fp32", "bf16", "bf16_autocast")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class DataConfig:
    """How the trainer reads its streams."""

    batch_size: int = 32
    """Micro-batch per rank and per stream."""
    num_workers: int = 2
    """Dataloader worker processes per stream (0 decodes in the training process)."""
    shuffle_buffer: int = 256
    """Samples held for shuffling per worker."""
    follow: bool = True
    """Wait for shards that producers have not published yet (live streams); a closed stream repeats."""
    idle_timeout: float | None = 600.0
    """Stop waiting, with an error that names the stream, after this many seconds without a new
    shard of an open stream (None: wait for ever): a stream whose producers died never closes."""
    delete_consumed: bool = False
    """Delete each shard once it has been read (ledger entries stay): disk holds only the backlog.
    ``renderloop run`` turns it on; a resume then continues after the deleted shards instead of
    replaying them, so it is exact only up to the shuffle order around the restart."""
    read_receipts: bool = False
    """Leave a receipt per shard read (``<stream>/reads/``): ``renderloop inspect`` then counts
    shards read more than once in a pass, e.g. to audit a run that restarted."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("engine.data.batch_size", f"must be >= 1; got {self.batch_size}")
        for key in ("num_workers", "shuffle_buffer"):
            if getattr(self, key) < 0:
                raise ConfigError(f"engine.data.{key}", f"must be >= 0; got {getattr(self, key)}")
        if self.idle_timeout is not None and not 0 < self.idle_timeout < math.inf:
            raise ConfigError("engine.data.idle_timeout", f"must be > 0 and finite, or null; got {self.idle_timeout}")


@dataclass
class EngineConfig:
    """Everything the engine owns; a method's own settings live under ``method``."""

    max_steps: int = 1000
    """Engine steps; every active phase runs once per step (see ``trainers.method.Phase``)."""
    max_minutes: float = 0.0
    """Also stop (and checkpoint) after this many minutes of this process's training (0: no limit),
    e.g. to fit a time-limited allocation; a later run with the same ``run_dir`` resumes. Several
    ranks check it at the end of each log window."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0-3."""
    precision: str = "fp32"
    """``fp32``; ``bf16`` (bf16 weights and batches, DeepSpeed's mixed-precision optimizer keeps
    fp32 master weights; its step reads the gradient norm on the host, a device sync per update); or
    ``bf16_autocast`` (fp32 weights and optimizer, each step's forward under ``torch.autocast``
    in bf16: no sync in the optimizer)."""
    gradient_accumulation: int = 1
    grad_clip: float = 0.0
    """Clip the global gradient norm at this value (0: off)."""
    lr_schedule: str = "constant"
    """``constant``, ``cosine`` or ``linear`` decay to ``min_lr_ratio``, reached at each model's
    last optimizer update of the run (a model updated twice per step decays over twice the updates)."""
    warmup_steps: int = 0
    """Linear warm-up, in optimizer updates of each model."""
    min_lr_ratio: float = 0.0
    ema_half_life: float = 0.0
    """EMA half-life, in steps, of models that ask for one (0: EMA equals the model); the EMA is
    updated once per step in which its model was updated."""
    ema_rampup: float = 0.0
    """Let the half-life grow with the run: at step s it is at most ``ema_rampup · s`` (StyleGAN2-ADA
    uses 0.05), so an early EMA does not hold on to the random initialization; 0: fixed from the start."""
    seed: int = 0
    checkpoint_every: int = 500
    """Save every this many steps (and at the end); 0 saves only at the end."""
    keep_checkpoints: int = 2
    snapshot_every: int = 0
    """Also export the trained models' weights (as ``models/``, frozen models left out) to
    ``snapshots/step<N>`` every this many steps (0: never): the candidates an evaluation may
    choose among (``part_segmentation``'s per-fold choice)."""
    resume: bool = True
    """Continue from the run directory's latest checkpoint when there is one. Off, a run starts
    afresh; under Ray Train a restart after a failure still restores the run's own checkpoint."""
    log_every: int = 10
    image_every: int = 0
    """Write image grids to TensorBoard every this many steps (0: never)."""
    tensorboard: bool = True
    progress: bool = True
    """Show a progress bar on rank 0."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms once per shape and keep the fastest (GPU runs;
    the chosen algorithms may differ between runs, so results can differ in the last bits)."""
    sync_timing: bool = False
    """Synchronize the device around forward/backward/optimizer to time them apart (slower)."""
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"engine.{key}", msg)

        if self.max_steps < 1:
            raise bad("max_steps", f"must be >= 1; got {self.max_steps}")
        if not 0 <= self.max_minutes < math.inf:
            raise bad("max_minutes", f"must be >= 0 and finite; got {self.max_minutes}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise bad("zero_stage", f"must be 0, 1, 2 or 3; got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}; got {self.precision!r}")
        if self.gradient_accumulation < 1:
            raise bad("gradient_accumulation", f"must be >= 1; got {self.gradient_accumulation}")
        if not 0 <= self.grad_clip < math.inf:
            raise bad("grad_clip", f"must be >= 0 and finite; got {self.grad_clip}")
        if self.lr_schedule not in SCHEDULES:
            raise bad("lr_schedule", f"must be one of {SCHEDULES}; got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", f"must be >= 0; got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", f"must be in [0, 1]; got {self.min_lr_ratio}")
        if not 0 <= self.ema_half_life < math.inf:
            raise bad("ema_half_life", f"must be >= 0 and finite; got {self.ema_half_life}")
        if not 0 <= self.ema_rampup < math.inf:
            raise bad("ema_rampup", f"must be >= 0 and finite; got {self.ema_rampup}")
        for key in ("checkpoint_every", "log_every", "image_every", "snapshot_every"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0; got {getattr(self, key)}")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", f"must be >= 1; got {self.keep_checkpoints}")

    def ema_beta(self, step: int) -> float:
        """The EMA's decay per update at ``step`` (0-based): its half-life, capped by the ramp-up."""
        half_life = self.ema_half_life
        if self.ema_rampup > 0:
            half_life = min(half_life, self.ema_rampup * step)
        return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0


def lr_multiplier(cfg: EngineConfig, update: int, total_updates: int) -> float:
    """Learning-rate factor at a model's optimizer update ``update`` of ``total_updates``: linear
    warm-up over ``warmup_steps`` updates, then the decay, which ends at the model's last update."""
    if update < cfg.warmup_steps:
        return (update + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min((update - cfg.warmup_steps) / max(total_updates - cfg.warmup_steps, 1), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def deepspeed_config(cfg: EngineConfig, lr: float, betas: tuple[float, float], weight_decay: float, world: int,
                     decoupled: bool = True) -> dict:  # fmt: skip
    """The DeepSpeed config of one model's engine (``decoupled``: AdamW's weight decay, else L2)."""
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "train_batch_size": cfg.data.batch_size * cfg.gradient_accumulation * world,
        "optimizer": {
            # torch's fused Adam: one kernel group per update, no JIT-built extension, CPU and GPU.
            "type": "AdamW" if weight_decay and decoupled else "Adam",
            "params": {
                "lr": lr,
                "betas": list(betas),
                "weight_decay": weight_decay,
                "torch_adam": True,
                "fused": True,
                **({} if decoupled else {"adam_w_mode": False}),  # DeepSpeed's "Adam" is AdamW unless told
            },
        },
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        # Always set: DeepSpeed's own default clips the gradient norm at 1.0.
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
