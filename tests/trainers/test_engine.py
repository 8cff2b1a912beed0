"""The engine with SimGAN on CPU: GAN alternation, exact resume, ZeRO stages, bad configs."""

from __future__ import annotations

import json
import time

import pytest
import torch

from renderloop.cluster.launch import train_worker
from renderloop.config import ConfigError
from renderloop.trainers.engine import Trainer
from renderloop.trainers.reporting import StepTimes
from tests.trainers.helpers import debug_config, make_streams


def _trainer(cfg) -> Trainer:
    return Trainer(
        cfg.method_name,
        cfg.method_config,
        cfg.engine,
        root=cfg.storage.root,
        stream_prefix=cfg.storage.stream,
        run_dir=cfg.run_dir,
        device="cpu",
    )


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.fixture
def streams(tmp_path):
    cfg = debug_config(tmp_path / "data", tmp_path / "run")
    make_streams(cfg)
    return tmp_path


def test_gan_step_updates_both_and_discriminator_gets_no_generator_gradient(streams):
    cfg = debug_config(streams / "data", streams / "run")
    trainer = _trainer(cfg)
    try:
        trainer._open_data()
        trainer.step = 2  # past the one-step pre-training phases: R_main and D_main run
        R, D = trainer.modules["R"], trainer.modules["D"]
        r0, d0 = _params(R), _params(D)

        phase = next(p for p in trainer.phases if p.name == "R_main")
        nets = trainer.nets(phase)
        assert nets["D"] is D and nets["R"] is R  # plain modules, never a DeepSpeed engine
        batch, _ = trainer._batch(phase.inputs, StepTimes())
        out = trainer.method.step(phase, batch, nets, phase.interval)
        trainer.backward(phase, out["loss"])
        assert all(p.grad is None for p in D.parameters()), "the generator loss reached D"
        assert all(not p.requires_grad for p in D.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in R.parameters())
        trainer.engines["R"].step()
        assert _changed(r0, R) and not _changed(d0, D)

        d1 = _params(D)
        losses, samples = trainer.train_step(StepTimes())
        assert _changed(d1, D)
        assert {"R_main/adversarial", "R_main/self_reg", "D_main/loss"} <= set(losses)
        assert all(isinstance(v, torch.Tensor) for v in losses.values()), "read by the reporter per window"
        assert samples == 3 * cfg.engine.data.batch_size  # R: synthetic; D: synthetic + real
    finally:
        for data in trainer.data.values():
            data.close()


def _losses(run_dir) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss/")} for r in rows}


# At step 3 each stream has handed out an even number of batches; at step 4 the real stream has
# handed out 3, so with 2 workers the next batch comes from worker 1, not the loader's first.
@pytest.mark.parametrize(("workers", "stop"), [(0, 3), (2, 3), (2, 4)])
def test_resume_reproduces_the_uninterrupted_loss_curve(streams, workers, stop):
    data, extra = streams / "data", [f"engine.data.num_workers={workers}", "engine.max_steps=6"]
    whole = debug_config(data, streams / "whole", *extra, "engine.checkpoint_every=3")
    train_worker(whole)
    part = debug_config(data, streams / "part", *extra, "engine.checkpoint_every=3")
    part.engine.max_steps = stop
    train_worker(part)  # "killed" after the checkpoint at ``stop``
    part.engine.max_steps = 6
    train_worker(part)  # resumes at ``stop``
    a, b = _losses(streams / "whole"), _losses(streams / "part")
    assert sorted(b) == list(range(6)) and any(k.startswith("loss/D_main") for k in a[5])
    for step in range(6):
        assert a[step].keys() == b[step].keys()
        for key in a[step]:
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-7), (step, key)


