"""method=gan2shape: the schedule of rounds, projection that starts at the GAN's own image, a
short run through every phase with resume, and the evaluation's rows; bad configs are refused."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets.reader import ShardStream
from renderloop.models.decomposition import ellipsoid_depth
from renderloop.trainers.gan2shape import GAN2Shape
from renderloop.trainers.methods import method_config

from .helpers import evaluate, gan_method_assets, make_streams


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return gan_method_assets(tmp_path_factory.mktemp("gan2shape"))


def _config(tmp_path, assets, *overrides: str, method: str = "gan2shape_debug") -> TrainConfig:
    gan = [f"method.data.images.checkpoint={assets['checkpoint']}"] if method == "gan2shape_debug" else []
    return load_config(
        "train",
        [f"method={method}", "engine=debug", *gan, f"method.oracle_run={assets['oracle']}",
         f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "samples_per_shard=8", "device=cpu",
         "engine.checkpoint_every=4", *overrides],
        TrainConfig,
    )  # fmt: skip


def test_rounds_become_phases_in_order(tmp_path, assets):
    cfg = _config(tmp_path, assets).method_config
    method = GAN2Shape(cfg, torch.device("cpu"))
    spans = [(p.name, p.model, p.start, p.stop) for p in method.phases()]
    assert spans == [("init", "net", 0, 2), ("albedo", "net", 2, 3), ("offset", "E", 3, 5), ("shape", "net", 5, 7),
                     ("albedo", "net", 7, 8), ("offset", "E", 8, 9), ("shape", "net", 9, None)]  # fmt: skip
    assert cfg.schedule_steps == 10
    unsup3d = GAN2Shape(_config(tmp_path, assets, "method.mode=unsup3d").method_config, torch.device("cpu"))
    assert [(p.name, p.start, p.stop) for p in unsup3d.phases()] == [("shape", 0, None)]


def test_projection_starts_at_the_gan_image(tmp_path, assets):
    """E starts at zero offset, so G(w + E(x)) is the streamed image: the latents reproduce it."""
    cfg = _config(tmp_path, assets)
    make_streams(cfg, samples=8)

    method = GAN2Shape(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module for name, spec in method.build().items()}
    samples = list(ShardStream(cfg.storage.root, cfg.stream("images"), follow=False, fields=["rgb.png", "latent.npy"]))
    image = torch.stack([s["rgb.png"] for s in samples])
    w = torch.stack([torch.as_tensor(s["latent.npy"]) for s in samples])
    projected, offset = method._project(nets["E"], nets["G"], torch.rand_like(image), w)
    assert offset.abs().max() < 1e-6  # zero up to the rounding of G's mapping layers
    assert (projected.clamp(0, 1) - image).abs().max() <= 1 / 255 + 1e-6  # PNG quantization only


def test_a_short_run_trains_every_phase_resumes_and_scores_the_rows(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=4")
    make_streams(cfg, samples=32)
    train(cfg, [], command="train")
    train(_config(tmp_path, assets, "engine.max_steps=10"), [], command="train")  # resumes at step 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10))
    phase_of = {r["step"]: {k.split("/")[1] for k in r if k.startswith("loss/")} for r in rows}
    assert phase_of[0] == {"init"} and phase_of[2] == {"albedo"} and phase_of[3] == {"offset"}
    assert phase_of[5] == {"shape"} and phase_of[9] == {"shape"}
    shape = [r for r in rows if "loss/shape/projected" in r]
    assert len(shape) == 3 and all(r["loss/shape/projected"] > 0 for r in shape)
    assert all(r["loss/shape/projected_vs_image"] > 0 and r["loss/shape/view_deg"] >= 0 for r in shape)
    offsets = [r["loss/offset/offset_sq"] for r in rows if "loss/offset/offset_sq" in r]
    assert offsets[0] < 1e-12 and offsets[-1] > 1e-9  # E starts at w (up to rounding) and learns to move
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))

    report = evaluate(cfg)
    assert report["test_images"] == 8 and report["scored_images"] >= 1
    for row in ("gan2shape", "ellipsoid", "average", "flat"):
        assert report[f"{row}/side"] >= 0 and 0 <= report[f"{row}/mad"] <= 180, row
    # Batches of 4: the init phase (2 steps), the object masks of the offset and shape steps (3 each),
    # then the ellipsoid row of the evaluation (8 renders).
    assert report["oracle_segment_calls"] == (2 + 3 + 3) * 4 + 8
    assert report["inverted_images"] == 2 and report["inversion_psnr"] > 0  # held-out renders through W
    assert (tmp_path / "run" / "eval" / "gan2shape_eval.png").exists()
    saved = json.loads((tmp_path / "run" / "eval" / "gan2shape_eval.json").read_text())
    assert {k: v for k, v in saved.items() if k != "per_image"} == report
    scored = saved["per_image"]  # each scored render's index and every row's scores on it
    assert len(scored["index"]) == report["scored_images"] and scored["index"] == sorted(set(scored["index"]))
    for row in ("gan2shape", "ellipsoid", "average", "flat"):
        assert sum(scored[f"{row}/mad"]) / len(scored["index"]) == pytest.approx(report[f"{row}/mad"])


def test_bad_gan2shape_configs_are_refused(tmp_path, assets):
    def refused(match: str, *overrides: str) -> None:
        with pytest.raises(ConfigError, match=match):
            method_config(_config(tmp_path, assets, *overrides).method)

    refused("method.data.images", "method.data.images.noise_mode=random")
    refused("method.data.images", "method.data.images.resolution=32")
    refused("method.data.images", "method.mode=supervised")  # learns from renders, not the GAN
    refused("method.prior_depth", "method.prior_depth=[1.3,1.5]")
    refused("method.mode", "method.mode=both")
    refused("method.prior", "method.prior=sphere")
    refused("method.projected_view", "method.projected_view=canonical")
    with pytest.raises(ConfigError, match="engine.precision"):
        _config(tmp_path, assets, "engine.precision=bf16")
    refused("method.first_round", "method.first_round=[1,0,1]")
    refused("method.instances.count", "method.instances.count=2", "method.mode=unsup3d")  # per image is GAN2Shape's
    refused("method.instances", "method.instances.count=-1")
    with pytest.raises(ConfigError, match="engine.grad_clip"):  # a norm over every image's gradient ties them
        _config(tmp_path, assets, "method.instances.count=2", "engine.grad_clip=1.0")


def test_the_init_phase_fits_the_chosen_prior(tmp_path, assets):
    image = torch.rand(2, 3, 16, 16)
    batch = {"images": {"rgb": image, "latent": torch.zeros(2, 8, 16)}}
    for prior in ("ellipsoid", "flat"):
        method = GAN2Shape(_config(tmp_path, assets, f"method.prior={prior}").method_config, torch.device("cpu"))
        nets = {name: spec.module for name, spec in method.build().items()}
        init = next(p for p in method.phases() if p.name == "init")
        depth = nets["net"].depth(image)
        if prior == "flat":  # the level a constant raw map reaches: (min_depth + max_depth) / 2
            expected = torch.full_like(depth, 1.05)
        else:
            expected = ellipsoid_depth(method.oracle.mask(image), 0.85, 1.15)
        loss = method.step(init, batch, nets, 1)["loss"]
        assert loss.item() == pytest.approx((depth - expected).square().mean().item(), rel=1e-5), prior


def test_the_supervised_ceiling_learns_true_depth_from_renders_of_the_gan_objects(tmp_path, assets):
    args = ["method.data.images.resolution=16", "method.data.images.batch_size=4",
            "method.data.images.subdivisions=2", "method.width=8", "method.zdim=16", "method.evaluation.samples=8",
            "method.evaluation.batch_size=4", "method.evaluation.average_samples=8", "method.lr=1e-3"]  # fmt: skip
    cfg = _config(tmp_path, assets, *args, "engine.max_steps=30", method="gan2shape_supervised")
    assert cfg.method_config.mode == "supervised" and GAN2Shape(cfg.method_config, torch.device("cpu")).resolution == 16
    make_streams(cfg, samples=32)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {k.split("/")[1] for r in rows for k in r if k.startswith("loss/")} == {"depth"}
    first, last = rows[0]["loss/depth/side"], sum(r["loss/depth/side"] for r in rows[-5:]) / 5
    assert last < first  # the scale-invariant log-depth error falls on its training renders
    report = evaluate(cfg)
    assert report["supervised/side"] >= 0 and "gan2shape/side" not in report and report["flat/side"] > 0
    with pytest.raises(ConfigError, match="share objects"):
        _config(tmp_path, assets, *args, "method.data.images.object_seeds=test", method="gan2shape_supervised")


def test_pseudo_lights_perturb_the_images_own_light():
    from types import SimpleNamespace

    method = SimpleNamespace(config=SimpleNamespace(pseudo_pitch_deg=15.0, pseudo_yaw_deg=45.0))
    ambient, diffuse = torch.full((2000,), 0.5), torch.full((2000,), 0.4)
    (angles, shift), (a, d, direction) = GAN2Shape._random_views(method, (ambient, diffuse, None))
    r = d - diffuse  # more diffuse light comes with less ambient (the paper's car setting)
    assert r.min() >= -0.1 and r.max() <= 0.6 and r.max() > 0.5 and torch.allclose(a, ambient - 0.6 * r)
    assert angles[:, 0].abs().max() <= math.radians(15) and angles[:, 1].abs().max() <= math.radians(45)
    assert (angles[:, 2] == 0).all() and (shift == 0).all()
    assert torch.allclose(direction.norm(dim=1), torch.ones(2000)) and (direction[:, 2] < 0).all()


def test_curvature_is_free_on_planes_and_costs_on_bends():
    from renderloop.trainers.gan2shape import _curvature

    v, u = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    assert _curvature((0.3 * u - 0.2 * v + 1)[None]).item() == pytest.approx(0.0, abs=1e-6)
    # u² bends only along x: d²/dx² = 2 everywhere, the other three differences vanish.
    assert _curvature((u**2)[None]).item() == pytest.approx(2.0)


@pytest.mark.parametrize("use_mask", [True, False])
def test_pseudo_samples_count_the_object_only_with_use_mask(tmp_path, assets, use_mask):
    cfg = _config(tmp_path, assets, f"method.use_mask={use_mask}").method_config
    method = GAN2Shape(cfg, torch.device("cpu"))
    net = method.build()["net"].module
    image = torch.rand(3, 3, 16, 16)
    calls = method.oracle.calls["segment"]
    pseudo, counted, _ = method._pseudo(net, image)
    assert counted.shape == pseudo.mask.shape and ((counted >= 0) & (counted <= pseudo.mask + 1e-6)).all()
    if use_mask:  # the oracle was asked once per image, and some drawn pixels are not the object's
        assert method.oracle.calls["segment"] == calls + 3 and (counted < pseudo.mask - 0.5).any()
    else:
        assert method.oracle.calls["segment"] == calls and torch.equal(counted, pseudo.mask)


def test_a_reconstruction_counts_only_the_weighted_pixels():
    from types import SimpleNamespace

    method = SimpleNamespace(config=SimpleNamespace(lam_perc=1.0), _perceptual=lambda a, b: (a - b).abs().mean(),
                             _groups=1)  # fmt: skip
    target = torch.rand(2, 3, 8, 8)
    weight = torch.zeros(2, 1, 8, 8)
    weight[..., :4] = 1.0
    image = target.clone()
    image[..., 4:] += 5.0  # wrong only where nothing is counted (the background of a drawn render)
    assert GAN2Shape._reconstruction(method, image, target, weight).item() == pytest.approx(0.0, abs=1e-6)
    image[..., :4] += 0.5  # wrong by 0.5 where counted: L1 1.0 in [-1, 1] units, half the composite off by 0.5
    assert GAN2Shape._reconstruction(method, image, target, weight).item() == pytest.approx(1.0 + 0.25, abs=1e-5)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_init_and_albedo_move_only_their_network_and_step_3_samples_from_the_round_start(tmp_path, assets):
    """The other networks take no gradient in init and step 1 (so weight decay leaves them), and
    step 3's pseudo samples come from the decomposition as the shape phase found it, also after a
    resume."""
    from renderloop.trainers.engine import Trainer
    from renderloop.trainers.reporting import StepTimes

    cfg = _config(tmp_path, assets, "method.weight_decay=0.5")
    make_streams(cfg, samples=32)
    trainer = Trainer(cfg.method_name, cfg.method_config, cfg.engine, root=cfg.storage.root,
                      stream_prefix=cfg.storage.stream, run_dir=cfg.run_dir, device="cpu")  # fmt: skip
    trainer._open_data()
    net = trainer.modules["net"]
    parts = ("depth_net", "albedo_net", "view_net", "light_net")

    def run(steps: range) -> dict[str, bool]:
        before = {name: _snapshot(getattr(net, name)) for name in parts}
        for trainer.step in steps:
            trainer.train_step(StepTimes())
        return {name: not _same(before[name], getattr(net, name)) for name in parts}

    assert run(range(0, 2)) == {"depth_net": True, "albedo_net": False, "view_net": False, "light_net": False}
    assert run(range(2, 3)) == {"depth_net": False, "albedo_net": True, "view_net": False, "light_net": False}
    run(range(3, 5))  # step 2 trains E alone
    at_round_start = _snapshot(net)
    assert all(run(range(5, 7)).values())  # step 3 trains them all
    method = trainer.method
    assert _same(at_round_start, method._round_net) and not _same(at_round_start, net)

    resumed = GAN2Shape(cfg.method_config, torch.device("cpu"))
    resumed.load_state_dict(method.state_dict())
    shape = next(p for p in method.phases() if p.name == "shape")
    assert _same(at_round_start, resumed._frozen_round_net(shape, net))
    later = [p for p in method.phases() if p.name == "shape"][1]  # a new round takes a new copy
    assert _same(_snapshot(net), resumed._frozen_round_net(later, net))


def test_the_evaluation_scores_every_snapshot_along_the_schedule(tmp_path, assets):
    cfg = _config(tmp_path, assets, "engine.max_steps=6", "engine.snapshot_every=2")
    make_streams(cfg, samples=24)
    train(cfg, [], command="train")
    snapshots = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in (snapshots / "step00000002").glob("*.pt")) == ["E.pt", "method_state.pt", "net.pt"]
    (snapshots / "step00000003").mkdir()  # an export cut short: no weights, skipped
    report = evaluate(cfg)
    trajectory = json.loads((tmp_path / "run" / "eval" / "gan2shape_eval.json").read_text())["trajectory"]
    # Snapshots after steps 2, 4 and 6: the init (steps 0-1), offset (3-4) and shape (5-6) phases had just run.
    assert [(p["step"], p["phase"]) for p in trajectory] == [(2, "init"), (4, "offset"), (6, "shape")]
    assert trajectory[-1]["side"] == pytest.approx(report["gan2shape/side"])  # the last snapshot is the final net
    assert trajectory[-1]["mad"] == pytest.approx(report["gan2shape/mad"])
    assert trajectory[0]["side"] != pytest.approx(trajectory[-1]["side"])
    assert "trajectory" not in report  # the JSON keeps it; the returned scores are numbers


@pytest.mark.parametrize("projected_view", ["predicted", "pseudo"])
def test_step_3_draws_the_projected_samples_from_the_chosen_view(tmp_path, assets, projected_view):
    """``predicted`` asks the view network for each projected sample's view; ``pseudo`` reuses
    the view its pseudo sample was drawn at, so the network sees only the images."""
    cfg = _config(tmp_path, assets, f"method.projected_view={projected_view}")
    make_streams(cfg, samples=8)
    method = GAN2Shape(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module for name, spec in method.build().items()}
    samples = list(ShardStream(cfg.storage.root, cfg.stream("images"), follow=False, fields=["rgb.png", "latent.npy"]))
    image = torch.stack([s["rgb.png"] for s in samples[:4]]).float()
    w = torch.stack([torch.as_tensor(s["latent.npy"]) for s in samples[:4]])
    round_net = copy.deepcopy(nets["net"]).requires_grad_(False)
    seen: list[torch.Tensor] = []
    nets["net"].view_net.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    drawn, rendered_views = [], []
    pseudo, render = method._pseudo, method._render

    def recorded_pseudo(*args):
        out = pseudo(*args)
        drawn.append(out[2])
        return out

    def recorded_render(image, depth, albedo, light, view):
        rendered_views.append(view)
        return render(image, depth, albedo, light, view)

    method._pseudo, method._render = recorded_pseudo, recorded_render
    losses = method._shape(image, w, nets, round_net)
    assert torch.isfinite(losses["loss"]) and losses["projected"] > 0
    assert torch.equal(seen[0], image)  # the image's own view, in both
    assert len(seen) == 2  # the image's, and the samples' (with pseudo views only for the logged view error)
    assert losses["projected_view_error_deg"] >= 0
    last = rendered_views[-1]  # the projected samples' render
    uses_pseudo = all(torch.equal(a, b) for a, b in zip(last, drawn[0], strict=True))
    assert uses_pseudo == (projected_view == "pseudo")


def test_without_projected_samples_step_3_fits_the_image_alone(tmp_path, assets):
    """The control of ``lam_projected=0``: the same loss as Unsup3d's step, no GAN sample drawn."""
    cfg = _config(tmp_path, assets, "method.lam_projected=0")
    method = GAN2Shape(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module for name, spec in method.build().items()}
    method._pseudo = method._project = None  # must not be called
    image = torch.rand(2, 3, 16, 16)
    losses = method._shape(image, torch.zeros(2, 8, 16), nets, copy.deepcopy(nets["net"]))
    assert "projected" not in losses
    smooth = cfg.method_config.lam_smooth * losses["smoothness"]
    assert losses["loss"].item() == pytest.approx((losses["reconstruction"] + smooth).item(), rel=1e-6)
    offset = next(phase for phase in method.phases() if phase.name == "offset")
    step_2 = method._losses(offset, image, torch.zeros(2, 8, 16), nets)  # nothing reads its offsets: no sample
    assert set(step_2) == {"loss"} and step_2["loss"].item() == 0 and step_2["loss"].requires_grad
    per_image = GAN2Shape(_config(tmp_path, assets, *PER_IMAGE, "method.lam_projected=0").method_config, "cpu")
    assert [per_image.held_samples(p) for p in per_image.phases()[:4]] == [2, 2, 0, 2]  # renders fitted a step


