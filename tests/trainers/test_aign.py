"""AIGN: metrics against hand-computed values, the pose lifter's geometry, and every task training
a few steps through the engine (losses fall; reconstruction-only and full losses are wired; the
evaluation reports what the test recomputes, trivial baselines included, and held-out pose frames
are not training frames)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.producer import Producer, producer_seed
from renderloop.datasets.sources import build_source, source_config
from renderloop.datasets.storage import Storage
from renderloop.renderers.degradations import random_box_masks
from renderloop.renderers.warping import pose_to_rt, warp
from renderloop.seeding import derive_seed
from renderloop.trainers.aign import AIGN
from renderloop.trainers.aign import images as images_module
from renderloop.trainers.aign.images import ImageDiscriminator, ImageTask, Restorer, cached_classifier, psnr
from renderloop.trainers.aign.pose import (
    face_forward,
    mpjpe,
    nearest_pose_distance,
    overlapping_frames,
    procrustes_align,
    procrustes_mean,
    rotation_6d,
)
from renderloop.trainers.aign.sfm import (
    PoseNet,
    correlation,
    depth_errors,
    median_scale,
    photometric_error,
    pose_errors,
    relative_motion,
)

from ..debian_data import debian_file
from .helpers import evaluate


@pytest.fixture
def mocap_dir(monkeypatch) -> Path:
    folder = debian_file("/usr/share/assimp/models/BVH/01_01.bvh").parent
    monkeypatch.setenv("RENDERLOOP_MOCAP_DIR", str(folder))
    return folder


@pytest.fixture
def fashion_dir(monkeypatch) -> Path:
    folder = debian_file("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").parent
    monkeypatch.setenv("RENDERLOOP_FASHION_MNIST_DIR", str(folder))
    return folder


def _config(tmp_path: Path, task: str, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        [f"method=aign/{task}_debug", "engine=debug", f"storage.root={tmp_path / 'data'}",
         f"run_dir={tmp_path / 'run'}", "samples_per_shard=32", "device=cpu", *overrides],
        TrainConfig,
    )  # fmt: skip


def _make_streams(cfg: TrainConfig, samples: int = 128) -> None:
    storage = Storage(cfg.storage.root)
    for role, node in cfg.streams().items():
        name, scfg = source_config(node)
        ledger = Ledger(storage, cfg.stream(role))
        seed = derive_seed(cfg.engine.seed, role)  # as `renderloop run` seeds them: unpaired
        Producer(build_source(name, scfg), ledger, "p0", samples_per_shard=cfg.samples_per_shard, seed=seed).run(
            samples
        )
        ledger.close()


def _losses(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


# --- metrics -----------------------------------------------------------------------------------


def test_mpjpe_and_procrustes_against_hand_computed_values():
    truth = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0]]])
    shifted = truth + torch.tensor([0.0, 0, 3])
    assert mpjpe(shifted, truth).item() == pytest.approx(3.0)
    pred = truth.clone()
    pred[0, 1] = torch.tensor([1.0, 0, 4])  # one joint 4 off
    assert mpjpe(pred, truth).item() == pytest.approx(4 / 3)
    # A rotated, scaled and moved copy aligns back exactly.
    angle = 0.7
    rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    moved = 2.5 * truth @ rot.T + torch.tensor([1.0, -2, 0.5])
    assert mpjpe(procrustes_align(moved, truth), truth).item() == pytest.approx(0, abs=1e-5)
    # A mirror image is not a rotation: Procrustes does not undo it.
    chiral = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]])  # no mirror symmetry
    mirrored = chiral * torch.tensor([-1.0, 1, 1])
    assert mpjpe(procrustes_align(mirrored, chiral), chiral).item() > 0.2


def test_psnr_against_hand_computed_values():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # mse 0.01 → 20 dB
    b[1, :, :2] = 1.0  # mse 0.5 → 3.0103 dB
    assert psnr(b, a).tolist() == pytest.approx([20.0, 10 * math.log10(2)], abs=1e-4)


def test_depth_and_pose_errors_against_hand_computed_values():
    truth = torch.tensor([[[2.0, 4.0], [0.0, 1.0]]])
    pred = torch.tensor([[[1.0, 2.0], [5.0, 0.5]]])  # half the depth everywhere it counts
    errors = depth_errors(pred, truth)
    assert errors["abs_rel"] == pytest.approx(0.5) and errors["abs_rel_scaled"] == pytest.approx(0, abs=1e-6)
    assert errors["scale_ratio"] == pytest.approx(2.0)
    rot = rotation_6d(torch.tensor([[1.0, 0, 0, 0, math.cos(0.3), math.sin(0.3)]]))  # 0.3 rad about x
    eye = torch.eye(3).unsqueeze(0)
    out = pose_errors(rot, torch.tensor([[0.0, 0, 1]]), eye, torch.tensor([[0.0, 1, 1]]))
    assert out["rotation_deg"] == pytest.approx(math.degrees(0.3), abs=1e-3)
    assert out["translation_m"] == pytest.approx(1.0) and out["translation_direction_deg"] == pytest.approx(45.0)


def _similarity(poses: torch.Tensor, angle: float = 0.7, scale: float = 2.5) -> torch.Tensor:
    """``poses`` turned by ``angle`` about a tilted axis, scaled and moved: PA-MPJPE undoes all three."""
    axis = F.normalize(torch.tensor([1.0, 2.0, -0.5]), dim=0)
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross  # Rodrigues
    return scale * poses @ rot.T + torch.tensor([1.0, -2, 0.5])


def test_procrustes_leaves_a_known_residual():
    # A square in z = 0 against the same square with its corners lifted to z = ±1 (z = x·y): no
    # rotation fits better, the best scale is 8 / 12, and every joint is then sqrt(2/3) off.
    square = torch.tensor([[[1.0, 1, 0], [1, -1, 0], [-1, -1, 0], [-1, 1, 0]]])
    saddle = square.clone()
    saddle[..., 2] = saddle[..., 0] * saddle[..., 1]
    expected = math.sqrt(2 / 3)
    assert mpjpe(procrustes_align(saddle, square), square).item() == pytest.approx(expected, abs=1e-5)
    moved = _similarity(saddle)  # a similarity of the prediction changes nothing
    assert mpjpe(procrustes_align(moved, square), square).item() == pytest.approx(expected, abs=1e-5)
    # The nearest-pose distance is this metric with the reference as the prediction: a moved copy
    # of the query counts 0; the flat square aligned onto the saddle keeps its size, 1 off per joint.
    queries = torch.cat([square, saddle])
    assert nearest_pose_distance(queries, _similarity(square)).tolist() == pytest.approx([0, 1], abs=1e-5)
    assert nearest_pose_distance(queries, torch.cat([saddle, square]), pairs=1).tolist() == pytest.approx(
        [0, 0], abs=1e-5
    )


def test_the_procrustes_mean_of_similar_poses_is_their_shape():
    torch.manual_seed(0)
    pose = torch.randn(1, 6, 3)
    copies = torch.cat([_similarity(pose, angle=a, scale=s) for a, s in ((0.0, 1.0), (0.4, 0.5), (2.0, 3.0))])
    mean = procrustes_mean(copies)
    assert mpjpe(procrustes_align(mean.unsqueeze(0), pose), pose).item() == pytest.approx(0, abs=1e-4)
    centred = copies - copies.mean(1, keepdim=True)
    assert mean.norm() == pytest.approx(centred.pow(2).sum((1, 2)).mean().sqrt().item(), rel=1e-5)


def test_scale_invariant_depth_errors_vanish_for_a_scaled_truth():
    torch.manual_seed(0)
    truth = 1 + 4 * torch.rand(3, 8, 8)
    truth[:, 0] = 0  # no ground truth in the first row: not counted
    errors = depth_errors(0.25 * truth, truth)
    assert errors["abs_rel"] == pytest.approx(0.75)
    assert errors["side"] == pytest.approx(0, abs=1e-6) and errors["abs_rel_scaled"] == pytest.approx(0, abs=1e-6)
    assert errors["scale_ratio"] == pytest.approx(4.0) and "abs_rel_backdrop" not in errors  # no mask, no backdrop
    # SIDE is the variance of the log ratio: half the pixels 2× too far, half right → (ln 2 / 2)².
    pred = truth.clone()
    pred[..., :4] *= 2
    assert depth_errors(pred, truth)["side"] == pytest.approx((math.log(2) / 2) ** 2, rel=1e-5)


def test_object_mask_median_scaling_where_the_whole_image_median_jumps_modes():
    # Two images of an object at 2 m before a backdrop at 6 m. G is right on the object up to a
    # factor 2 (1 m) and puts the backdrop at 2 m (a third of its depth); the first image is mostly
    # backdrop, the second mostly object.
    truth, mask = torch.full((2, 4, 4), 6.0), torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :1] = True  # 4 object pixels of 16
    mask[1, :3] = True  # 12 of 16
    truth[mask] = 2.0
    pred = torch.where(mask, truth / 2, truth / 3)
    # The whole-image median takes the backdrop's scale (3) in the first image: the object 50% off.
    assert median_scale(pred, truth, truth > 0).tolist() == pytest.approx([3.0, 2.0])
    scaled = pred * median_scale(pred, truth, truth > 0).view(-1, 1, 1)
    assert ((scaled[mask] - 2).abs() / 2).mean().item() == pytest.approx((4 * 0.5 + 12 * 0) / 16)
    masked = depth_errors(pred, truth, mask)
    assert median_scale(pred, truth, mask).tolist() == pytest.approx([2.0, 2.0])
    assert masked["abs_rel_object"] == pytest.approx(0, abs=1e-6) and masked["scale_ratio"] == pytest.approx(2.0)
    assert masked["abs_rel_backdrop"] == pytest.approx(1 / 3)  # 2/3 of 6 m, off by 2 m
    # An image without object pixels falls back to all of its pixels with ground truth.
    assert median_scale(pred, truth, torch.zeros_like(mask)).tolist() == pytest.approx([3.0, 2.0])


def test_translation_direction_error_against_known_vectors():
    eye = torch.eye(3).expand(5, 3, 3)
    true = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 1, 0]])
    pred = torch.tensor([[0.0, 0, 5], [0, 0, -1], [0, 1, 0], [1, 0, 0], [1, 0, 0]])  # 0°, 180°, 90°, 0°, 45°
    for i, angle in enumerate([0, 180, 90, 0, 45]):
        out = pose_errors(eye[i : i + 1], pred[i : i + 1], eye[i : i + 1], true[i : i + 1])
        assert out["translation_direction_deg"] == pytest.approx(angle, abs=1e-3), i
    assert pose_errors(eye, pred, eye, true)["translation_direction_deg"] == pytest.approx(315 / 5, abs=1e-3)
    still = pose_errors(eye, torch.zeros(5, 3), eye, true)  # no translation: no direction
    assert still["translation_direction_deg"] == pytest.approx(90.0) and still["rotation_deg"] == 0


def test_psnr_of_known_noise_and_over_a_box():
    torch.manual_seed(0)
    target = torch.full((2, 3, 256, 256), 0.5)
    signs = torch.randint(0, 2, target.shape).float() * 2 - 1
    assert psnr(target + 0.1 * signs, target).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # mse a²
    uniform = target + 0.1 * (2 * torch.rand(target.shape) - 1)  # mse a² / 3
    assert psnr(uniform, target).tolist() == pytest.approx([10 * math.log10(3 / 0.01)] * 2, abs=0.02)
    # Inside a box of a quarter of the image 0.1 off, outside exact: 20 dB in the box, 6 dB more
    # over the whole image; errors outside the box do not count in it.
    box = torch.zeros(2, 1, 256, 256)
    box[..., :128, :128] = 1
    pred = target + 0.1 * box
    assert psnr(pred, target, box).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert psnr(pred, target).tolist() == pytest.approx([20 + 10 * math.log10(4)] * 2, abs=1e-4)
    assert psnr(pred + 0.3 * (1 - box), target, box).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert psnr(pred, target, box.bool()).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_relative_motion_maps_camera_one_points_to_camera_two():
    torch.manual_seed(1)
    R = torch.linalg.qr(torch.randn(2, 3, 3)).Q
    R = R * torch.linalg.det(R).sign().view(-1, 1, 1)
    t = torch.randn(2, 3)
    world = torch.randn(5, 3)
    cam1, cam2 = world @ R[0].T + t[0], world @ R[1].T + t[1]
    R_rel, t_rel = relative_motion(R, t)
    assert torch.allclose(cam1 @ R_rel[0].T + t_rel[0], cam2, atol=1e-5)


def test_rotation_6d_is_a_rotation_and_face_forward_turns_hips_to_x():
    rot = rotation_6d(torch.randn(8, 6))
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(8, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(8), atol=1e-5)
    poses = torch.randn(4, 5, 3)
    turned = face_forward(poses, left_hip=1, right_hip=2)
    hip = turned[:, 1] - turned[:, 2]
    assert torch.allclose(hip[:, 2], torch.zeros(4), atol=1e-5) and (hip[:, 0] > 0).all()
    assert torch.allclose(turned[..., 1], poses[..., 1])  # a turn about +y keeps heights


def test_image_networks_shapes():
    x = torch.rand(2, 4, 32, 32)
    assert Restorer(4, channels=8, blocks=1)(x).shape == (2, 3, 32, 32)
    assert ImageDiscriminator([8, 16])(x[:, :3]).shape == (2,)


def test_the_inpainting_generator_learns_from_the_reconstruction_alone(tmp_path):
    # An identity start would reproduce the kept pixels exactly: a zero loss with zero gradient.
    cfg = _config(tmp_path, "inpaint", "method.loss=reconstruction")
    task = ImageTask(cfg.method_config, torch.device("cpu"))
    torch.manual_seed(0)
    batch = {"rgb": torch.rand(8, 3, 32, 32)}
    identity = Restorer(4, channels=8, blocks=1, residual=True)
    _, loss, _ = task.lift(identity, batch)
    loss.backward()
    assert loss.item() == 0 and all(not p.grad.any() for p in identity.parameters() if p.grad is not None)
    G = task.build()[0]
    assert not G.residual
    before = [p.detach().clone() for p in G.parameters()]
    optimizer = torch.optim.Adam(G.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        _, loss, _ = task.lift(G, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.05 and losses[-1] < 0.5 * losses[0], losses
    assert all(not torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))


# --- training through the engine ---------------------------------------------------------------


def _train_and_check(cfg: TrainConfig, tmp_path: Path, key: str = "loss/G_main/reconstruction") -> list[float]:
    _make_streams(cfg)
    summary = train(cfg, [], command="train")
    assert summary["step"] == cfg.engine.max_steps - 1
    return _losses(tmp_path / "run", key)


# `renderloop eval` scores the EMA copy; with the default half-life (100 steps) it has barely left
# the initial weights after a test's few dozen steps.
FAST_EMA = "engine.ema_half_life=2"


def _networks(cfg: TrainConfig, run_dir: Path | None = None) -> tuple[AIGN, dict[str, torch.nn.Module]]:
    """The method and its networks as built (untrained), or with the weights ``run_dir`` exported."""
    method = AIGN(cfg.method_config, torch.device("cpu"))
    nets = {name: spec.module.eval() for name, spec in method.build().items()}
    if run_dir is not None:
        for name, net in nets.items():
            net.load_state_dict(torch.load(run_dir / "models" / f"{name}.pt", weights_only=True))
    return method, nets


def _generator(cfg: TrainConfig, run_dir: Path | None = None) -> torch.nn.Module:
    return _networks(cfg, run_dir)[1]["G"]


def _restorations(cfg: TrainConfig, G: torch.nn.Module, with_trivial: bool = False) -> tuple[torch.Tensor, ...]:
    """``(truth, G's input, output)`` of the images an image task's evaluation scores, made here from
    their definitions: the evaluation source at the evaluation seed; super-resolution: bilinear
    upsampling of the image average-pooled by the factor, G's output clamped to [0, 1]; inpainting:
    one box per image (drawn from a generator seeded with the evaluation seed) filled with grey,
    and G's output (clamped) inside the box only. ``with_trivial`` adds the trivial restoration
    (bicubic upsampling; the box filled with the mean of as many memory images at the evaluation
    seed) and the box (inpainting; else None)."""
    mcfg, ecfg = cfg.method_config, cfg.method_config.evaluation
    name, scfg = source_config(ecfg.data or mcfg.data["input"])
    source, generator = build_source(name, scfg), torch.Generator().manual_seed(ecfg.seed)
    if mcfg.task == "inpaint":
        mname, mscfg = source_config(mcfg.data["memory"])
        memory = build_source(mname, mscfg)
        batches = math.ceil(ecfg.samples / mscfg.batch_size)
        mean = torch.cat([memory.generate(ecfg.seed, i)["rgb"] for i in range(batches)])[: ecfg.samples].mean(0)
    images = []
    with torch.no_grad():
        for i in range(math.ceil(ecfg.samples / scfg.batch_size)):
            truth = source.generate(ecfg.seed, i)["rgb"].float()
            size = tuple(truth.shape[-2:])
            if mcfg.task == "superres":
                low = F.avg_pool2d(truth, mcfg.image.factor)
                seen = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
                output = G(seen).clamp(0, 1)
                trivial = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
                box = torch.zeros(0)
            else:
                mask = random_box_masks(len(truth), size, tuple(mcfg.image.box_fraction), generator=generator)
                seen = truth * mask + 0.5 * (1 - mask)
                output = truth * mask + G(torch.cat([seen, mask], 1)).clamp(0, 1) * (1 - mask)
                trivial, box = truth * mask + mean * (1 - mask), 1 - mask
            images.append((truth, seen, output, trivial, box))
    out = tuple(torch.cat(x)[: ecfg.samples] for x in zip(*images, strict=True))
    if not with_trivial:
        return out[:3]
    return (*out[:4], out[4] if mcfg.task == "inpaint" else None)


def test_superres_trains_and_its_reconstruction_falls(tmp_path, fashion_dir):
    cfg = _config(tmp_path, "superres", "engine.max_steps=30", "engine.checkpoint_every=30",
                  "method.lr_generator=2e-3", FAST_EMA)  # fmt: skip
    losses = _train_and_check(cfg, tmp_path)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    results = evaluate(cfg)
    truth, bilinear, output, bicubic, _ = _restorations(cfg, _generator(cfg, tmp_path / "run"), with_trivial=True)
    baseline = psnr(bilinear, truth).mean().item()
    assert results["baseline_psnr_db"] == pytest.approx(baseline, abs=1e-4)
    assert results["baseline_bicubic_psnr_db"] == pytest.approx(psnr(bicubic, truth).mean().item(), abs=1e-4)
    assert results["psnr_db"] == pytest.approx(psnr(output, truth).mean().item(), abs=1e-4)
    assert results["psnr_db"] > baseline + 0.2, (results, baseline)  # about +0.37 dB after 30 steps
    assert "attribute_share_outputs" not in results  # unbiased memory
    assert (tmp_path / "run" / "eval" / "superres.png").exists()
    # The restorer starts as the identity on its input: untrained, it scores the baseline exactly.
    method, untrained = _networks(cfg)
    assert method.evaluate(untrained, tmp_path / "untrained")["psnr_db"] == pytest.approx(baseline, abs=1e-4)


class _BrightnessClassifier(torch.nn.Module):
    """Stands in for the Fashion-MNIST classifier (``test_the_attribute_classifier_is_trained_once_then_loaded``
    covers that one): class 7 (one of the memory's) for images brighter than ``level`` on average, else 6."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.where(images.mean((1, 2, 3)) > self.level, 7, 6), 10).float()


class _White(torch.nn.Module):
    """A generator that paints everything white."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x[:, :3])


def test_inpaint_with_a_biased_memory_reports_the_attribute_share(tmp_path, fashion_dir, monkeypatch):
    cfg = _config(tmp_path, "inpaint", "engine.max_steps=20", "engine.checkpoint_every=20",
                  "method.lr_generator=2e-3", "method.data.memory.classes=[5,7,9]")  # fmt: skip
    losses = _train_and_check(cfg, tmp_path)
    assert losses[0] > 0.05  # G paints the whole image, starting around grey: the kept pixels are off
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    assert _losses(tmp_path / "run", "loss/G_main/adversarial") and _losses(tmp_path / "run", "loss/D_main/loss")
    truth, grey, output, mean_fill, box = _restorations(cfg, _generator(cfg, tmp_path / "run"), with_trivial=True)
    brightness = truth.mean((1, 2, 3)).sort().values
    classifier = _BrightnessClassifier((brightness[15] + brightness[16]).item() / 2)  # 16 of 32 above
    monkeypatch.setattr(images_module, "cached_classifier", lambda *args: classifier)
    share = lambda images: (classifier(images).argmax(-1) == 7).float().mean().item()  # noqa: E731
    results = evaluate(cfg)
    assert results["attribute_share_truth"] == 0.5
    assert results["attribute_share_outputs"] == pytest.approx(share(output))
    assert results["attribute_share_baseline"] == pytest.approx(share(grey))
    assert results["attribute_share_baseline_mean"] == pytest.approx(share(mean_fill))
    # The main number is the box's PSNR; the whole image's counts the copied pixels too.
    for key, images in (("", output), ("baseline_", grey), ("baseline_mean_", mean_fill)):
        assert results[f"{key}psnr_box_db"] == pytest.approx(psnr(images, truth, box).mean().item(), abs=1e-4)
        assert results[f"{key}psnr_db"] == pytest.approx(psnr(images, truth).mean().item(), abs=1e-4)
        assert results[f"{key}psnr_box_db"] < results[f"{key}psnr_db"]
    assert (tmp_path / "run" / "eval" / "inpaint.png").exists()
    # 20 steps barely change what G paints in the box; a generator that paints it white tells the
    # outputs from the grey-filled inputs and from the truth.
    _, _, white = _restorations(cfg, _White())
    assert share(white) not in (share(grey), 0.5)
    results = AIGN(cfg.method_config, torch.device("cpu")).evaluate({"G": _White()}, tmp_path / "white")
    assert results["attribute_share_outputs"] == pytest.approx(share(white)) and results["attribute_share_truth"] == 0.5
    assert results["psnr_db"] == pytest.approx(psnr(white, truth).mean().item(), abs=1e-4)
    # Painting the box with the memory's mean image is a trivial baseline that grey or white do not beat.
    assert results["baseline_mean_psnr_box_db"] > max(results["psnr_box_db"], results["baseline_psnr_box_db"])


def test_reconstruction_only_inpainting_trains_and_is_scored_over_the_box(tmp_path, fashion_dir):
    cfg = _config(tmp_path, "inpaint", "engine.max_steps=20", "engine.checkpoint_every=20",
                  "method.lr_generator=2e-3", "method.loss=reconstruction", FAST_EMA)  # fmt: skip
    losses = _train_and_check(cfg, tmp_path)
    assert losses[0] > 0.05 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    results = evaluate(cfg)
    truth, grey, output, mean_fill, box = _restorations(cfg, _generator(cfg, tmp_path / "run"), with_trivial=True)
    # Nothing tells G what belongs in the box: it is scored there as it paints it, beside grey and mean fills.
    assert results["psnr_box_db"] == pytest.approx(psnr(output, truth, box).mean().item(), abs=1e-4)
    assert results["baseline_psnr_box_db"] == pytest.approx(psnr(grey, truth, box).mean().item(), abs=1e-4)
    assert results["baseline_mean_psnr_box_db"] == pytest.approx(psnr(mean_fill, truth, box).mean().item(), abs=1e-4)


def test_the_attribute_classifier_is_trained_once_then_loaded(tmp_path, fashion_dir, monkeypatch):
    _, scfg = source_config({"name": "fashion_mnist", "root": str(fashion_dir), "batch_size": 16})
    cache, cpu, x = tmp_path / "cache", torch.device("cpu"), torch.rand(4, 3, 32, 32)
    first = cached_classifier(scfg, 3, 0, cpu, str(cache))
    cached_classifier(scfg, 4, 0, cpu, str(cache))  # other steps: another model
    assert len(list(cache.glob("*.pt"))) == 2 and not list(cache.glob("*.tmp"))
    train = images_module.train_classifier
    monkeypatch.setattr(images_module, "train_classifier", lambda *args: pytest.fail("trained again"))
    again = cached_classifier(scfg, 3, 0, cpu, str(cache))
    assert not again.training and torch.equal(first(x), again(x))

    monkeypatch.setattr(images_module, "train_classifier", train)
    for path in cache.glob("*.pt"):
        path.write_bytes(b"not a model")  # unreadable: trained again and rewritten
    assert cached_classifier(scfg, 3, 0, cpu, str(cache))(x).shape == (4, 10)
    assert sum(1 for path in cache.glob("*.pt") if path.read_bytes() != b"not a model") == 1
    (tmp_path / "blocker").write_text("")  # a cache folder that cannot be made costs a training only
    assert cached_classifier(scfg, 3, 0, cpu, str(tmp_path / "blocker" / "cache"))(x).shape == (4, 10)


@pytest.mark.parametrize("task", ["superres", "inpaint"])
def test_image_tasks_train_and_evaluate_on_simulator_renders(tmp_path, task):
    small = "{resolution: 16, batch_size: 8, style: real_like}"
    cfg = load_config(
        "train",
        [f"method=aign/{task}_simulator", "engine=debug", f"storage.root={tmp_path / 'data'}",
         f"run_dir={tmp_path / 'run'}", "samples_per_shard=32", "device=cpu", "engine.max_steps=12",
         "engine.checkpoint_every=12", "method.lr_generator=2e-3", f"method.data.input={small}",
         f"method.data.memory={small}", f"method.evaluation.data={small}", "method.evaluation.samples=16",
         "method.evaluation.figure_rows=2", "method.image.channels=8", "method.image.blocks=1",
         "method.image.disc_channels=[8,16]", FAST_EMA],
        TrainConfig,
    )  # fmt: skip
    losses = _train_and_check(cfg, tmp_path)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    results = evaluate(cfg)  # no classes on simulator renders: PSNR only
    assert "attribute_share_outputs" not in results
    truth, baseline_input, output = _restorations(cfg, _generator(cfg, tmp_path / "run"))
    baseline = psnr(baseline_input, truth).mean().item()
    assert results["baseline_psnr_db"] == pytest.approx(baseline, abs=1e-4)
    assert results["psnr_db"] == pytest.approx(psnr(output, truth).mean().item(), abs=1e-4)
    if task == "superres":
        assert results["psnr_db"] > baseline + 0.05, (results, baseline)  # about +0.12 dB after 12 steps
    else:  # the box's content comes from the adversarial term alone: scored over the box, beside trivial fills
        assert {"psnr_box_db", "baseline_psnr_box_db", "baseline_mean_psnr_box_db"} <= set(results)
    assert (tmp_path / "run" / "eval" / f"{task}.png").exists()


def test_reconstruction_only_has_no_discriminator_phase(tmp_path, fashion_dir):
    cfg = _config(tmp_path, "superres", "method.loss=reconstruction")
    _make_streams(cfg, 64)
    train(cfg, [], command="train")
    assert not _losses(tmp_path / "run", "loss/D_main/loss") and not _losses(
        tmp_path / "run", "loss/G_main/adversarial"
    )
    assert _losses(tmp_path / "run", "loss/G_main/reconstruction")


def test_pose_trains_and_evaluates(tmp_path, mocap_dir):
    cfg = _config(tmp_path, "pose", "engine.max_steps=40", "engine.checkpoint_every=40",
                  "method.lr_generator=1e-3", "engine.data.batch_size=16", FAST_EMA)  # fmt: skip
    losses = _train_and_check(cfg, tmp_path)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    results = evaluate(cfg)
    for split in ("", "performer/"):  # the input sequence's last frames; another performer's file
        assert results[f"{split}pa_mpjpe_mm"] <= results[f"{split}mpjpe_mm"]  # the alignment only lowers it
        assert results[f"{split}train_overlap_frames"] == 0 and results[f"{split}samples"] == 64
        assert (
            0 < results[f"{split}nearest_train_pa_mpjpe_median_mm"] < results[f"{split}baseline_mean_pose_pa_mpjpe_mm"]
        )
    # The other performer's poses are further from every training pose than the held-out frames.
    assert results["performer/nearest_train_pa_mpjpe_mm"] > 2 * results["nearest_train_pa_mpjpe_mm"]
    # The untrained lifter answers the mean pose, facing the camera, at the depth its 2D size
    # implies (about 690 mm off); 40 steps of reprojection place and turn it (about 280 mm).
    method, untrained = _networks(cfg)
    mean_pose = method.evaluate(untrained, tmp_path / "untrained")
    assert results["mpjpe_mm"] < 0.6 * mean_pose["mpjpe_mm"], (results, mean_pose)
    assert (tmp_path / "run" / "eval" / "pose.png").exists() and (
        tmp_path / "run" / "eval" / "pose-performer.png"
    ).exists()
    # The constant baselines, from their definitions: the mean of the memory's root-relative poses
    # in its cameras' frames (MPJPE), and their Procrustes mean (PA-MPJPE), on the evaluated poses.
    mcfg, ecfg = cfg.method_config, cfg.method_config.evaluation
    name, mscfg = source_config(mcfg.data["memory"])
    memory = build_source(name, mscfg)
    draws = [memory.generate(0, i) for i in range(math.ceil(mcfg.pose.basis_samples / mscfg.batch_size))]
    camera = torch.cat([b["kp3d"] - b["kp3d"][:, :1] for b in draws])[: mcfg.pose.basis_samples]
    body = procrustes_mean(torch.cat([b["pose"] for b in draws])[: mcfg.pose.basis_samples])
    name, scfg = source_config(ecfg.data)
    test = build_source(name, scfg)
    truth = torch.cat([b["kp3d"] - b["kp3d"][:, :1] for b in (test.generate(ecfg.seed, i) for i in range(2))])
    assert results["baseline_mean_pose_mpjpe_mm"] == pytest.approx(
        1000 * mpjpe(camera.mean(0).expand_as(truth), truth).mean().item(), rel=1e-4
    )
    aligned = procrustes_align(body.expand_as(truth), truth)
    assert results["baseline_mean_pose_pa_mpjpe_mm"] == pytest.approx(
        1000 * mpjpe(aligned, truth).mean().item(), rel=1e-3
    )


def test_held_out_pose_frames_are_not_training_frames(tmp_path, mocap_dir):
    cfg = _config(tmp_path, "pose")
    mcfg = cfg.method_config
    training = [build_source(*source_config(mcfg.data[role])) for role in ("input", "memory")]
    task = AIGN(mcfg, torch.device("cpu")).task
    for split, node in task.test_splits().items():
        test = build_source(*source_config(node))
        assert overlapping_frames(test, *training) == set(), split
    # The check sees shared frames: a test split reaching back into the input's last tenth, every frame.
    overlap = build_source(*source_config({**mcfg.evaluation.data, "frame_range": [0.7, 1.0], "stride": 1}))
    first = int(overlap.frame_of.min())
    inputs = str(Path(training[0].config.files[0]).resolve())
    expected = {(inputs, f) for f in training[0].frame_of.tolist() if f >= first}
    assert overlapping_frames(overlap, *training) == expected and len(expected) > 10


def test_adversarial_only_pose_has_no_reconstruction_in_its_loss(tmp_path, mocap_dir):
    cfg = _config(tmp_path, "pose", "method.loss=adversarial", "engine.data.batch_size=16")
    _make_streams(cfg, 64)
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    for row in rows:  # the generator's loss is β × adversarial alone
        assert row["loss/G_main/loss"] == pytest.approx(0.01 * row["loss/G_main/adversarial"], rel=1e-4)


def test_sfm_fits_its_frame_pairs_and_evaluates(tmp_path):
    # Without the backdrop and trimming: with them the error stays flat for the first few hundred
    # steps, until the predicted motion leaves the identity (BENCHMARKS.md measures that setting).
    cfg = _config(tmp_path, "sfm", "engine.max_steps=150", "engine.checkpoint_every=150",
                  "method.lr_generator=5e-4", "samples_per_shard=8", "method.sfm.trim=0.0",
                  "method.data.input.backdrop_radius=0.0", "method.data.memory.backdrop_radius=0.0")  # fmt: skip
    _make_streams(cfg, samples=8)  # four pairs, repeated: the photometric error on them must fall
    train(cfg, [], command="train")
    method = AIGN(cfg.method_config, torch.device("cpu"))
    untrained, trained = _generator(cfg), _generator(cfg, tmp_path / "run")
    name, scfg = source_config(cfg.method_config.data["input"])
    source, seed = build_source(name, scfg), producer_seed(derive_seed(cfg.engine.seed, "input"), "p0")
    with torch.no_grad():
        batches = [source.generate(seed, i) for i in range(2)]  # what the stream holds
        error = {
            label: sum(method.task.lift(G, b)[1].item() for b in batches)
            for label, G in (("untrained", untrained), ("trained", trained))
        }
    assert error["trained"] < 0.9 * error["untrained"], error  # over the pixels that change: no easy wins
    angle, distance = _evaluation_motion(cfg)
    results = evaluate(cfg)
    assert results["samples"] == 8 and results["true_translation_m"] == pytest.approx(distance, rel=1e-4)
    assert (tmp_path / "run" / "eval" / "sfm.png").exists()
    # Standing still, computed on the same pairs: errors the size of the true motion.
    assert results["baseline_still_rotation_deg"] == pytest.approx(angle, abs=1e-2) and angle > 1
    assert results["baseline_still_translation_m"] == pytest.approx(distance, rel=1e-4)
    assert results["baseline_still_translation_direction_deg"] == pytest.approx(90.0)  # no direction
    # The untrained pose network answers no motion: it scores that baseline exactly.
    still = method.evaluate(_networks(cfg)[1], tmp_path / "untrained")
    for key in ("rotation_deg", "translation_m", "translation_direction_deg"):
        assert still[key] == pytest.approx(still[f"baseline_still_{key}"], abs=1e-4), key
    # The mean-depth baseline: the memory's mean depth map (per pixel, over the maps with a surface
    # there), scored like G's depth: scaled on the object's pixels, object and backdrop apart.
    ecfg = cfg.method_config.evaluation
    name, mscfg = source_config(cfg.method_config.data["memory"])
    memory = build_source(name, mscfg)
    maps = torch.cat(
        [memory.generate(ecfg.seed, i)["depth"] for i in range(math.ceil(ecfg.samples / mscfg.batch_size))]
    )
    maps = maps[: ecfg.samples]
    surface = (maps > 0).sum(0)
    mean = torch.where(surface > 0, maps.sum(0) / surface.clamp_min(1), maps.sum() / (maps > 0).sum())
    name, scfg = source_config(cfg.method_config.data["input"])
    test = build_source(name, scfg)
    batches = [test.generate(ecfg.seed, i) for i in range(math.ceil(2 * ecfg.samples / scfg.batch_size))]
    truth, mask = (torch.cat([b[key][0::2] for b in batches])[: ecfg.samples] for key in ("depth", "mask"))
    expected = depth_errors(mean.expand_as(truth), truth, mask)
    assert "baseline_mean_depth_abs_rel_backdrop" not in results  # no backdrop in this run
    for key, value in expected.items():
        assert results[f"baseline_mean_depth_{key}"] == pytest.approx(value, rel=1e-4), key
    assert results["abs_rel_object"] == pytest.approx(results["abs_rel_scaled"])  # the object is all there is


def _evaluation_motion(cfg: TrainConfig) -> tuple[float, float]:
    """Mean rotation (degrees) and translation (metres) between the frames of the SfM evaluation's
    pairs, from their cameras: the angle of R₂R₁ᵀ and the distance between the centres c = −Rᵀt."""
    ecfg = cfg.method_config.evaluation
    name, scfg = source_config(ecfg.data or cfg.method_config.data["input"])
    source, count = build_source(name, scfg), 2 * ecfg.samples
    batches = [source.generate(ecfg.seed, i) for i in range(math.ceil(count / scfg.batch_size))]
    R, t = (torch.cat([b[key] for b in batches])[:count] for key in ("R", "t"))
    centres = -(R.transpose(1, 2) @ t.unsqueeze(-1))[..., 0]
    cos = ((R[1::2] @ R[0::2].transpose(1, 2)).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    angle = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).mean().item()
    return angle, (centres[1::2] - centres[0::2]).norm(dim=-1).mean().item()


def test_bad_aign_configs_are_refused(tmp_path, fashion_dir):
    with pytest.raises(ConfigError, match="method.task"):
        _config(tmp_path, "superres", "method.task=denoise")
    with pytest.raises(ConfigError, match="method.loss"):
        _config(tmp_path, "superres", "method.loss=none")
    with pytest.raises(ConfigError, match="method.sfm.search_radius"):
        _config(tmp_path, "sfm", "method.sfm.search_radius=0")
    with pytest.raises(ConfigError, match="method.sfm.trim"):
        _config(tmp_path, "sfm", "method.sfm.trim=1.0")
    with pytest.raises(ConfigError, match="method.evaluation.splits"):  # held-out splits: pose only
        _config(tmp_path, "superres", "+method.evaluation.splits={other: {split: train}}")
    with pytest.raises(ConfigError, match="method.evaluation.splits"):
        _config(tmp_path, "pose", "+method.evaluation.splits={a/b: {stride: 2}}")
    with pytest.raises(ConfigError, match="method.data.input"):  # sfm needs frame pairs
        _config(tmp_path, "sfm", "method.data.input.view_step_deg=0.0", "method.data.input.view_step_distance=0.0")


def _sfm_pairs(pairs: int, *overrides: str):
    """Frame pairs of the SfM task's source, their true motion, frame-1 depth and intrinsics."""
    overrides = ("method=aign/sfm", f"method.data.input.batch_size={2 * pairs}", *overrides)
    cfg = load_config("train", list(overrides), TrainConfig)
    task = AIGN(cfg.method_config, torch.device("cpu")).task
    name, scfg = source_config(cfg.method_config.data["input"])
    batch = build_source(name, scfg).generate(5, 0)
    frame1, frame2 = task.pairs(batch)
    R, t = relative_motion(batch["R"], batch["t"])
    return batch, frame1, frame2, R, t, batch["depth"][0::2], task.intrinsics(len(frame1), "cpu")


def test_photometric_error_against_hand_values():
    frame1 = torch.zeros(1, 3, 2, 3)
    frame2 = torch.tensor([0.0, 0.5, 0.2, 0.3, 0.3, 0.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)  # 4 pixels change
    warped = torch.tensor([0.0, 0.02, 0.3, 0.9, 0.1, 0.7]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    valid = torch.ones(1, 1, 2, 3)
    assert photometric_error(frame1, frame2, warped, valid).item() == pytest.approx((0.02 + 0.3 + 0.9 + 0.1) / 4)
    # Trimming a quarter leaves out the largest of the four errors.
    assert photometric_error(frame1, frame2, warped, valid, trim=0.25).item() == pytest.approx((0.02 + 0.3 + 0.1) / 3)


def test_correlation_against_hand_values():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 5, 6)
    b = torch.zeros_like(a)
    b[:, :, 1:, :4] = a[:, :, :-1, 2:]  # b(y + 1, x - 2) = a(y, x)
    volume = correlation(a, b, radius=2)
    assert volume.shape == (2, 25, 5, 6)
    shifted = volume[:, (1 + 2) * 5 + (-2 + 2)]  # displacement (dy, dx) = (1, -2)
    assert torch.allclose(shifted[:, :4, 2:], a.square().sum(1)[:, :4, 2:])
    assert torch.allclose(volume[:, 2 * 5 + 2], (a * b).sum(1))  # no displacement
    assert (volume[:, 0, 0] == 0).all()  # shifted in from outside b


def test_pose_net_starts_at_the_identity_motion_and_can_leave_it():
    frames = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    net = PoseNet(channels=8, radius=2)
    pose = net(*frames)
    assert pose.shape == (3, 6) and (pose == 0).all()
    (pose * torch.randn(3, 6)).sum().backward()
    assert net.head[-1].weight.grad.abs().sum() > 0 and net.head[-1].bias.grad.abs().sum() > 0


def _fit_motion(frame1, frame2, depth, K, trim: float = 0.0) -> torch.Tensor:
    """The motion that minimises the photometric error given ``depth``, from the identity, as G starts."""
    pose = torch.zeros(len(frame1), 6, requires_grad=True)
    optimizer = torch.optim.Adam([pose], lr=2e-3)
    for _ in range(300):
        loss = photometric_error(frame1, frame2, *warp(frame2, depth, K, *pose_to_rt(pose)), trim=trim)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return pose.detach()


def test_with_a_backdrop_the_trimmed_error_recovers_the_motion_that_occlusions_pull_off():
    _, frame1, frame2, R_true, t_true, depth, K = _sfm_pairs(8, "method.data.input.backdrop_radius=6.0")
    assert bool((depth > 0).all())  # the backdrop fills the depth
    still = pose_errors(torch.eye(3).expand_as(R_true), torch.zeros_like(t_true), R_true, t_true)
    plain = pose_errors(*pose_to_rt(_fit_motion(frame1, frame2, depth, K)), R_true, t_true)
    trimmed = pose_errors(*pose_to_rt(_fit_motion(frame1, frame2, depth, K, trim=0.2)), R_true, t_true)
    # About 1.1° and 30° untrimmed, 0.02° and 1° trimmed, against 1.8° for no motion.
    assert plain["rotation_deg"] > 0.4 * still["rotation_deg"] and plain["translation_direction_deg"] > 15
    assert trimmed["rotation_deg"] < 0.1 * still["rotation_deg"] and trimmed["translation_direction_deg"] < 5


def test_true_depth_and_motion_beat_standing_still_in_the_photometric_error():
    _, frame1, frame2, R, t, depth, K = _sfm_pairs(4, "method.data.input.backdrop_radius=0.0")
    depth = torch.where(depth > 0, depth, torch.full_like(depth, 10.0))  # background: far away
    true = photometric_error(frame1, frame2, *warp(frame2, depth, K, R, t))
    still = photometric_error(frame1, frame2, *warp(frame2, depth, K, torch.eye(3).expand_as(R), torch.zeros_like(t)))
    assert true < 0.5 * still, (true, still)


def test_the_photometric_error_recovers_the_motion_given_the_true_depth():
    batch, frame1, frame2, R_true, t_true, depth, K = _sfm_pairs(8, "method.data.input.backdrop_radius=0.0")
    centre = batch["distance"][0::2].view(-1, 1, 1).expand_as(depth)
    depth = torch.where(depth > 0, depth, centre)  # background: at the orbit's centre, where it stays put
    fitted = pose_errors(*pose_to_rt(_fit_motion(frame1, frame2, depth, K)), R_true, t_true)
    still = pose_errors(torch.eye(3).expand_as(R_true), torch.zeros_like(t_true), R_true, t_true)
    assert fitted["rotation_deg"] < 0.4 * still["rotation_deg"], (fitted, still)
    assert fitted["translation_direction_deg"] < 30, (fitted, still)
