"""Silhouette gradients, compared where they are the goal: fit a shape to target silhouettes.

    python -m bench.silhouette_fit                                     # ours, CPU, small
    python -m bench.silhouette_fit --device cuda --methods soft nvdiffrast --out fit.json

An icosphere is scaled along its axes and moved (six parameters) to a hidden target ellipsoid,
seen by ``--views`` cameras around it, by Adam on the mean squared difference between each
method's silhouette and the target's hard masks:

- ``soft``: ours, ``ops.soft_silhouette`` (DIB-R-style; ``--sigma`` in squared pixels);
- ``antialias``: ours, the hard mask blended across the outline (``renderers/antialias.py``, the
  method of nvdiffrast's ``antialias``; on CUDA its walk is one Triton kernel);
- ``nvdiffrast``: nvdiffrast's ``antialias`` of the hard mask (its gradients come from the
  outline's edge pixels only);
- ``hard``: the hard mask, which has no gradient w.r.t. positions (the untrained row: parameters
  never move).

Each seed draws its own target and start. Reported per method: mask IoU with the targets (the
hard masks of the fitted shape) at the start and after ``--steps`` steps (equal steps), the error
of the six parameters, and milliseconds per step (silhouette forward and backward, after one
untimed warm-up step that pays any compilation).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import datetime, timezone

import torch

from bench.timing import synchronize
from renderloop.renderers import cameras, ops
from renderloop.renderers.antialias import antialias, edge_neighbours
from renderloop.renderers.meshes import icosphere
from renderloop.stats import mean_ci95

METHODS = ("soft", "antialias", "nvdiffrast", "hard")


def scene(views: int, res: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cameras around the origin, alternating above and below it: ``R [V, 3, 3]``, ``t [V, 3]``, ``K``."""
    azimuth = torch.linspace(0, 2 * math.pi, views + 1, device=device)[:-1]
    elevation = torch.tensor([0.35, -0.35], device=device).repeat(views)[:views]
    R, t = cameras.orbit_camera(azimuth, elevation, torch.full_like(azimuth, 3.0))
    return R, t, cameras.fov_intrinsics(40.0, res, res, batch=views, device=device)


def shape_clip(verts: torch.Tensor, params: torch.Tensor, R, t, K, res: int) -> torch.Tensor:
    """Clip coordinates ``[V, N, 4]`` of the sphere scaled by ``exp(params[:3])``, moved by ``params[3:]``."""
    world = verts * params[:3].exp() + params[3:]
    return cameras.camera_to_clip(cameras.world_to_camera(world.expand(len(R), -1, -1), R, t), K, (res, res))


def draw(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Six parameters (dtype and device of ``like``): log-scales in ±0.35 (axes 0.70–1.42), offsets in ±0.3."""
    u = torch.rand(6, generator=generator) * 2 - 1
    return torch.cat([u[:3] * 0.35, u[3:] * 0.3]).to(like)


class Silhouettes:
    """Each method's silhouette ``[V, H, W]`` of clip coordinates."""

    def __init__(self, faces: torch.Tensor, res: int, sigma: float, device):
        self.faces, self.res, self.sigma = faces, res, sigma
        self.ctx = ops.make_context()
        self.neighbours = edge_neighbours(faces.unsqueeze(0))
        self._dr = None
        if device.type == "cuda":
            try:
                from nvdiffrast import torch as dr

                self._dr = (dr, dr.RasterizeCudaContext(device=device), faces.int().contiguous())
            except ImportError:
                pass

    def available(self, method: str) -> bool:
        return method != "nvdiffrast" or self._dr is not None

    def hard(self, clip: torch.Tensor) -> torch.Tensor:
        return ops.rasterize(clip, self.faces, (self.res, self.res), ctx=self.ctx).mask.float()

    def __call__(self, method: str, clip: torch.Tensor) -> torch.Tensor:
        if method == "soft":
            return ops.soft_silhouette(clip, self.faces, (self.res, self.res), sigma=self.sigma, ctx=self.ctx)
        if method == "hard":
            return self.hard(clip)
        if method == "antialias":
            frags = ops.rasterize(clip, self.faces, (self.res, self.res), ctx=self.ctx)
            neighbours = self.neighbours.expand(len(clip), -1, -1)
            return antialias(frags.mask.unsqueeze(-1).to(clip.dtype), frags, clip, neighbours)[..., 0]
        dr, context, tri = self._dr
        pos = clip.float().contiguous()
        rast, _ = dr.rasterize(context, pos, tri, resolution=[self.res, self.res])
        return dr.antialias((rast[..., 3:] > 0).float(), rast, pos, tri)[..., 0]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two sets of binary masks, pooled over views."""
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def fit(method: str, seed: int, args, device, silhouettes: Silhouettes, verts, R, t, K) -> dict:
    generator = torch.Generator().manual_seed(seed)
    target = draw(verts, generator)
    params = draw(verts, generator).requires_grad_(True)
    start = params.detach().clone()
    with torch.no_grad():
        goal = silhouettes.hard(shape_clip(verts, target, R, t, K, args.res))
        first = iou(silhouettes.hard(shape_clip(verts, params, R, t, K, args.res)), goal)
    optimizer = torch.optim.Adam([params], lr=args.lr)
    warm = params.detach().clone().requires_grad_(True)
    silhouette = silhouettes(method, shape_clip(verts, warm, R, t, K, args.res))
    if silhouette.requires_grad:
        silhouette.sum().backward()
    synchronize(device)
    begin = time.perf_counter()
    for _ in range(args.steps):
        silhouette = silhouettes(method, shape_clip(verts, params, R, t, K, args.res))
        loss = (silhouette - goal).square().mean()
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - begin
    with torch.no_grad():
        last = iou(silhouettes.hard(shape_clip(verts, params, R, t, K, args.res)), goal)
    return {
        "method": method, "seed": seed, "iou_start": first, "iou_end": last,
        "param_error_start": float((start - target).abs().max()),
        "param_error_end": float((params.detach() - target).abs().max()),
        "ms_per_step": 1e3 * seconds / max(args.steps, 1),
    }  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Per method: mean ± 95% interval over seeds of each number."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        keys = ("iou_start", "iou_end", "param_error_end", "ms_per_step")
        out[method] = {k: tuple(mean_ci95([r[k] for r in mine])) for k in keys}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="*", default=["soft", "hard"], choices=METHODS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--subdivisions", type=int, default=3, help="of the icosphere (3: 1,280 faces)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--sigma", type=float, default=1.0, help="the soft silhouette's softness, squared pixels")
    p.add_argument("--out", default="")
    args = p.parse_args()
    device = torch.device(args.device)
    mesh = icosphere(args.subdivisions).to(device)
    silhouettes = Silhouettes(mesh.faces, args.res, args.sigma, device)
    missing = [m for m in args.methods if not silhouettes.available(m)]
    if missing:
        raise SystemExit(f"not available here: {missing} (nvdiffrast needs CUDA and the nvdiffrast package)")
    R, t, K = scene(args.views, args.res, device)
    runs = [fit(m, s, args, device, silhouettes, mesh.verts, R, t, K) for m in args.methods for s in args.seeds]
    for r in runs:
        print(json.dumps(r))
    summary = summarize(runs)
    print(json.dumps(summary, indent=1))
    if args.out:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta = {"device": name, "torch": torch.__version__, "date": date, "args": vars(args)}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "runs": runs, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