def test_steps_redone_after_a_resume_are_logged_once(streams, monkeypatch):
    cfg = debug_config(streams / "data", streams / "run", "engine.max_steps=6", "engine.checkpoint_every=3")
    real_step = Trainer.train_step

    def crash_at_step_5(self, times):
        if self.step == 5:
            raise RuntimeError("killed")
        return real_step(self, times)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        train_worker(cfg)  # logs steps 0-4; the last checkpoint is step 3
    monkeypatch.setattr(Trainer, "train_step", real_step)
    train_worker(cfg)  # redoes steps 3 and 4
    rows = [json.loads(line) for line in (streams / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    replaced = (streams / "run" / "train_log.replaced.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in replaced] == [3, 4]


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_the_optimizer_gets_the_gradient_clipped_only_as_configured(streams, clip):
    """``engine.grad_clip=0`` leaves gradients alone (DeepSpeed's own default would clip at 1)."""
    cfg = debug_config(streams / "data", streams / "run", f"engine.grad_clip={clip}")
    trainer = _trainer(cfg)
    phase = next(p for p in trainer.phases if p.model == "R")
    engine, R = trainer.engines["R"], trainer.nets(phase)["R"]
    seen = []
    step = engine.optimizer.step

    def recording_step(*args, **kwargs):
        seen.extend(p.grad.clone() for p in R.parameters())
        return step(*args, **kwargs)

    engine.optimizer.step = recording_step
    trainer.backward(phase, 1e4 * sum(p.sum() for p in R.parameters()))  # every gradient is 1e4
    engine.step()
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in seen]))
    if clip:
        assert norm.item() == pytest.approx(clip, rel=1e-4)
    else:
        assert all(torch.equal(g, torch.full_like(g, 1e4)) for g in seen)


@pytest.mark.parametrize("decoupled", [True, False])
def test_weight_decay_is_decoupled_or_an_l2_term_as_the_model_spec_says(streams, monkeypatch, decoupled):
    from dataclasses import replace

    from renderloop.trainers.simgan import SimGAN

    build = SimGAN.build
    monkeypatch.setattr(SimGAN, "build", lambda self: {k: replace(v, weight_decay=0.5, decoupled_weight_decay=decoupled)
                                                       for k, v in build(self).items()})  # fmt: skip
    trainer = _trainer(debug_config(streams / "data", streams / "run"))
    phase = next(p for p in trainer.phases if p.model == "R")
    engine, R = trainer.engines["R"], trainer.nets(phase)["R"]
    lr = engine.optimizer.param_groups[0]["lr"]
    before = _params(R)
    trainer.backward(phase, 0 * sum(p.sum() for p in R.parameters()))  # no gradient from the loss
    engine.step()
    for old, new in zip(before, R.parameters(), strict=True):
        if decoupled:  # AdamW shrinks the weights and takes no Adam step on a zero gradient
            assert torch.allclose(new, old * (1 - lr * 0.5), atol=1e-7)
        else:  # L2: the gradient is 0.5 w, and Adam's first step moves each weight by lr against it
            assert torch.allclose(new, old - lr * torch.sign(old), atol=1e-6)


def test_a_parameter_without_gradient_in_an_update_moves_on_momentum_as_on_many_ranks(streams):
    """DeepSpeed's all-reduce gives a gradient-less trainable parameter a zero gradient, also on one
    rank, so Adam moves it on its momentum (a regularizer phase that skips a bias must not freeze it)."""
    trainer = _trainer(debug_config(streams / "data", streams / "run"))
    phase = next(p for p in trainer.phases if p.model == "R")
    engine, R = trainer.engines["R"], trainer.nets(phase)["R"]
    first, *rest = list(R.parameters())
    trainer.backward(phase, sum(p.sum() for p in R.parameters()))  # momentum for every parameter
    engine.step()
    before = [p.detach().clone() for p in rest]
    trainer.backward(phase, first.sum())  # only the first parameter gets a gradient
    engine.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, rest, strict=True))


def _phases_training_only(monkeypatch, trains: tuple[str, ...]) -> None:
    """SimGAN with its main refiner phase updating only ``trains`` of R."""
    from dataclasses import replace

    from renderloop.trainers.simgan import SimGAN

    phases = SimGAN.phases
    monkeypatch.setattr(SimGAN, "phases", lambda self: [replace(p, trains=trains) if p.name == "R_main" else p
                                                        for p in phases(self)])  # fmt: skip


