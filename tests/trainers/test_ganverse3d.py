"""method=ganverse3d: annotated view codes feed a multi-view stylegan2 stream; every group's views
train the network and the view codes' cameras (their mean azimuth and distance pinned), the
single-view and fixed-camera ablations train what they should, and the evaluation scores
silhouettes in input and novel true views and each drawn code's camera."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets.stylegan2 import StyleGAN2Source
from renderloop.models.stylegan2.io import load_generator
from renderloop.models.stylegan2.latents import ViewCodes
from renderloop.trainers.ganverse3d import HELD_OUT_GAN_SEED, GANverse3D, ViewCameras, per_code_viewpoints
from renderloop.trainers.oracle import Oracle
from renderloop.trainers.scores import angle_error_deg
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
        ["method=ganverse3d_debug", "engine=debug", f"method.data.views.checkpoint={assets['checkpoint']}",
         f"method.data.views.view_codes={assets['codes']}", f"method.view_labels={assets['labels']}",
         f"method.oracle_run={assets['oracle']}", f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
         "samples_per_shard=4", "device=cpu", *overrides],
        TrainConfig,
    )  # fmt: skip


def _weights(tmp_path) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)


def _cameras(tmp_path, cfg: TrainConfig) -> ViewCameras:
    """The trained run's cameras."""
    weights = {k.removeprefix("cameras."): v for k, v in _weights(tmp_path).items() if k.startswith("cameras.")}
    cameras = ViewCameras(weights["initial"][0], cfg.method_config.distance, cfg.method_config.camera_lr_scale)
    cameras.load_state_dict(weights)
    return cameras.requires_grad_(False)


def _labelled_azimuths(assets) -> torch.Tensor:
    """Every registry code's bin in radians: the pool's cameras at the start."""
    labels = json.loads(Path(assets["labels"]).read_text())
    return torch.tensor([labels[n] for n in ViewCodes.load(assets["codes"]).names()]) * (2 * math.pi / 12)


