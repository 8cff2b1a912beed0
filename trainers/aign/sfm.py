"""AIGN task ``sfm``: depth and egomotion from two frames, against a memory of depth maps.

G predicts frame 1's disparity (1 / depth; the memory's depth maps are turned the same way, with
0 where a map has no surface) and the rigid motion from frame 1's camera to frame 2's; P warps frame 2
into frame 1 with them (``renderers.warping``), and the reconstruction is the photometric error
where the warp lands inside frame 2 (auto-masked: see :func:`photometric_error`). Photometric
error alone fixes depth only up to scale; D compares G's disparity maps with those of other
scenes, which carries the scale.

Frames come from a simulator stream with ``views: 2`` and ``view_step_deg > 0`` read in shard
order, so a batch holds consecutive (frame 1, frame 2) pairs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.datasets.sources import build_source, source_config
from renderloop.renderers.cameras import fov_intrinsics
from renderloop.renderers.warping import pose_to_rt, warp

from .config import AIGNConfig

__all__ = [
    "DepthPoseNet",
    "DisparityDiscriminator",
    "PoseNet",
    "SfMTask",
    "correlation",
    "depth_errors",
    "median_scale",
    "photometric_error",
    "pose_errors",
]


def _conv(a: int, b: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.GroupNorm(min(8, b), b), nn.ReLU())


def _relu_conv(a: int, b: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.ReLU())


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume ``[B, (2r+1)², H, W]``: per pixel, the dot products of ``a [B, C, H, W]`` with
    ``b`` shifted by every displacement in ``[-r, r]²`` (row-major; zero outside ``b``)."""
    H, W = a.shape[-2:]
    b = F.pad(b, [radius] * 4)
    size = 2 * radius + 1
    return torch.stack([(a * b[:, :, i : i + H, j : j + W]).sum(1) for i in range(size) for j in range(size)], 1)