def test_a_phase_that_trains_part_of_a_model_leaves_the_rest_exactly_as_it_was(streams, monkeypatch):
    """No gradient, so no zero-filled one: neither Adam's momentum nor its L2 decay moves the rest."""
    _phases_training_only(monkeypatch, ("stem",))
    trainer = _trainer(debug_config(streams / "data", streams / "run"))
    whole, part = (next(p for p in trainer.phases if p.name == name) for name in ("R_pretrain", "R_main"))
    engine, R = trainer.engines["R"], trainer.nets(whole)["R"]
    trainer.backward(whole, sum(p.sum() for p in R.parameters()))  # momentum for every parameter
    engine.step()
    R = trainer.nets(part)["R"]
    assert all(p.requires_grad for p in R.stem.parameters())
    assert not any(p.requires_grad for p in [*R.blocks.parameters(), *R.head.parameters()])
    blocks, head, stem = _params(R.blocks), _params(R.head), _params(R.stem)
    trainer.backward(part, sum(p.sum() for p in R.parameters() if p.requires_grad))
    engine.step()
    assert not _changed(blocks, R.blocks) and not _changed(head, R.head) and _changed(stem, R.stem)


@pytest.mark.parametrize(("trains", "override", "error"), [
    (("stem",), "engine.zero_stage=2", ConfigError), (("stem", "tail"), "", ValueError)])  # fmt: skip
def test_a_partial_phase_is_refused_under_zero_or_for_a_sub_module_without_parameters(
    streams, monkeypatch, trains, override, error
):
    _phases_training_only(monkeypatch, trains)
    cfg = debug_config(streams / "data", streams / "run", *([override] if override else []))
    with pytest.raises(error, match="zero_stage|no parameters in") as raised:
        _trainer(cfg)
    assert "R_main" in str(raised.value)


@pytest.mark.gpu
@pytest.mark.parametrize(("method", "precision"), [("simgan_debug", "fp32"), ("stylegan2_debug", "bf16_autocast")])
def test_a_training_step_never_waits_for_the_device_cuda(tmp_path, method, precision):
    """No host read inside a step (``bf16``'s DeepSpeed optimizer has one per update by design)."""
    from renderloop.cluster.launch import TrainConfig
    from renderloop.config import load_config
    from tests.trainers.helpers import make_streams

    cfg = load_config("train", [f"method={method}", "engine=debug", f"engine.precision={precision}", "device=cuda",
                                f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                                "samples_per_shard=8", "engine.max_steps=100"], TrainConfig)  # fmt: skip
    make_streams(cfg)
    trainer = Trainer(cfg.method_name, cfg.method_config, cfg.engine, root=cfg.storage.root,
                      stream_prefix=cfg.storage.stream, run_dir=cfg.run_dir, device="cuda")  # fmt: skip
    trainer._open_data()
    try:
        for checked in (False,) * 4 + (True,) * 4:  # warm-up first: allocations, cuDNN's autotuning
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error" if checked else 0)
            try:
                trainer.train_step(StepTimes())
            finally:
                torch.cuda.set_sync_debug_mode(0)
            trainer.step += 1
    finally:
        for data in trainer.data.values():
            data.close()


def test_ema_moves_each_weight_towards_the_model_and_copies_buffers():
    from renderloop.trainers.engine import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model, beta=0.75, zero3=False)
    for old, new, p in zip(before, ema.module.parameters(), model.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * p)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 5.0))


def test_max_minutes_stops_with_a_checkpoint_and_the_same_command_continues(streams, monkeypatch):
    import renderloop.trainers.engine as engine_module

    class Clock:  # 20 s pass at every look at the clock
        now = 0.0

        def __getattr__(self, name):
            return getattr(time, name)

        def monotonic(self):
            self.now += 20.0
            return self.now

    monkeypatch.setattr(engine_module, "time", Clock())
    cfg = debug_config(streams / "data", streams / "run", "engine.max_steps=6", "engine.max_minutes=1")
    train_worker(cfg)  # started at 20 s; steps at 40 s and 60 s; at 80 s a minute has passed
    assert (streams / "run" / "checkpoints" / "latest").read_text().strip() == "step00000002"
    cfg.engine.max_minutes = 0
    train_worker(cfg)
    assert sorted(_losses(streams / "run")) == list(range(6))


