"""``renderloop turntable``: render a turntable of a mesh and write a PNG sheet.

Imported by the CLI on demand (it needs the renderers).

Rows: shaded colour, camera-frame normals, depth (near = bright), soft silhouette.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from renderloop.config import ConfigError
from renderloop.devices import resolve_device
from renderloop.renderers import cameras, meshes, ops
from renderloop.renderers.renderer import MeshRenderer, RendererConfig


@dataclass
class TurntableConfig:
    renderer: RendererConfig = field(default_factory=RendererConfig)
    mesh: str = "torus"
    views: int = 8
    elevation_deg: float = 35.0
    distance: float = 3.2
    fov_deg: float = 40.0
    device: str = "auto"
    output: str = "demo-out/turntable.png"

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ConfigError("views", f"must be >= 1; got {self.views}")
        if self.distance <= 1.0:
            raise ConfigError("distance", f"must exceed the mesh radius 1.0; got {self.distance}")
        if not 0 < self.fov_deg < 180:
            raise ConfigError("fov_deg", f"must be in (0, 180); got {self.fov_deg}")


def run(cfg: TurntableConfig) -> Path:
    rcfg = cfg.renderer
    device = resolve_device(cfg.device)
    if cfg.mesh == "icosphere":
        mesh = meshes.icosphere(3)
    elif cfg.mesh == "torus":
        mesh = meshes.torus()
    else:
        mesh = meshes.load_mesh(cfg.mesh)
    mesh = mesh.normalized().to(device)
    renderer = MeshRenderer(rcfg).to(device)
    n = cfg.views
    azimuth = torch.arange(n, device=device) * (2 * math.pi / n)
    R, t = cameras.orbit_camera(
        azimuth, torch.full_like(azimuth, math.radians(cfg.elevation_deg)), torch.full_like(azimuth, cfg.distance)
    )
    K = cameras.fov_intrinsics(cfg.fov_deg, rcfg.height, rcfg.width, batch=n, device=device)
    verts = mesh.verts.expand(n, -1, -1)
    colors = 0.5 + 0.5 * torch.nn.functional.normalize(mesh.verts, dim=-1)  # position-coded albedo
    light = torch.nn.functional.normalize(torch.tensor([0.4, -0.6, -0.7], device=device), dim=0).expand(n, 3)
    with torch.no_grad():
        out = renderer(verts, mesh.faces, colors, R, t, K, light)
        clip = cameras.camera_to_clip(cameras.world_to_camera(verts, R, t), K, renderer.resolution)
        soft = ops.soft_silhouette(clip, mesh.faces, renderer.resolution, sigma=1.0)
    depth = out.depth
    covered = depth > 0
    lo, hi = depth[covered].min(), depth[covered].max()
    depth_img = torch.where(covered, 1 - 0.8 * (depth - lo) / (hi - lo + 1e-6), torch.zeros_like(depth))
    rows = [
        out.rgb.clamp(0, 1),
        (out.normals * torch.tensor([0.5, -0.5, -0.5], device=device) + 0.5) * covered.unsqueeze(-1),
        depth_img.unsqueeze(-1).expand(-1, -1, -1, 3),
        soft.unsqueeze(-1).expand(-1, -1, -1, 3),
    ]
    sheet = torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)  # (4H, nW, 3)
    path = Path(cfg.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((sheet.cpu().numpy() * 255).round().astype(np.uint8)).save(path)
    return path