def pixel_coordinates(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` normalized pixel coordinates (x, y in ``[-1, 1]``) for a map like ``x``."""
    B, _, H, W = x.shape
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, H, device=x.device), torch.linspace(-1, 1, W, device=x.device), indexing="ij"
    )
    return torch.stack([xs, ys]).to(x.dtype).expand(B, 2, H, W)


class PoseNet(nn.Module):
    """``(frame1, frame2) [B, 3, H, W]`` → pose ``[B, 6]`` (axis-angle, translation; frame 1
    camera → frame 2 camera).

    Both frames go through one feature encoder (¼ resolution, unit-length features); a cost volume
    of their correlations over displacements up to ``radius`` (in quarter-resolution pixels), frame
    1's features and the pixel coordinates (a rotation and a translation move pixels differently
    across the image) go through a strided head whose mean over the image is the pose. The last
    layer starts at zero: the identity motion. Regressing the motion from the stacked frames instead
    stayed at the identity under the photometric loss, even with the true depth.
    """

    def __init__(self, channels: int = 32, radius: int = 3) -> None:
        super().__init__()
        c = channels
        self.radius = radius
        self.features = nn.Sequential(_relu_conv(3, c, 2), _relu_conv(c, 2 * c, 2), _relu_conv(2 * c, 2 * c))
        self.head = nn.Sequential(
            _relu_conv((2 * radius + 1) ** 2 + 2 * c + 2, 4 * c),
            _relu_conv(4 * c, 4 * c, 2),
            _relu_conv(4 * c, 4 * c, 2),
            nn.Conv2d(4 * c, 6, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        a, b = (F.normalize(self.features(2 * f - 1), dim=1) for f in (frame1, frame2))
        volume = correlation(a, b, self.radius)
        return 0.1 * self.head(torch.cat([volume, a, pixel_coordinates(a)], 1)).mean((2, 3))


class DepthPoseNet(nn.Module):
    """``(frame1, frame2) [B, 3, H, W]`` → ``(disparity [B, H, W], pose [B, 6])``.

    Disparity comes from a U-Net on frame 1, in ``[0, 1 / min_depth]``; the pose from a
    :class:`PoseNet` of both frames.
    """

    def __init__(self, channels: int = 32, min_depth: float = 0.5, search_radius: int = 3) -> None:
        super().__init__()
        c = channels
        self.max_disparity = 1.0 / min_depth
        self.enc = nn.ModuleList([_conv(3, c), _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2), _conv(4 * c, 4 * c, 2)])
        self.dec = nn.ModuleList([_conv(8 * c, 2 * c), _conv(4 * c, c), _conv(2 * c, c)])
        self.disp = nn.Conv2d(c, 1, 3, padding=1)
        self.pose = PoseNet(c, search_radius)

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips, h = [], 2 * frame1 - 1
        for layer in self.enc:
            h = layer(h)
            skips.append(h)
        for layer, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = layer(torch.cat([h, skip], 1))
        disparity = self.max_disparity * torch.sigmoid(self.disp(h)[:, 0])
        return disparity, self.pose(frame1, frame2)


class DisparityDiscriminator(nn.Module):
    """Disparity maps ``[B, H, W]`` → patch logits ``[B, h, w]``."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        c = [1, *channels]
        layers: list[nn.Module] = []
        for a, b in zip(c, c[1:], strict=False):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, disparity: torch.Tensor) -> torch.Tensor:
        return self.net(disparity.unsqueeze(1))[:, 0]


def median_scale(pred: torch.Tensor, truth: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-image scale ``[N]``: median of ``truth`` over ``region`` ÷ median of ``pred`` there (the
    monocular protocol's alignment), over all of the image's pixels with ground truth where
    ``region`` is empty. On the object only: with a backdrop, depth is bimodal and a whole-image
    median lands on whichever mode covers more pixels, so the scale would jump between images."""
    valid = truth > 0
    ratios = []
    for i in range(len(pred)):
        where = region[i] & valid[i]
        where = where if where.any() else valid[i]
        ratios.append(truth[i][where].median() / pred[i][where].median().clamp_min(1e-6))
    return torch.stack(ratios)


def _scale_invariant(pred: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Per-image scale-invariant log error (Eigen et al. 2014, λ = 1): the variance over ``where`` of
    ``log pred − log truth``; zero for a prediction right up to a scale."""
    d = torch.where(where, pred.clamp_min(1e-6).log() - truth.clamp_min(1e-6).log(), 0.0).flatten(1)
    n = where.flatten(1).sum(1).clamp_min(1)
    mean = d.sum(1) / n
    return d.pow(2).sum(1) / n - mean.pow(2)


def depth_errors(pred: torch.Tensor, truth: torch.Tensor, object_mask: torch.Tensor | None = None) -> dict[str, float]:
    """Depth errors ``[N, H, W]`` over the pixels with ground truth (``truth > 0``).

    ``abs_rel``: raw. ``abs_rel_scaled``: after scaling each prediction by :func:`median_scale` over
    ``object_mask`` (default: every pixel with ground truth); ``abs_rel_object`` and
    ``abs_rel_backdrop`` split it by the mask (the latter only where there are backdrop pixels).
    ``side``: the scale-invariant log error, mean over images. ``scale_ratio``: median of the scales.
    """
    valid = truth > 0
    obj = valid if object_mask is None else valid & object_mask.bool()
    ratio = median_scale(pred, truth, obj)
    scaled = pred * ratio.view(-1, 1, 1)
    rel = lambda x, where: ((x[where] - truth[where]).abs() / truth[where]).mean().item()  # noqa: E731
    out = {
        "abs_rel": rel(pred, valid),
        "abs_rel_scaled": rel(scaled, valid),
        "abs_rel_object": rel(scaled, obj),
        "side": _scale_invariant(pred, truth, valid).mean().item(),
        "scale_ratio": ratio.median().item(),
    }
    backdrop = valid & ~obj
    if backdrop.any():
        out["abs_rel_backdrop"] = rel(scaled, backdrop)
    return out


def pose_errors(R: torch.Tensor, t: torch.Tensor, R_true: torch.Tensor, t_true: torch.Tensor) -> dict[str, float]:
    """Rotation error (degrees), translation error (metres) and the translation's direction error
    (degrees between predicted and true translation: free of the scale that two frames leave open;
    90° for a zero prediction)."""
    cos = ((R.transpose(1, 2) @ R_true).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    direction = F.cosine_similarity(t, t_true, dim=-1).clamp(-1, 1)
    return {
        "rotation_deg": torch.rad2deg(torch.acos(cos.clamp(-1, 1))).mean().item(),
        "translation_m": (t - t_true).norm(dim=-1).mean().item(),
        "translation_direction_deg": torch.rad2deg(torch.acos(direction)).mean().item(),
    }


def photometric_error(frame1, frame2, warped, valid, min_change: float = 1e-3, trim: float = 0.0) -> torch.Tensor:
    """Mean L1 error between frame 1 and frame 2 warped into it, over the pixels whose colour changes
    by more than ``min_change`` between the frames (auto-masking: uniform backgrounds and other pixels
    that not warping already explains carry no gradient). The mask does not depend on the warp: a
    per-pixel minimum with the unwarped error would reward any motion near the identity, since the
    pixels a wrong motion makes worse would not count. ``trim`` > 0 leaves out that share of each
    frame's largest errors (a trimmed mean: occluded pixels then pull no motion towards them)."""
    moved = (frame2 - frame1).abs().mean(1, keepdim=True) > min_change
    mask = (valid * moved).flatten(1) > 0
    error = (warped - frame1).abs().mean(1).flatten(1)
    if trim > 0:
        counted = torch.where(mask, error.detach().float(), torch.nan)
        mask = mask & (error <= torch.nanquantile(counted, 1 - trim, dim=1, keepdim=True).to(error.dtype))
    return (error * mask).sum() / mask.sum().clamp_min(1)


def relative_motion(R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 1 camera → frame 2 camera transform from world→camera poses ``R [2N, 3, 3]``, ``t [2N, 3]``
    of consecutive pairs: ``x₂ = R_rel x₁ + t_rel``."""
    R1, R2, t1, t2 = R[0::2], R[1::2], t[0::2], t[1::2]
    R_rel = R2 @ R1.transpose(1, 2)
    return R_rel, t2 - (R_rel @ t1.unsqueeze(-1))[..., 0]


class SfMTask:
    """Inputs: ``rgb.png`` pairs of a simulator sequence stream; memory: ``depth.npy`` of other scenes."""

    def __init__(self, config: AIGNConfig, device: torch.device) -> None:
        self.config, self.device, self.scfg = config, device, config.sfm
        _, self.source = source_config(config.data["input"])

    def fields(self, role: str) -> list[str]:
        return ["rgb.png", "view.txt"] if role == "input" else ["depth.npy"]

    def shuffle(self, role: str) -> bool:
        return role != "input"  # pairs stay consecutive in shard order

    def intrinsics(self, batch: int, device) -> torch.Tensor:
        res = self.source.resolution
        return fov_intrinsics(self.source.fov_deg, res, res, batch=batch, device=device)

    def build(self) -> tuple[nn.Module, nn.Module]:
        G = DepthPoseNet(self.scfg.channels, self.scfg.min_depth, self.scfg.search_radius)
        return G, DisparityDiscriminator(self.scfg.disc_channels)

    def pairs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, view = batch["rgb"], batch.get("view")
        if view is not None and (torch.as_tensor(view).view(-1, 2).cpu() != torch.tensor([0, 1])).any():
            raise RuntimeError("sfm: a batch does not hold consecutive (frame 1, frame 2) pairs; "
                               "engine.data.batch_size and samples_per_shard must be even")  # fmt: skip
        return rgb[0::2], rgb[1::2]

    def lift(self, G: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        frame1, frame2 = self.pairs(batch)
        disparity, pose = G(frame1, frame2)
        depth = 1.0 / disparity.clamp_min(1.0 / self.scfg.max_depth)
        R, t = pose_to_rt(pose.float())
        K = self.intrinsics(len(frame1), frame1.device).to(depth)
        warped, valid = warp(frame2, depth, K, R.to(depth), t.to(depth))
        error = photometric_error(frame1, frame2, warped, valid, trim=self.scfg.trim)
        return disparity, error, {"valid_fraction": valid.mean().detach()}

    def fake(self, disparity: torch.Tensor) -> torch.Tensor:
        return disparity

    def real(self, batch: dict) -> torch.Tensor:
        depth = batch["depth"].float()
        return torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))

    @torch.no_grad()
    def images(self, batch: dict, G: nn.Module) -> dict[str, torch.Tensor]:
        frame1, frame2 = self.pairs({k: v[:16] for k, v in batch["input"].items() if k != "key"})
        disparity, _ = G(frame1, frame2)
        return {"frame1": frame1, "frame2": frame2, "disparity": (disparity * self.scfg.min_depth).unsqueeze(1)}

    @torch.no_grad()
    def memory_mean_depth(self, count: int, seed: int) -> torch.Tensor:
        """Per-pixel mean ``[H, W]`` of ``count`` memory depth maps where they have a surface (their
        overall mean elsewhere): a constant depth prediction that knows only the memory."""
        name, scfg = source_config(self.config.data["memory"])
        source = build_source(name, scfg, self.device)
        depth = torch.cat([
            source.generate(seed, i)["depth"].float().cpu() for i in range(math.ceil(count / scfg.batch_size))
        ])[:count]  # fmt: skip
        valid = (depth > 0).float()
        overall = depth.sum() / valid.sum().clamp_min(1)
        return torch.where(valid.sum(0) > 0, depth.sum(0) / valid.sum(0).clamp_min(1), overall)

    @torch.no_grad()
    def evaluate(self, G: nn.Module, out_dir: Any) -> dict[str, float]:
        """Depth and motion errors of G on held-out pairs, and on the same pairs of two predictions
        that learn nothing from them: standing still (``baseline_still_``: identity motion) and the
        memory's mean depth map (``baseline_mean_depth_``). Depth scales come from the object's
        pixels (``simulator`` ``mask``), and object and backdrop errors are reported apart."""
        from .figures import save_rows

        ecfg = self.config.evaluation
        name, scfg = source_config(ecfg.data or self.config.data["input"])
        source = build_source(name, scfg, self.device)
        depth_pred, depth_true, masks, motions, frames = [], [], [], [], []
        for i in range(math.ceil(2 * ecfg.samples / scfg.batch_size)):
            batch = source.generate(ecfg.seed, i)
            frame1, frame2 = batch["rgb"][0::2], batch["rgb"][1::2]
            disparity, pose = G(frame1, frame2)
            R, t = pose_to_rt(pose.float())
            R_true, t_true = relative_motion(batch["R"], batch["t"])
            depth_pred.append((1.0 / disparity.clamp_min(1.0 / self.scfg.max_depth)).cpu())
            depth_true.append(batch["depth"][0::2].cpu())
            masks.append(batch["mask"][0::2].bool().cpu())
            motions.append(tuple(x.cpu() for x in (R, t, R_true, t_true)))
            frames.append((frame1.cpu(), frame2.cpu()))
        pred, truth = torch.cat(depth_pred)[: ecfg.samples], torch.cat(depth_true)[: ecfg.samples]
        mask = torch.cat(masks)[: ecfg.samples]
        R, t, R_true, t_true = (torch.cat(parts)[: ecfg.samples] for parts in zip(*motions, strict=True))
        results = {**depth_errors(pred, truth, mask), **pose_errors(R, t, R_true, t_true), "samples": float(len(pred))}
        results["true_translation_m"] = t_true.norm(dim=-1).mean().item()
        still = pose_errors(torch.eye(3).expand_as(R_true), torch.zeros_like(t_true), R_true, t_true)
        results.update({f"baseline_still_{k}": v for k, v in still.items()})
        mean_depth = self.memory_mean_depth(ecfg.samples, ecfg.seed).expand_as(truth)
        results.update({f"baseline_mean_depth_{k}": v for k, v in depth_errors(mean_depth, truth, mask).items()})
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        f1, f2 = (torch.cat(x) for x in zip(*frames, strict=True))
        to_image = lambda d: (self.scfg.min_depth / d.clamp_min(self.scfg.min_depth) * (d > 0)).unsqueeze(1)  # noqa: E731
        save_rows([f1, f2, to_image(pred), to_image(truth)], out / "sfm.png", ecfg.figure_rows)
        return results
