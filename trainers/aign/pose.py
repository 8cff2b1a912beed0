"""AIGN task ``pose``: 3D human pose from 2D keypoints, against a memory of motion-capture poses.

G maps root-relative, scale-normalised 2D keypoints (camera rays ``(u − c) / f``) to PCA
coefficients of a body-frame skeleton, a rotation (6D) and a depth; P rotates, places and
projects the skeleton (``renderers.keypoints``). D judges root-relative camera-space poses: G's
rotated skeletons against memory poses seen under the same random cameras. The PCA basis is fit
to memory poses turned to face +x, and travels with G as buffers.

The evaluation scores each held-out split (``evaluation.data``, and the named
``evaluation.splits``, e.g. another performer) beside what it takes no learning to reach: a constant
mean pose of the memory, and how close the test poses already are to a training pose (so a low
error on test frames that repeat training frames is not read as generalisation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError
from renderloop.datasets.sources import build_source, source_config
from renderloop.renderers.keypoints import PCABasis, fit_pca

from .config import AIGNConfig

__all__ = [
    "PoseLifter", "PoseDiscriminator", "PoseTask", "mpjpe", "procrustes_align", "procrustes_mean",
    "nearest_pose_distance", "overlapping_frames", "rotation_6d", "face_forward",
]  # fmt: skip


def rotation_6d(x: torch.Tensor) -> torch.Tensor:
    """``[B, 6]`` → rotation matrices ``[B, 3, 3]`` (Gram–Schmidt of two vectors; columns)."""
    a = F.normalize(x[:, :3], dim=-1)
    b = F.normalize(x[:, 3:] - (a * x[:, 3:]).sum(-1, keepdim=True) * a, dim=-1)
    return torch.stack([a, b, torch.cross(a, b, dim=-1)], dim=-1)


def face_forward(poses: torch.Tensor, left_hip: int, right_hip: int) -> torch.Tensor:
    """Turn world poses ``[N, J, 3]`` (+y up) about +y so each right→left hip vector points along +x."""
    hip = poses[:, left_hip] - poses[:, right_hip]
    yaw = torch.atan2(hip[:, 2], hip[:, 0])  # angle of the hip vector from +x towards +z
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    # Rotation about +y by +yaw maps (cos, 0, sin) to (1, 0, 0) in this frame.
    rot = torch.stack([c, zero, s, zero, one, zero, -s, zero, c], -1).view(-1, 3, 3)
    return poses @ rot.transpose(1, 2)


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error of ``[N, J, 3]`` poses, per pose ``[N]`` (their units)."""
    return (pred - target).norm(dim=-1).mean(-1)