PER_IMAGE = ("method.instances.count=2", "method.instances.first=1", "method.instances.samples=2",
             "method.instances.invert_steps=3")  # fmt: skip


def test_per_image_mode_trains_a_copy_per_held_out_render_resumes_and_scores_them(tmp_path, assets):
    """No stream: two test renders, inverted into W, each train their own copy of every network."""
    cfg = _config(tmp_path, assets, *PER_IMAGE, "engine.max_steps=4")
    assert cfg.streams() == {}
    train(cfg, [], command="train")
    train(_config(tmp_path, assets, *PER_IMAGE, "engine.max_steps=10"), [], command="train")  # resumes at step 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10))
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))
    assert all(r["loss/shape/projected"] > 0 for r in rows if "loss/shape/projected" in r)
    fitted = {"init": 2, "albedo": 2, "offset": 4, "shape": 6}  # 2 renders, each with 2 projected samples
    for r in rows:
        (phase,) = {key.split("/")[1] for key in r if key.startswith("loss/")}
        assert r["samples_per_s"] == pytest.approx(fitted[phase] * r["steps_per_s"], rel=1e-6)
    weights = torch.load(tmp_path / "run" / "models" / "net.pt", weights_only=True)
    depth_head = weights["depth_net.module.decode.7.weight"]
    assert depth_head.shape[0] == 2 and not torch.equal(depth_head[0], depth_head[1])  # the copies parted

    report = evaluate(_config(tmp_path, assets, *PER_IMAGE, "engine.max_steps=10"))
    assert report["test_images"] == 2 and report["inversion_psnr"] > 0 and "inverted_images" not in report
    saved = json.loads((tmp_path / "run" / "eval" / "gan2shape_eval.json").read_text())
    scored = saved["per_image"]
    assert set(scored["index"]) <= {1, 2} and len(scored["gan2shape/side"]) == len(scored["index"])
    assert report["gan2shape/side"] == pytest.approx(sum(scored["gan2shape/side"]) / report["scored_images"])