def test_groups_train_the_network_and_the_cameras_and_are_scored_in_true_views(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=3")
    make_streams(cfg, samples=16)
    start = _labelled_azimuths(assets)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {k.split("/")[1] for k in rows[0] if k.startswith("loss/")} == {"warmup"}
    assert {k.split("/")[1] for k in rows[-1] if k.startswith("loss/")} == {"main"}
    assert all("loss/main/iou_other_views" in r for r in rows[1:])  # the multi-view term
    cameras = _cameras(tmp_path, cfg)
    assert len(cameras.azimuth) == 6  # one per code of the pool: the whole registry
    assert not torch.allclose(cameras.azimuth, start)  # the cameras moved off their bins
    assert float((cameras.azimuth - start).mean()) == pytest.approx(0, abs=1e-6)  # but not all together
    assert _weights(tmp_path)["net.offsets.weight"].abs().sum() > 0
    report = evaluate(cfg)
    assert report["test_objects"] == 4 and 0 <= report["input_view_iou"] <= 1 and 0 <= report["novel_view_iou"] <= 1
    assert report["chamfer"] > 0 and 0 <= report["fscore@0.02"] <= 1
    assert 0 < report["mean_shape/input_view_iou"] <= 1 and report["mean_shape/chamfer"] > 0  # the constant row
    assert 0 <= report["mean_shape/novel_view_iou"] <= 1 and 0 <= report["mean_shape/fscore@0.02"] <= 1
    assert 0 <= report["gan_view_iou"] <= 1 and 0 <= report["camera_error_deg"] <= 180  # held-out GAN groups
    assert 0 <= report["gan_oracle_camera_input_view_iou"] <= 1  # the cameras every row is scored with
    assert 0 <= report["camera_elevation_error_deg"] <= 180 and 2 <= report["camera_codes_scored"] <= 6
    saved = json.loads((tmp_path / "run" / "eval" / "ganverse3d_eval.json").read_text())
    assert len(saved["camera_azimuth_deg"]) == 6 and (tmp_path / "run" / "eval" / "ganverse3d_eval.png").exists()
    assert sum(e is not None for e in saved["camera_error_per_code_deg"]) == report["camera_codes_scored"]


def test_the_ablations_keep_cameras_fixed_and_drop_the_other_view(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=2", "method.optimize_cameras=false", "method.multi_view=false")
    make_streams(cfg, samples=8)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert not any("iou_other_views" in k for r in rows for k in r)
    assert torch.allclose(_cameras(tmp_path, cfg).azimuth, _labelled_azimuths(assets).float())


def test_cameras_learn_at_their_own_rate():
    cameras = ViewCameras(torch.tensor([0.0, math.pi / 2]), distance=2.7, lr_scale=30.0)
    assert torch.allclose(cameras.azimuth, torch.tensor([0.0, math.pi / 2]))
    assert torch.allclose(cameras.elevation, torch.zeros(2)) and torch.allclose(
        cameras.log_distance.exp(), torch.full((2,), 2.7)
    )
    optimizer = torch.optim.Adam(cameras.parameters(), lr=1e-4)
    cameras.elevation.sum().backward()
    optimizer.step()  # Adam's first update moves each stored value by the learning rate
    assert torch.allclose(cameras.elevation, torch.full((2,), -30 * 1e-4), atol=1e-7)


def test_a_common_turn_or_scale_of_the_cameras_is_pinned():
    start = torch.tensor([0.0, math.pi / 2, math.pi])
    cameras = ViewCameras(start, distance=2.7, lr_scale=30.0)
    optimizer = torch.optim.Adam(cameras.parameters(), lr=1e-4)
    (cameras.azimuth.sum() + cameras.log_distance.sum()).backward()  # turn and push every camera alike
    optimizer.step()
    assert torch.allclose(cameras.azimuth, start) and torch.allclose(cameras.log_distance.exp(), torch.full((3,), 2.7))
    optimizer.zero_grad()
    weights = torch.tensor([1.0, 2.0, 6.0])
    ((cameras.azimuth * weights).sum() + (cameras.log_distance * weights).sum()).backward()
    assert cameras.stored.grad.abs().sum() > 0
    optimizer.step()  # the cameras move apart, their mean change stays zero
    cameras.requires_grad_(False)
    assert not torch.allclose(cameras.azimuth, start)
    assert float((cameras.azimuth - start).mean()) == pytest.approx(0, abs=1e-7)
    assert float(cameras.log_distance.mean()) == pytest.approx(math.log(2.7), abs=1e-7)


def test_a_single_camera_keeps_its_azimuth_and_distance():
    camera = ViewCameras(torch.tensor([1.0]), distance=2.7, lr_scale=30.0)
    optimizer = torch.optim.Adam(camera.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (camera.azimuth + camera.log_distance + camera.elevation).sum().backward()
        optimizer.step()
    assert torch.equal(camera.azimuth, torch.tensor([1.0]))
    assert torch.allclose(camera.log_distance, torch.tensor([math.log(2.7)]))
    assert float(camera.elevation.detach()) < 0  # free: a common tilt is seen


def test_per_code_viewpoints_gather_each_codes_samples_wherever_groups_drew_it():
    deg = torch.deg2rad
    azimuth = deg(torch.tensor([350.0, 90.0, 10.0, 90.0, 200.0]))
    elevation = deg(torch.tensor([10.0, 0.0, 20.0, 5.0, 1.0]))
    code = torch.tensor([0, 2, 0, 2, 3])
    seen_azimuth, seen_elevation, drawn = per_code_viewpoints(azimuth, elevation, code, 4)
    assert drawn.tolist() == [True, False, True, True]
    assert angle_error_deg(seen_azimuth[drawn], deg(torch.tensor([0.0, 90.0, 200.0]))).max() < 1e-4
    assert torch.allclose(torch.rad2deg(seen_elevation[drawn]), torch.tensor([15.0, 2.5, 1.0]), atol=1e-4)
    assert seen_azimuth[1].isnan() and seen_elevation[1].isnan()  # code 1: no sample


def test_the_gan_camera_error_is_each_drawn_codes_offset_from_the_oracle(tmp_path, assets, monkeypatch):
    """The oracle is made to see each code at its label plus a known offset: a camera still at its
    label is off by exactly that, and the codes the one held-out group did not draw are left out."""
    cfg = _config(tmp_path, assets, "method.evaluation.gan_groups=1")
    method = GANverse3D(cfg.method_config, torch.device("cpu"))
    model = method.build()["model"].module
    offsets = torch.tensor([5.0, -10.0, 20.0, 30.0, -40.0, 50.0])
    truth = torch.deg2rad(method.bins.float() * 30 + offsets)
    b = StyleGAN2Source(replace(method.source, batch_size=method.source.views)).generate(HELD_OUT_GAN_SEED, 0)
    monkeypatch.setattr(method.oracle, "viewpoint", lambda rgb: (truth[b["view"]], torch.full((len(rgb),), 0.1)))
    scores = method._gan_scores(model, b, method.oracle.mask(b["rgb"]))
    codes = b["view"].tolist()
    assert len(set(codes)) == 2 and scores["camera_codes_scored"] == 2
    expected = [abs(float(o)) if i in codes else None for i, o in enumerate(offsets)]
    assert scores["camera_error_per_code_deg"] == expected
    assert scores["camera_error_deg"] == pytest.approx(sum(e for e in expected if e is not None) / 2, abs=1e-3)
    assert scores["camera_elevation_error_deg"] == pytest.approx(math.degrees(0.1), abs=1e-4)


def _squares(*sides: int, twice: tuple[int, ...] = ()) -> torch.Tensor:
    """16² masks, one a side: a square of that side, and a second one apart for the indices in ``twice``."""
    masks = torch.zeros(len(sides), 16, 16, dtype=torch.bool)
    for i, side in enumerate(sides):
        masks[i, 1 : 1 + side, 1 : 1 + side] = True
        if i in twice:
            masks[i, 9 : 9 + side, 9 : 9 + side] = True
    return masks


def test_the_mask_filter_drops_whole_groups_from_the_loss(tmp_path, assets, monkeypatch):
    """min_area 0.1 of 16² is 25.6 pixels: a 6² square passes, a 5² one (25) does not, nor two 6²
    squares (not one instance). A group with one such view is counted out and adds nothing to the
    loss, which is then group 0's alone; only the shape terms, zeroed here, see every group."""
    shape_terms = ["method.lam_lap=0", "method.lam_flat=0", "method.lam_mov=0"]
    cfg = _config(tmp_path, assets, "method.min_area=0.1", *shape_terms)
    method = GANverse3D(cfg.method_config, torch.device("cpu"))
    model = method.build()["model"].module
    warmup = method.phases()[0]
    rgb = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def step(images, masks):
        images = images.clone().requires_grad_(True)
        monkeypatch.setattr(method.oracle, "mask", lambda _: masks)
        n = len(images)
        views = {"rgb": images, "group": torch.arange(n) // 2, "view": torch.arange(n) % 6}
        out = method.step(warmup, {"views": views}, {"model": model}, gain=1)
        out["loss"].backward()
        return out, images.grad.abs().flatten(1).sum(1)

    out, grad = step(rgb, _squares(6, 6, 6, 5, 6, 6, twice=(4,)))
    assert float(out["usable"]) == pytest.approx(1 / 3)
    assert (grad[:2] > 0).all() and (grad[2:] == 0).all()
    alone, _ = step(rgb[:2], _squares(6, 6))
    assert float(alone["usable"]) == 1
    assert torch.allclose(out["loss"], alone["loss"], rtol=1e-5)
    out, grad = step(rgb, _squares(6, 6, 6, 6, 6, 7))  # every group passes: every view trains
    assert float(out["usable"]) == 1 and (grad > 0).all()


def test_only_gan_groups_of_whole_objects_are_scored_and_the_constant_row_samples_apart(tmp_path, assets, monkeypatch):
    """Held-out GAN groups pass the training's mask filter before they are scored (group 1's second
    view is two squares: not one object); the mean-shape row samples its own surface points, so
    turning it off leaves the network's shape scores as they were."""
    method = GANverse3D(_config(tmp_path, assets, "method.min_area=0.1").method_config, torch.device("cpu"))
    model = method.build()["model"].module.eval()
    monkeypatch.setattr(method.oracle, "mask", lambda rgb: _squares(6, 6, 6, 6, 6, 6, twice=(3,))[: len(rgb)])
    report = method.evaluate({"model": model}, tmp_path / "eval")
    assert report["gan_groups_scored"] == 2 and 0 <= report["gan_view_iou"] <= 1
    kept = method._oracle_camera_scores  # the scored groups are the kept ones, in order
    seen = []
    monkeypatch.setattr(
        method, "_oracle_camera_scores", lambda m, b, mask, V: seen.append(mask.sum((1, 2))) or kept(m, b, mask, V)
    )
    monkeypatch.setattr(method.oracle, "mask", lambda rgb: _squares(6, 5, 6, 6, 6, 6, twice=(3,))[: len(rgb)])
    broken = method.evaluate({"model": model}, tmp_path / "eval-broken")
    assert broken["gan_groups_scored"] == 1 and seen[-1].tolist() == [36, 36]  # group 2 alone
    monkeypatch.setattr(method.oracle, "mask", lambda rgb: torch.zeros(len(rgb), 16, 16, dtype=torch.bool))
    none = method.evaluate({"model": model}, tmp_path / "eval-none")
    assert none["gan_groups_scored"] == 0 and math.isnan(none["gan_view_iou"]) and math.isnan(none["camera_error_deg"])
    assert "mean_shape/chamfer" in report
    method.config.evaluation.mean_shape_objects = 0
    alone = method.evaluate({"model": model}, tmp_path / "eval-alone")
    assert "mean_shape/chamfer" not in alone
    for key in ("chamfer", "fscore@0.02", "input_view_iou", "novel_view_iou"):
        assert alone[key] == report[key], key


def test_pool_codes_without_a_label_are_refused(tmp_path, assets):
    labels = json.loads(Path(assets["labels"]).read_text())
    partial = tmp_path / "labels.json"
    partial.write_text(json.dumps(dict(list(labels.items())[1:])))
    cfg = _config(tmp_path, assets, f"method.view_labels={partial}")
    with pytest.raises(ConfigError, match=f"method.view_labels.*{list(labels)[0]}"):
        GANverse3D(cfg.method_config, torch.device("cpu"))
    pool = list(labels)[1:3]  # a named pool needs labels for its own codes only
    names = f"method.data.views.view_names=[{','.join(pool)}]"
    named = _config(tmp_path, assets, f"method.view_labels={partial}", names)
    assert GANverse3D(named.method_config, torch.device("cpu")).view_names == pool


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
        f"run_dir={tmp_path / 'run'}", "samples_per_shard=4", "device=cpu", "method.evaluation.gan_groups=2",
        # Scored on the GAN's held-out groups too, at the oracle's viewpoints (the GAN rows' cameras).
        "+method.gan_test.name=stylegan2", f"+method.gan_test.checkpoint={assets['checkpoint']}",
        "+method.gan_test.views=2", f"+method.gan_test.view_codes={assets['codes']}"], TrainConfig)  # fmt: skip
    # Single views are a closed set read for many epochs: shuffled; groups keep the source's order.
    assert GANverse3D(cfg.method_config, torch.device("cpu")).shuffle("views") == (views == 1)
    make_streams(cfg, samples=8)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert ("loss/main/iou_other_views" in rows[-1]) == (views > 1)
    report = evaluate(cfg)
    assert report["test_objects"] == 2 and "camera_error_deg" not in report  # no learned cameras to score
    for score in ("gan_oracle_camera_input_view_iou", "gan_oracle_camera_other_views_iou"):
        assert 0 <= report[score] <= 1, score


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