def procrustes_align(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``pred [N, J, 3]`` after the similarity transform (rotation, scale, translation) that best
    fits it to ``target`` in the least-squares sense (reflections excluded)."""
    mu_p, mu_t = pred.mean(1, keepdim=True), target.mean(1, keepdim=True)
    p, t = pred - mu_p, target - mu_t
    u, s, vh = torch.linalg.svd(p.transpose(1, 2) @ t)  # [N, 3, 3]
    d = torch.sign(torch.linalg.det(u @ vh))
    flip = torch.ones_like(s)
    flip[:, -1] = d
    rot = u @ torch.diag_embed(flip) @ vh
    scale = (s * flip).sum(-1) / p.pow(2).sum((1, 2)).clamp_min(1e-12)
    return scale.view(-1, 1, 1) * p @ rot + mu_t


def procrustes_mean(poses: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """The mean ``[J, 3]`` of poses ``[N, J, 3]`` each aligned to it by a similarity (generalised
    Procrustes): the constant prediction PA-MPJPE, which aligns every prediction the same way,
    scores best among means. Kept at the poses' RMS size (alignment would otherwise shrink it)."""
    centred = poses - poses.mean(1, keepdim=True)
    size = centred.pow(2).sum((1, 2)).mean().sqrt()
    mean = centred.mean(0)
    for _ in range(iterations):
        mean = procrustes_align(centred, mean.expand_as(centred)).mean(0)
        mean = mean - mean.mean(0)
        mean = mean * size / mean.norm().clamp_min(1e-12)
    return mean


def nearest_pose_distance(queries: torch.Tensor, references: torch.Tensor, pairs: int = 1 << 17) -> torch.Tensor:
    """PA-MPJPE ``[Q]`` (input units) from each query pose ``[Q, J, 3]`` to its nearest reference
    ``[R, J, 3]``, the reference aligned onto the query as the metric aligns a prediction: what a
    model that looked up the closest training pose would score at best. Exhaustive, in chunks of
    about ``pairs`` pose pairs."""
    R, J = references.shape[:2]
    step = max(1, pairs // max(R, 1))
    best = []
    for q in queries.split(step):
        target = q.unsqueeze(1).expand(-1, R, -1, -1).reshape(-1, J, 3)
        moved = procrustes_align(references.unsqueeze(0).expand(len(q), -1, -1, -1).reshape(-1, J, 3), target)
        best.append(mpjpe(moved, target).view(len(q), R).amin(1))
    return torch.cat(best)


def _frames(source) -> set[tuple[str, int]]:
    files = [str(Path(f).resolve()) for f in source.config.files]
    return {(files[f], n) for f, n in zip(source.file_of.tolist(), source.frame_of.tolist(), strict=True)}


def overlapping_frames(test, *training) -> set[tuple[str, int]]:
    """``(file, frame)`` of the poses in ``test``'s pool that a ``training`` pool also holds (mocap
    sources; files compared by resolved path): empty when the test frames are held out."""
    seen = set().union(*(_frames(source) for source in training))
    return _frames(test) & seen


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.net(x))


class PoseLifter(nn.Module):
    """2D rays ``[B, J, 2]`` → ``(coeffs [B, k], rotation [B, 3, 3], depth [B])``; the basis is a buffer."""

    def __init__(self, basis: PCABasis, width: int = 1024, blocks: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", basis.mean.clone())
        self.register_buffer("components", basis.components.clone())
        self.register_buffer("stddev", basis.stddev.clone())
        joints, k = basis.num_joints, basis.components.shape[0]
        self.body_radius = float(basis.mean.view(-1, 3).norm(dim=-1).pow(2).mean().sqrt())
        self.stem = nn.Linear(2 * joints + 3, width)
        self.blocks = nn.Sequential(*(_Residual(width) for _ in range(blocks)))
        self.head = nn.Linear(width, k + 6 + 1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():  # start at the mean pose, facing the camera, at the depth the 2D size implies
            self.head.bias.zero_()
            self.head.bias[k : k + 6] = torch.tensor([1.0, 0, 0, 0, 1.0, 0])

    @property
    def basis(self) -> PCABasis:
        return PCABasis(self.mean, self.components, self.stddev)

    def forward(self, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        root = rays[:, :1]  # (B, 1, 2)
        rel = rays - root
        spread = rel.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-6)  # (B,) ≈ body radius / depth
        x = torch.cat([(rel / spread.view(-1, 1, 1)).flatten(1), root.flatten(1), spread.log().unsqueeze(1)], 1)
        out = self.head(self.blocks(F.relu(self.stem(x))))
        k = self.components.shape[0]
        coeffs = out[:, :k] * self.stddev
        depth = self.body_radius / spread * torch.exp(out[:, -1])
        return coeffs, rotation_6d(out[:, k : k + 6]), depth


class PoseDiscriminator(nn.Module):
    """Root-relative poses ``[B, J, 3]`` (metres) → real-vs-generated logits ``[B]``."""

    def __init__(self, joints: int, width: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(joints * 3, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
            nn.Linear(width, width // 2), nn.LeakyReLU(0.2), nn.Linear(width // 2, 1),
        )  # fmt: skip

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        return self.net(poses.flatten(1))[:, 0]


class PoseTask:
    """Inputs: ``kp2d.npy`` of a mocap stream; memory: ``kp3d.npy`` of other sequences."""

    def __init__(self, config: AIGNConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        _, self.input_source = source_config(config.data["input"])

    def fields(self, role: str) -> list[str]:
        return ["kp2d.npy"] if role == "input" else ["kp3d.npy"]

    def shuffle(self, role: str) -> bool:
        return True

    def rays(self, kp2d: torch.Tensor, source=None) -> torch.Tensor:
        s = source or self.input_source
        return (kp2d.float() - s.resolution / 2) / s.focal

    def memory_poses(self, camera: bool = False) -> torch.Tensor:
        """``basis_samples`` body-frame memory poses ``[N, J, 3]`` (root-relative, facing +x), or with
        ``camera`` the same draws root-relative in the frames of the memory's random cameras."""
        from renderloop.datasets.mocap import COMMON_JOINTS

        name, scfg = source_config(self.config.data["memory"])
        source = build_source(name, scfg, "cpu")
        key = "kp3d" if camera else "pose"
        poses = torch.cat([
            source.generate(0, i)[key].float().cpu()
            for i in range(math.ceil(self.config.pose.basis_samples / scfg.batch_size))
        ])[: self.config.pose.basis_samples]  # fmt: skip
        if scfg.joints == "common17" and not camera:
            poses = face_forward(poses, COMMON_JOINTS.index("left_hip"), COMMON_JOINTS.index("right_hip"))
        return poses - poses[:, :1]

    def build(self) -> tuple[nn.Module, nn.Module]:
        pcfg = self.config.pose
        poses = self.memory_poses()
        if pcfg.components > poses.shape[1] * 3:
            raise ConfigError("method.pose.components", f"must be <= 3 × joints = {poses.shape[1] * 3}")
        basis = fit_pca(poses.double(), pcfg.components)
        basis = PCABasis(*(x.float() for x in (basis.mean, basis.components, basis.stddev)))
        return PoseLifter(basis, pcfg.width, pcfg.blocks), PoseDiscriminator(poses.shape[1], pcfg.width)

    def lift(self, G: Any, batch: dict) -> tuple[Any, torch.Tensor, dict]:
        rays = self.rays(batch["kp2d"])
        posed, root = _skeleton(G, rays)
        camera = posed + root.unsqueeze(1)
        projected = camera[..., :2] / camera[..., 2:].clamp_min(1e-3)
        error = (projected - rays).norm(dim=-1).mean()
        return posed, error, {"reprojection_px": error.detach() * self.input_source.focal}

    def fake(self, posed: torch.Tensor) -> torch.Tensor:
        return posed

    def real(self, batch: dict) -> torch.Tensor:
        kp3d = batch["kp3d"].float()
        return kp3d - kp3d[:, :1]

    @torch.no_grad()
    def images(self, batch: dict, G: nn.Module) -> dict[str, torch.Tensor]:
        from .figures import skeleton_images

        rays = self.rays(batch["input"]["kp2d"][:8])
        posed, _ = _skeleton(G, rays)
        return {"lifted": skeleton_images(posed)}

    def test_splits(self) -> dict[str, dict]:
        """Held-out source configs by result-key prefix: ``evaluation.data`` (no prefix; the inputs'
        config if empty), then each of ``evaluation.splits`` over it (``<name>/``)."""
        ecfg = self.config.evaluation
        base = dict(ecfg.data or self.config.data["input"])
        return {"": base, **{f"{name}/": {**base, **node} for name, node in ecfg.splits.items()}}

    @torch.no_grad()
    def evaluate(self, G: nn.Module, out_dir: Any) -> dict[str, float]:
        """Per split: MPJPE and PA-MPJPE (mm) of G, and of a constant mean memory pose
        (``baseline_mean_pose_``: the camera-frame mean for MPJPE, the Procrustes mean for PA); the
        PA-MPJPE from each test pose to its nearest training pose (inputs and memory; mean and
        median); and how many test frames the training pools also hold (``train_overlap_frames``)."""
        from .figures import save_pose_figure

        ecfg = self.config.evaluation
        training = [build_source(*source_config(self.config.data[role]), "cpu") for role in ("input", "memory")]
        train_poses = torch.cat([source.poses.float() for source in training])
        mean_body, mean_camera = procrustes_mean(self.memory_poses()), self.memory_poses(camera=True).mean(0)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results: dict[str, float] = {}
        for prefix, node in self.test_splits().items():
            name, scfg = source_config(node)
            source = build_source(name, scfg, self.device)
            preds, truths, inputs, drawn = [], [], [], []
            for i in range(math.ceil(ecfg.samples / scfg.batch_size)):
                batch = source.generate(ecfg.seed, i)
                posed, _ = _skeleton(G, self.rays(batch["kp2d"].to(self.device), scfg))
                kp3d = batch["kp3d"].float()
                preds.append(posed.cpu())
                truths.append((kp3d - kp3d[:, :1]).cpu())
                inputs.append(batch["kp2d"].cpu())
                drawn.append(batch["index"].cpu())
            pred, truth = torch.cat(preds)[: ecfg.samples], torch.cat(truths)[: ecfg.samples]
            drawn = torch.cat(drawn)[: ecfg.samples]
            pool, where = drawn.unique(return_inverse=True)
            nearest = 1000 * nearest_pose_distance(
                source.poses[pool.to(source.poses.device)].float().cpu(), train_poses
            )
            nearest = nearest[where]
            mm = lambda x, y: 1000 * mpjpe(x, y).mean().item()  # noqa: E731
            constant = mean_body.expand_as(truth)
            results.update({
                f"{prefix}mpjpe_mm": mm(pred, truth),
                f"{prefix}pa_mpjpe_mm": mm(procrustes_align(pred, truth), truth),
                f"{prefix}baseline_mean_pose_mpjpe_mm": mm(mean_camera.expand_as(truth), truth),
                f"{prefix}baseline_mean_pose_pa_mpjpe_mm": mm(procrustes_align(constant, truth), truth),
                f"{prefix}nearest_train_pa_mpjpe_mm": nearest.mean().item(),
                f"{prefix}nearest_train_pa_mpjpe_median_mm": nearest.median().item(),
                f"{prefix}train_overlap_frames": float(len(overlapping_frames(source, *training))),
                f"{prefix}samples": float(len(pred)),
            })  # fmt: skip
            figure = out / (f"pose-{prefix.rstrip('/')}.png" if prefix else "pose.png")
            save_pose_figure(torch.cat(inputs)[: ecfg.figure_rows], pred, truth, figure, ecfg.figure_rows)
        return results


def _skeleton(lifter: PoseLifter, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-relative camera-space poses ``[B, J, 3]`` and camera-space roots ``[B, 3]``."""
    coeffs, rotation, depth = lifter(rays)
    body = (lifter.mean + coeffs @ lifter.components).view(rays.shape[0], -1, 3)
    posed = body @ rotation.transpose(1, 2)
    root = depth.unsqueeze(-1) * torch.cat([rays[:, 0], torch.ones_like(rays[:, 0, :1])], -1)
    return posed - posed[:, :1], root