def test_per_image_step_3_draws_from_a_pool_collected_once_per_round(tmp_path, assets):
    """``instances.collect`` projections per image are collected at a round's first step 3 step
    (the official code's collection after step 2), every step draws each image's samples from its
    own pool, a resumed round collects the same pool, and the next round a new one; ``collect=0``
    projects afresh at every step."""
    calls: dict[int, list[int]] = {}
    for collect in (6, 0):
        cfg = _config(tmp_path, assets, *PER_IMAGE, f"method.instances.collect={collect}")
        method = GAN2Shape(cfg.method_config, torch.device("cpu"))
        nets = {name: spec.module for name, spec in method.build().items()}
        G = nets["G"]
        w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))).detach()
        image = ((G.synthesis(w, noise_mode="const") + 1) / 2).clamp(0, 1)
        method._instances = {"rgb": image, "latent": w, "psnr": torch.zeros(2)}
        project, calls[collect] = method._project, []
        method._project = lambda E, G, pseudo, w, seen=calls[collect], project=project: (
            seen.append(len(pseudo)) or project(E, G, pseudo, w)
        )
        first, second = [p for p in method.phases() if p.name == "shape"][:2]
        for _ in range(3):
            assert torch.isfinite(method.step(first, {}, nets, 1)["loss"])
        if not collect:
            continue
        pool = method._pool[1]
        assert pool["projected"].shape[:2] == (2, 6) and pool["angles"].shape[:2] == (2, 6)
        _, _, (angles, _) = method._projections(image, w, nets, method._round_net)
        for row, view in enumerate(angles):  # rows 0-1 are image 0's samples, 2-3 image 1's
            assert any(torch.equal(view, kept) for kept in pool["angles"][row // 2])
        resumed = GAN2Shape(cfg.method_config, torch.device("cpu"))
        resumed.load_state_dict(method.state_dict())
        resumed._project = method._project
        resumed.step(first, {}, nets, 1)
        assert all(torch.equal(resumed._pool[1][k], pool[k]) for k in pool)
        method.step(second, {}, nets, 1)  # (E starts at zero offsets: the projections differ only by their views)
        assert not torch.equal(method._pool[1]["angles"], pool["angles"])
    assert (
        calls[6] == [4] * 3 + [4] * 3 + [4] * 3
    )  # three batches of 2 samples x 2 images per pool: first, resumed, next round
    assert calls[0] == [4] * 3  # one projection per step


@pytest.mark.parametrize("phase_name", ["init", "albedo", "offset", "shape"])
def test_per_image_copies_learn_from_their_own_image_alone(tmp_path, assets, phase_name):
    """Changing the second image leaves the first copy's gradient as it was, in every phase."""
    cfg = _config(tmp_path, assets, *PER_IMAGE)
    method = GAN2Shape(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module for name, spec in method.build().items()}
    phase = next(p for p in method.phases() if p.name == phase_name)
    model = nets[phase.model]
    G = nets["G"]
    w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)))
    image = ((G.synthesis(w, noise_mode="const") + 1) / 2).clamp(0, 1).detach()

    def first_copy_gradient(images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        method._instances = {"rgb": images, "latent": w.detach(), "psnr": torch.zeros(2)}
        method._round_start = None  # step 3 begins anew: its pool is collected from these images
        model.zero_grad()
        torch.manual_seed(1)
        loss = method.step(phase, {}, nets, 1)["loss"]
        loss.backward()
        return [p.grad[0].clone() for p in model.parameters() if p.grad is not None and p.dim() > 1], loss.detach()

    before, _ = first_copy_gradient(image)
    other = image.clone()
    other[1] = image[1].flip(-1)
    after, _ = first_copy_gradient(other)
    assert before and any(g.abs().sum() > 0 for g in before)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("phase_name", ["init", "albedo"])
def test_the_per_image_loss_is_the_sum_of_each_images_loss_alone(tmp_path, assets, phase_name):
    """Two copies on two images lose what one network, started alike, loses on each image alone."""
    G = None
    losses = {}
    for count in (1, 2):
        cfg = _config(tmp_path, assets, *PER_IMAGE, f"method.instances.count={count}")
        method = GAN2Shape(cfg.method_config, torch.device("cpu"))
        torch.manual_seed(0)
        nets = {name: spec.module for name, spec in method.build().items()}
        G = nets["G"]
        w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))).detach()
        image = ((G.synthesis(w, noise_mode="const") + 1) / 2).clamp(0, 1)
        phase = next(p for p in method.phases() if p.name == phase_name)
        parts = [slice(0, 2)] if count == 2 else [slice(0, 1), slice(1, 2)]
        total = 0.0
        for part in parts:
            method._instances = {"rgb": image[part], "latent": w[part], "psnr": torch.zeros(2)}
            total += method.step(phase, {}, nets, 1)["loss"].item()
        losses[count] = total
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True], ids=["joint", "per-image"])
def test_tensorboard_grids_show_the_figure_columns(tmp_path, assets, per_image):
    cfg = _config(tmp_path, assets, *(PER_IMAGE if per_image else ()))
    method = GAN2Shape(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module for name, spec in method.build().items()}
    G = nets["G"]
    w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))).detach()
    image = ((G.synthesis(w, noise_mode="const") + 1) / 2).clamp(0, 1)
    batch = {"images": {"rgb": image, "latent": w}}
    if per_image:
        assert method.images({}, nets) == {}  # before the held-out renders are inverted
        method._instances, batch = {"rgb": image, "latent": w, "psnr": torch.zeros(2)}, {}
    grids = method.images(batch, nets)
    assert list(grids) == ["input", "depth", "normals", "reconstruction", "turned_left", "turned_right", "lit_left",
                           "lit_right", "pseudo", "projected"]  # fmt: skip
    for name, grid in grids.items():
        assert grid.shape == image.shape and bool(torch.isfinite(grid).all()), name
    assert torch.equal(grids["input"], image)
    assert float(grids["normals"].min()) >= 0 and float(grids["normals"].max()) <= 1
    if not per_image:  # a stream without latents shows no projections
        assert "projected" not in method.images({"images": {"rgb": image}}, nets)
