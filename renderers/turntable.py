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

from renderloop.config import ConfigError, check_image_size, check_number, check_output_file
from renderloop.devices import resolve_device
from renderloop.errors import InputError
from renderloop.renderers import cameras, meshes, ops
from renderloop.renderers.renderer import MeshRenderer, RendererConfig

PROCEDURAL = ("icosphere", "torus")


@dataclass
class TurntableConfig:
    """Settings of ``renderloop turntable``; every check, the mesh file and the output path
    included, runs here so that a bad one is refused before anything renders or is written."""

    renderer: RendererConfig = field(default_factory=RendererConfig)
    mesh: str = "torus"
    """``icosphere``, ``torus`` or a mesh file; it is scaled to radius 1 about its centre."""
    views: int = 8
    elevation_deg: float = 35.0
    distance: float = 3.2
    """Camera distance from the mesh centre."""
    fov_deg: float = 40.0
    device: str = "auto"
    output: str = "demo-out/turntable.png"

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ConfigError("views", f"must be >= 1; got {self.views}")
        check_number(
            "elevation_deg", self.elevation_deg, above=-90, below=90, note="the camera looks along the up axis at ±90"
        )
        check_number("distance", self.distance, above=1.0, note="outside the mesh, whose radius is 1")
        check_number("fov_deg", self.fov_deg, above=0, below=180)
        near, far = self.renderer.near, self.renderer.far
        if not near <= self.distance - 1 or not self.distance + 1 <= far:
            raise ConfigError(
                "renderer.near" if near > self.distance - 1 else "renderer.far",
                f"puts the mesh (camera depths {self.distance - 1:g} to {self.distance + 1:g} at distance="
                f"{self.distance:g}) outside the view volume; set renderer.near <= {self.distance - 1:g} and "
                f"renderer.far >= {self.distance + 1:g}; got near={near:g}, far={far:g}",
            )
        check_image_size(
            ("views", self.views), ("renderer.height", self.renderer.height), ("renderer.width", self.renderer.width)
        )
        if self.mesh not in PROCEDURAL:
            if not self.mesh:
                raise ConfigError(
                    "mesh", f"must be {' or '.join(PROCEDURAL)} or a path to an OBJ/PLY/OFF/STL file; got ''"
                )
            meshes.check_mesh_file("mesh", self.mesh)
        check_output_file("output", self.output)
        resolve_device(self.device)


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
    if not bool(covered.any()):
        raise InputError(
            "no view shows the mesh: it lies outside the view volume (renderer.near, renderer.far, distance)"
        )
    lo, hi = depth[covered].min(), depth[covered].max()
    depth_img = torch.where(covered, 1 - 0.8 * (depth - lo) / (hi - lo + 1e-6), torch.zeros_like(depth))
    rows = [
        out.rgb.clamp(0, 1),
        (out.normals * torch.tensor([0.5, -0.5, -0.5], device=device) + 0.5) * covered.unsqueeze(-1),
        depth_img.unsqueeze(-1).expand(-1, -1, -1, 3),
        soft.unsqueeze(-1).expand(-1, -1, -1, 3),
    ]
    sheet = torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)  # (4H, nW, 3)
    path = Path(cfg.output).expanduser()
    image = Image.fromarray((sheet.cpu().numpy() * 255).round().astype(np.uint8))
    tmp = path.with_name(f".{path.name}.tmp")  # renamed when complete: a failed write leaves no partial sheet
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"output {cfg.output!r} cannot be written ({err.strerror or err}); choose another path"
        ) from None
    return path
