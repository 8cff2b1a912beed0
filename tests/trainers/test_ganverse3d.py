"""method=ganverse3d: annotated view codes feed a multi-view stylegan2 stream; every group's views
train the network and the view codes' cameras, the single-view and fixed-camera ablations train
what they should, and the evaluation scores silhouettes in input and novel true views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.models.stylegan2.io import load_generator
from renderloop.trainers.oracle import Oracle
from renderloop.trainers.view_codes import annotate, save_annotation

from .helpers import evaluate, gan_method_assets, make_streams


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ganverse3d")
    found = gan_method_assets(root)
    G, oracle = load_generator(found["checkpoint"]), Oracle.load(found["oracle"], "cpu")
    codes, report = annotate(
        G, oracle, k=4, candidates=6, samples_per_code=2, max_spread_deg=360.0, require_object=False
    )  # the toy generator's images are not objects
    assert report["oracle_calls"] == 12 and report["kept"] == 6  # every spread is within 360°
    found["codes"], found["labels"] = map(str, save_annotation(codes, report, root / "annotation"))
    return found


def _config(tmp_path, assets, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        ["method=ganverse3d", "engine=debug", f"method.data.views.checkpoint={assets['checkpoint']}",
         f"method.data.views.view_codes={assets['codes']}", f"method.view_labels={assets['labels']}",
         f"method.oracle_run={assets['oracle']}", "method.data.views.batch_size=4", "method.data.views.views=2",
         "engine.data.batch_size=4", "method.subdivisions=1", "method.texture_size=8", "method.width=8",
         "method.zdim=16", "method.warmup_steps=1", "method.min_area=0", "method.renders.subdivisions=2",
         "method.evaluation.samples=4", "method.evaluation.novel_views=2", "method.evaluation.batch_size=6",
         "method.evaluation.gan_groups=3", "method.evaluation.mean_shape_objects=8",
         f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "samples_per_shard=4", "device=cpu",
         *overrides],
        TrainConfig,
    )  # fmt: skip


def _weights(tmp_path) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)


def test_groups_train_the_network_and_the_cameras_and_are_scored_in_true_views(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=3")
    make_streams(cfg, samples=16)
    labels = json.loads(Path(assets["labels"]).read_text())
    start = torch.tensor([labels[n] for n in list(labels)[:2]]) * (2 * math.pi / 12)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {k.split("/")[1] for k in rows[0] if k.startswith("loss/")} == {"warmup"}
    assert {k.split("/")[1] for k in rows[-1] if k.startswith("loss/")} == {"main"}
    assert all("loss/main/iou_other_views" in r for r in rows[1:])  # the multi-view term
    weights = _weights(tmp_path)
    azimuth = weights["cameras.stored"][0] * cfg.method_config.camera_lr_scale
    assert not torch.allclose(azimuth, start)  # the cameras moved off their bins
    assert weights["net.offsets.weight"].abs().sum() > 0
    report = evaluate(cfg)
    assert report["test_objects"] == 4 and 0 <= report["input_view_iou"] <= 1 and 0 <= report["novel_view_iou"] <= 1
    assert report["chamfer"] > 0 and 0 <= report["fscore@0.02"] <= 1
    assert 0 < report["mean_shape/input_view_iou"] <= 1 and report["mean_shape/chamfer"] > 0  # the constant row
    assert 0 <= report["mean_shape/novel_view_iou"] <= 1 and 0 <= report["mean_shape/fscore@0.02"] <= 1
    assert 0 <= report["gan_view_iou"] <= 1 and 0 <= report["camera_error_deg"] <= 180  # held-out GAN groups
    assert 0 <= report["camera_elevation_error_deg"] <= 180
    saved = json.loads((tmp_path / "run" / "eval" / "ganverse3d_eval.json").read_text())
    assert len(saved["camera_azimuth_deg"]) == 2 and (tmp_path / "run" / "eval" / "ganverse3d_eval.png").exists()


def test_the_ablations_keep_cameras_fixed_and_drop_the_other_view(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=2", "method.optimize_cameras=false", "method.multi_view=false")
    make_streams(cfg, samples=8)
    labels = json.loads(Path(assets["labels"]).read_text())
    start = torch.tensor([labels[n] for n in list(labels)[:2]], dtype=torch.float32) * (2 * math.pi / 12)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert not any("iou_other_views" in k for r in rows for k in r)
    assert torch.allclose(_weights(tmp_path)["cameras.stored"][0] * cfg.method_config.camera_lr_scale, start)


def test_cameras_learn_at_their_own_rate():
    from renderloop.trainers.ganverse3d import ViewCameras

    cameras = ViewCameras(torch.tensor([0.0, math.pi / 2]), distance=2.7, lr_scale=30.0)
    assert torch.allclose(cameras.azimuth, torch.tensor([0.0, math.pi / 2]))
    assert torch.allclose(cameras.elevation, torch.zeros(2)) and torch.allclose(
        cameras.log_distance.exp(), torch.full((2,), 2.7)
    )
    optimizer = torch.optim.Adam(cameras.parameters(), lr=1e-4)
    cameras.elevation.sum().backward()
    optimizer.step()  # Adam's first update moves each stored value by the learning rate
    assert torch.allclose(cameras.elevation, torch.full((2,), -30 * 1e-4), atol=1e-7)


def test_bad_ganverse3d_configs_are_refused(tmp_path, assets):
    with pytest.raises(ConfigError, match="method.data.views"):
        _config(tmp_path, assets, "method.data.views.views=1")
    with pytest.raises(ConfigError, match="method.lam_iou"):
        _config(tmp_path, assets, "method.lam_iou=-1")


@pytest.mark.parametrize("views", [2, 1])
def test_renders_with_exact_cameras_train_the_ceiling_and_the_single_view_baseline(tmp_path, assets, views):
    cfg = load_config("train", [
        "method=ganverse3d_renders", "engine=debug",
        f"method.data.views.views={views}", "method.data.views.resolution=16", "method.data.views.batch_size=4",
        "method.data.views.subdivisions=2", f"method.multi_view={views > 1}",
        f"method.oracle_run={assets['oracle']}", "engine.data.batch_size=4", "method.subdivisions=1",
        "method.texture_size=8", "method.width=8", "method.zdim=16", "method.warmup_steps=1",
        "method.renders.subdivisions=2", "method.evaluation.samples=2", "method.evaluation.novel_views=1",
        "method.evaluation.batch_size=4", "engine.max_steps=2", f"storage.root={tmp_path / 'data'}",
        f"run_dir={tmp_path / 'run'}", "samples_per_shard=4", "device=cpu"], TrainConfig)  # fmt: skip
    make_streams(cfg, samples=8)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert ("loss/main/iou_other_views" in rows[-1]) == (views > 1)
    assert evaluate(cfg)["test_objects"] == 2


def test_bf16_weights_are_refused_for_the_renderer_methods(tmp_path, assets):
    with pytest.raises(ConfigError, match="engine.precision"):
        _config(tmp_path, assets, "engine.precision=bf16")
    assert _config(tmp_path, assets, "engine.precision=bf16_autocast").engine.precision == "bf16_autocast"


def test_the_mean_shape_averages_training_objects_in_the_spheres_vertex_order():
    from renderloop.datasets.simulator import Simulator, SimulatorConfig
    from renderloop.trainers.ganverse3d import _mean_shape

    sim = Simulator(SimulatorConfig(category="vehicle", num_parts=10, resolution=16, subdivisions=2), "cpu")
    first, second = sim.category_meshes(torch.tensor([0, 1]))[0]
    assert torch.equal(_mean_shape(sim, 1)[0], first)  # the gan range starts at seed 0
    assert torch.allclose(_mean_shape(sim, 2)[0], (first + second) / 2)