def test_several_ranks_agree_on_the_time_limit_once_per_log_window(monkeypatch):
    from types import SimpleNamespace

    broadcasts = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda flag, src: broadcasts.append(float(flag)))
    trainer = SimpleNamespace(cfg=SimpleNamespace(max_minutes=1e-9, log_every=5),
                              dist=SimpleNamespace(world_size=2), device=torch.device("cpu"))  # fmt: skip
    over = []
    for step in range(11):
        trainer.step = step
        over.append(Trainer._out_of_time(trainer, started=time.monotonic() - 1.0))
    assert over == [True] + [False] * 4 + [True] + [False] * 4 + [True] and len(broadcasts) == 3


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train_and_checkpoint(streams, stage):
    run_dir = streams / f"zero{stage}"
    cfg = debug_config(streams / "data", run_dir, f"engine.zero_stage={stage}", "engine.max_steps=3")
    summary = train_worker(cfg)
    assert summary["step"] == 2 and all(v == v for v in summary.values())  # no NaN
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step00000003"
    exported = torch.load(run_dir / "models" / "R.pt", weights_only=True)
    assert exported["stem.weight"].shape == (8, 3, 3, 3)  # full weights, also under ZeRO-3


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.name=nosuch", "method.name"),
        ("method.self_reg=-1", "method.self_reg"),
        ("engine.zero_stage=5", "engine.zero_stage"),
        ("engine.precision=fp8", "engine.precision"),
        ("cluster.mode=slurm", "cluster.mode"),
        ("samples_per_shard=6", "samples_per_shard"),
        ("cluster.producers_by_role={fake:3}", "cluster.producers_by_role"),
        ("cluster.producers_by_role={real:0}", "cluster.producers_by_role.real"),
    ],
)
def test_bad_config_is_refused_before_any_model_is_built(tmp_path, monkeypatch, override, key):
    def fail(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(Trainer, "__init__", fail)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        debug_config(tmp_path, tmp_path / "run", override)


def test_logging_writes_tensorboard_scalars_and_images_and_prometheus_metrics(streams):
    import prometheus_client

    from renderloop.metrics import PrometheusSink

    run_dir = streams / "logged"
    cfg = debug_config(streams / "data", run_dir, "engine.tensorboard=true", "engine.image_every=2")
    sink = PrometheusSink()
    train_worker(cfg, metrics=sink)
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    data = events[0].read_bytes()
    for tag in (b"loss/R_main/adversarial", b"perf/samples_per_s", b"perf/data_wait_fraction", b"images/refined"):
        assert tag in data, tag
    text = prometheus_client.generate_latest(sink.registry).decode()
    assert 'renderloop_trainer_steps_total{method="simgan",rank="0"} 4.0' in text
    assert "renderloop_trainer_data_wait_seconds_count" in text and "renderloop_trainer_samples_per_second" in text
    assert 'renderloop_loss{method="simgan",phase="D_main",rank="0",term="loss"}' in text


def test_bf16_training_with_fp32_ema_image_grids(streams):
    cfg = debug_config(
        streams / "data", streams / "bf16", "engine.precision=bf16", "engine.image_every=2", "engine.tensorboard=true"
    )
    summary = train_worker(cfg)
    assert summary["step"] == 3 and summary["R_main/loss"] == summary["R_main/loss"]  # finite, not NaN


def test_resume_refuses_another_data_layout_and_keeps_new_checkpoints(streams):
    run_dir = streams / "layout"
    cfg = debug_config(streams / "data", run_dir, "engine.max_steps=2")
    train_worker(cfg)
    other = debug_config(streams / "data", run_dir, "engine.max_steps=4", "engine.data.shuffle_buffer=4")
    with pytest.raises(ValueError, match="engine.data"):
        train_worker(other)
    # A fresh run in a folder with later stale checkpoints: its own saves survive pruning.
    (run_dir / "checkpoints" / "step00000099").mkdir()
    fresh = debug_config(streams / "data", run_dir, "engine.max_steps=2", "engine.resume=false")
    train_worker(fresh)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest.name == "step00000002" and (latest / "client-rank0.pt").exists()
