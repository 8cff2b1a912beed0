"""The procedural 3D simulator: labeled images of random shapes, batched on any device.

``Simulator(config, device)`` is built once (meshes loaded, renderer built and optionally
compiled); ``generate(seed, batch_index)`` returns a batch that depends only on its arguments.
Every image comes with mask, depth, normals, part segmentation, 2D/3D keypoints, camera and
light. ``style: real_like`` adds specular highlights, colour cast, vignetting, blur and sensor
noise, so sim-to-real methods get a controlled domain gap with labels on both sides.
With ``views > 1`` and ``view_step_deg > 0`` each object's views form a camera *sequence* of one
static scene (for structure from motion): see :class:`SimulatorConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import kornia
import torch
import torch.nn.functional as F

from renderloop.config import ConfigError, check_image_size, check_number
from renderloop.renderers import cameras, ops
from renderloop.renderers.meshes import check_mesh_file, icosphere, load_mesh, pad_meshes
from renderloop.renderers.renderer import MeshRenderer, RendererConfig
from renderloop.renderers.shading import blinn_phong

from . import category
from .seeding import batch_seed, config_digest
from .shapes import PROCEDURAL, TEXTURES, deform, keypoint_vertices, part_labels, random_rotation, solid_texture

__all__ = ["SimulatorConfig", "Simulator", "STYLES"]

STYLES = ("synthetic", "real_like")
SHAPES = (*PROCEDURAL, "mesh")
BACKGROUNDS = ("solid", "gradient", "noise")
VERSION = "1"
# Radians per cycle of the noise backgrounds' sinusoids: a rounded 2π. Every seeded stream was
# drawn with it, so it stays 6.28 (math.tau would change every noise background).
BACKGROUND_RADIANS_PER_CYCLE = 6.28


@dataclass
class SimulatorConfig:
    """Settings of the simulator source (Hydra group ``source``, option ``simulator``)."""

    resolution: int = 128
    """Square image size in pixels."""
    batch_size: int = 64
    """Images per ``generate`` call (objects × views)."""
    style: str = "synthetic"
    """``synthetic`` (plain Lambertian) or ``real_like`` (specular, colour cast, vignetting, blur, noise)."""
    shapes: list[str] = field(default_factory=lambda: list(PROCEDURAL))
    """Shape kinds drawn uniformly: superquadric, deformed_sphere, extrusion, mesh."""
    mesh_paths: list[str] = field(default_factory=list)
    """OBJ/PLY/OFF/STL files for the ``mesh`` kind."""
    subdivisions: int = 3
    """Icosphere subdivisions of procedural shapes (3: 642 vertices, 1,280 faces)."""
    textures: list[str] = field(default_factory=lambda: list(TEXTURES))
    """Solid textures drawn uniformly: solid, checker, noise, gradient."""
    num_parts: int = 6
    """Part labels per shape (regions around fixed directions)."""
    num_keypoints: int = 8
    """Keypoints per shape (vertices farthest along fixed directions)."""
    views: int = 1
    """Views per object: > 1 renders each object from several cameras (multi-view groups)."""
    view_step_deg: float = 0.0
    """0: the views of an object are independent random cameras, each with its own light, ambient,
    diffuse and background. > 0 (needs ``views > 1``): a camera sequence of one static scene. View
    k + 1 is view k moved on its sphere by U(-s, s) degrees of azimuth (may leave ``azimuth_deg``)
    and U(-s/2, s/2) of elevation (clamped to ``elevation_deg``); the views share a light fixed in
    the world frame, ambient, diffuse, specular and a uniform background colour (a constant warps to
    itself). ``real_like`` camera effects (cast, vignetting, blur, noise) still differ per frame."""
    view_step_distance: float = 0.0
    """Sequence mode: per-view change of camera distance, U(-d, d) metres, clamped to ``distance``."""
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    distance: tuple[float, float] = (2.6, 3.4)
    fov_deg: float = 40.0
    ambient: tuple[float, float] = (0.25, 0.5)
    diffuse: tuple[float, float] = (0.5, 0.85)
    compile: bool = False
    """torch.compile the renderer (see ``renderer.compile``)."""
    backdrop_radius: float = 0.0
    """> 0: the background is a world-fixed sphere of this radius around the object, textured with
    random sinusoids (one texture per object, shared by its views) and unlit, and ``depth`` holds
    its depth too (``mask`` stays the object's): scenes whose depth fills the frame, whose
    background moves with the camera as a static scene does (structure from motion)."""

    category: str = ""
    """"" (the shape kinds above, randomly rotated) or an object family in its canonical frame for
    the GAN methods (``vehicle``: ``datasets/category.py``; its named parts replace the
    direction-based ones, so ``num_parts`` must equal their count, and ``shapes`` is unused)."""
    object_seeds: Any = "gan"
    """Category objects are drawn from this object-seed range: ``gan``, ``oracle`` or ``test``
    (disjoint, ``category.SEED_RANGES``) or ``[first, end)``; each render's ``meta.json`` records
    its object seed."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if self.resolution < 8:
            raise bad("resolution", f"must be >= 8; got {self.resolution}")
        if self.style not in STYLES:
            raise bad("style", f"must be one of {STYLES}; got {self.style!r}")
        if not self.shapes or set(self.shapes) - set(SHAPES):
            raise bad("shapes", f"must be a non-empty subset of {SHAPES}; got {self.shapes}")
        if "mesh" in self.shapes and not self.mesh_paths:
            raise bad("mesh_paths", "the 'mesh' shape needs at least one mesh file")
        if not self.textures or set(self.textures) - set(TEXTURES):
            raise bad("textures", f"must be a non-empty subset of {TEXTURES}; got {self.textures}")
        if self.views < 1 or self.batch_size % self.views:
            raise bad("views", f"must be >= 1 and divide batch_size={self.batch_size}; got {self.views}")
        for key in ("num_parts", "num_keypoints"):  # part labels are stored as uint8
            if not 1 <= getattr(self, key) <= 255:
                raise bad(key, f"must be in [1, 255]; got {getattr(self, key)}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1; got {self.batch_size}")
        check_image_size(("source.batch_size", self.batch_size), ("source.resolution", self.resolution))
        far = RendererConfig.far  # the renderer's far plane: the whole object (radius 1) must be nearer
        check_number(
            "source.distance",
            self.distance,
            above=1.05,
            at_most=far - 1,
            note=f"outside the object of radius 1, within the far plane at {far:g}",
        )
        check_number("source.azimuth_deg", self.azimuth_deg)
        check_number("source.elevation_deg", self.elevation_deg, above=-90, below=90, note="no camera on the up axis")
        check_number("source.fov_deg", self.fov_deg, above=0, below=180)
        check_number("source.ambient", self.ambient, at_least=0)
        check_number("source.diffuse", self.diffuse, at_least=0)
        check_number("source.view_step_deg", self.view_step_deg, at_least=0)
        if self.view_step_deg > 0 and self.views < 2:
            raise bad("view_step_deg", f"> 0 makes camera sequences and needs views >= 2; got views={self.views}")
        check_number("source.view_step_distance", self.view_step_distance, at_least=0)
        if self.view_step_distance > 0 and self.view_step_deg == 0:
            raise bad("view_step_distance", "only applies to camera sequences: set view_step_deg > 0 too")
        check_number("source.backdrop_radius", self.backdrop_radius, at_least=0)
        if self.backdrop_radius and not self.backdrop_radius > self.distance[1] + 0.5:
            raise bad("backdrop_radius", f"must be 0 or beyond the cameras (> {self.distance[1] + 0.5}); "
                      f"got {self.backdrop_radius}")  # fmt: skip
        if self.category:
            if self.category not in category.CATEGORIES:
                raise bad("category", f"must be '' or one of {category.CATEGORIES}; got {self.category!r}")
            if self.num_parts != len(category.PART_NAMES):
                raise bad("num_parts", f"category {self.category} has {len(category.PART_NAMES)} named parts "
                          f"{category.PART_NAMES}; got {self.num_parts}")  # fmt: skip
            self.object_seeds = category.resolve_range(self.object_seeds)
        if "mesh" in self.shapes and not self.category:  # parsed now: a bad file stops the run early
            for i, path in enumerate(self.mesh_paths):
                check_mesh_file(f"source.mesh_paths.{i}", path)

    def digest(self) -> str:
        """Short config hash. Keys added later count only when set, so older hashes stay valid."""
        return config_digest(self, _LATER_KEYS)


# Keys added later and their neutral defaults.
_LATER_KEYS = {"view_step_deg": 0.0, "view_step_distance": 0.0, "backdrop_radius": 0.0, "category": "",
               "object_seeds": "gan"}  # fmt: skip


class Simulator:
    """Procedural labeled scenes; build once, then call :meth:`generate` per batch."""

    name = "simulator"

    def __init__(self, config: SimulatorConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or SimulatorConfig()
        self.device = torch.device(device)
        res = cfg.resolution
        self.renderer = MeshRenderer(RendererConfig(height=res, width=res, compile=cfg.compile))
        # Fixed (seed-independent) part centres and keypoint directions keep labels semantic.
        fixed = torch.Generator().manual_seed(20240601)
        self.part_centres = F.normalize(torch.randn(cfg.num_parts, 3, generator=fixed), dim=-1).to(self.device)
        kp_dirs = F.normalize(torch.randn(cfg.num_keypoints, 3, generator=fixed), dim=-1).to(self.device)
        sphere = icosphere(cfg.subdivisions).to(self.device)
        meshes = [load_mesh(p).normalized() for p in cfg.mesh_paths] if "mesh" in cfg.shapes else []
        # Topology 0 is the procedural sphere; 1.. are the loaded meshes, all padded to one size.
        verts, faces = pad_meshes([sphere, *(m.to(self.device) for m in meshes)])
        self.topo_verts, self.topo_faces = verts.to(self.device), faces.to(self.device)
        self.sphere_dirs, self.num_sphere_verts = sphere.verts, sphere.verts.shape[0]
        sizes = [sphere.verts.shape[0], *(m.verts.shape[0] for m in meshes)]
        self.category_parts = category.part_labels(sphere.verts.to(self.device)).unsqueeze(0)  # (1, Vs)
        self.keypoint_ids = torch.stack(
            [keypoint_vertices(verts[i, :n].to(self.device), kp_dirs) for i, n in enumerate(sizes)]
        )

    def warmup(self) -> None:
        """Generate and drop one batch: compiles the renderer and warms the allocator."""
        self.generate(0, 0)

    @property
    def meta(self) -> dict[str, Any]:
        meta = {"source": self.name, "version": VERSION, "style": self.config.style, "config": self.config.digest()}
        if self.config.category:
            meta |= {"category": self.config.category, "object_seeds": list(self.config.object_seeds)}
        return meta

    def _range(self, gen, n, bounds, scale=1.0):
        lo, hi = bounds
        return (lo + (hi - lo) * torch.rand(n, generator=gen, device=self.device)) * scale

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        """One batch; a pure function of ``(seed, batch_index)`` on a given device."""
        cfg, dev = self.config, self.device
        gen = torch.Generator(device=dev).manual_seed(batch_seed(seed, batch_index))
        B, V = cfg.batch_size, cfg.views
        N = B // V  # objects
        res = cfg.resolution

        if cfg.category:
            world, faces, colors, parts, topo, object_seeds = self._category_objects(gen, N)
        else:
            world, faces, colors, parts, topo = self._objects(gen, N)
            object_seeds = torch.full((N,), -1, dtype=torch.long, device=dev)

        # Views: each object seen by `views` cameras.
        def per_view(x):
            return x.repeat_interleave(V, dim=0)

        world, faces, colors, parts, topo = map(per_view, (world, faces, colors, parts, topo))
        # Sequence mode draws per object (then steps or repeats); otherwise every draw is per view.
        # The order of draws without sequences is the original one: keep it, streams depend on it.
        seq = cfg.view_step_deg > 0
        if seq:
            az, el, dist = self._sequence_cameras(gen, N, V)
        else:
            az = self._range(gen, B, cfg.azimuth_deg, math.pi / 180)
            el = self._range(gen, B, cfg.elevation_deg, math.pi / 180)
            dist = self._range(gen, B, cfg.distance)
        R, t = cameras.orbit_camera(az, el, dist)
        K = cameras.fov_intrinsics(cfg.fov_deg, res, res, batch=B, device=dev)
        n = N if seq else B
        light = F.normalize(
            torch.cat([2 * torch.rand(n, 2, generator=gen, device=dev) - 1, -torch.ones(n, 1, device=dev)], -1), dim=-1
        )
        ambient, diffuse = self._range(gen, n, cfg.ambient), self._range(gen, n, cfg.diffuse)
        if seq:
            # The light is drawn in the first view's camera frame, fixed in the world, and handed to
            # the renderer in each view's camera frame: l_cam = R @ R_first^T @ l_first.
            light_world = (light.unsqueeze(1) @ R[::V]).squeeze(1)  # (N, 3) row form of R^T l
            light = (R @ per_view(light_world).unsqueeze(-1)).squeeze(-1)  # (B, 3)
            ambient, diffuse = per_view(ambient), per_view(diffuse)

        out = self.renderer(world, faces, colors, R, t, K, light, ambient, diffuse)
        mask = out.fragments.mask
        face_parts = torch.gather(parts, 1, faces[..., 0].clamp(min=0))  # (B, F)
        seg = (ops.gather_faces(face_parts.unsqueeze(-1).float() + 1, out.fragments)[..., 0]).round().long()
        rgb = out.rgb
        if cfg.style == "real_like":
            rays = F.normalize(
                cameras.pixel_to_camera(
                    cameras.pixel_grid(res, res, device=dev).expand(B, res, res, 2),
                    torch.ones(B, res, res, device=dev),
                    K,
                ),
                dim=-1,
            )
            shine = self._range(gen, n, (16.0, 64.0))
            strength = self._range(gen, n, (0.2, 0.5))
            if seq:  # one material per object; the highlight still moves with the view
                shine, strength = per_view(shine), per_view(strength)
            rgb = rgb + blinn_phong(out.normals, -rays, light, shine, strength) * mask.unsqueeze(-1)
        depth = out.depth
        if cfg.backdrop_radius:  # drawn only here: streams without a backdrop keep their draws
            background, backdrop_depth = self._backdrop(gen, R, t, K, N, V)
            depth = torch.where(mask, depth, backdrop_depth)
        elif seq:  # uniform, so a pixel's colour does not depend on the view
            background = per_view(torch.rand(N, 1, 1, 3, generator=gen, device=dev)).expand(B, res, res, 3)
        else:
            background = self._background(gen, B, res)
        image = torch.where(mask.unsqueeze(-1), rgb, background).permute(0, 3, 1, 2)
        if cfg.style == "real_like":
            image = self._camera_effects(gen, image)

        cam_pts = cameras.world_to_camera(world, R, t)
        kp3d = torch.gather(cam_pts, 1, self.keypoint_ids[topo].unsqueeze(-1).expand(-1, -1, 3))
        return {
            "rgb": image.clamp(0, 1),
            "mask": mask,
            "depth": depth,
            "normal": out.normals,
            "seg": seg,
            "kp2d": cameras.camera_to_pixel(kp3d, K),
            "kp3d": kp3d,
            "K": K, "R": R, "t": t, "azimuth": az, "elevation": el, "distance": dist,
            "light": light, "ambient": ambient, "diffuse": diffuse,
            "group": torch.arange(N, device=dev).repeat_interleave(V) + batch_index * N,
            "view": torch.arange(V, device=dev).repeat(N),
            "object_seed": per_view(object_seeds),
        }  # fmt: skip

    def _objects(self, gen, N: int):
        """``N`` random objects of the configured shape kinds and textures, randomly rotated."""
        cfg, dev = self.config, self.device
        shape_names = torch.tensor([SHAPES.index(s) for s in cfg.shapes], device=dev)
        kind = shape_names[torch.randint(len(cfg.shapes), (N,), generator=gen, device=dev)]
        mesh_count = self.topo_verts.shape[0] - 1
        topo = torch.where(
            kind == SHAPES.index("mesh"), 1 + torch.randint(max(mesh_count, 1), (N,), generator=gen, device=dev), 0
        )
        proc = deform(self.sphere_dirs, kind.clamp(max=len(PROCEDURAL) - 1), gen)  # (N, Vs, 3)
        canon = self.topo_verts[topo].clone()
        canon[:, : self.num_sphere_verts] = torch.where(
            (topo == 0).view(N, 1, 1), proc, canon[:, : self.num_sphere_verts]
        )
        faces = self.topo_faces[topo]  # (N, F, 3), -1 pads
        texture_names = torch.tensor([TEXTURES.index(t) for t in cfg.textures], device=dev)
        colors = solid_texture(
            canon, texture_names[torch.randint(len(cfg.textures), (N,), generator=gen, device=dev)], gen
        )
        parts = part_labels(canon, self.part_centres)  # (N, Vmax)
        world = canon @ random_rotation(N, gen, device=dev).transpose(1, 2)
        return world, faces, colors, parts, topo

    def category_meshes(self, object_seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The category's objects of these seeds as ``generate`` draws them, in their canonical
        (world) frame: vertices ``[N, V, 3]`` and faces ``[F, 3]`` (the true shapes to score against)."""
        if not self.config.category:
            raise ValueError("category_meshes(): this simulator draws no category (source.category is empty)")
        generators = [torch.Generator().manual_seed(int(s)) for s in object_seeds.tolist()]
        world, _ = category.vehicle(self.sphere_dirs, generators, tuple(self.config.textures))
        faces = self.topo_faces[0]
        return world, faces[(faces >= 0).all(1)]

    def _category_objects(self, gen, N: int):
        """``N`` objects of ``config.category`` in their canonical frame (world = object frame),
        each a function of its object seed, drawn from ``config.object_seeds``."""
        cfg, dev = self.config, self.device
        first, end = category.resolve_range(cfg.object_seeds)
        seeds = first + torch.randint(end - first, (N,), generator=gen, device=dev)
        generators = [torch.Generator().manual_seed(s) for s in seeds.tolist()]
        world, colors = category.vehicle(self.sphere_dirs, generators, tuple(cfg.textures))
        topo = torch.zeros(N, dtype=torch.long, device=dev)
        parts = self.category_parts.expand(N, -1)
        return world, self.topo_faces[topo], colors, parts, topo, seeds

    def _sequence_cameras(self, gen, N: int, V: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Azimuth, elevation (radians) and distance ``[N * V]`` of ``N`` random walks of ``V`` views."""
        cfg, dev = self.config, self.device
        deg = math.pi / 180
        s, d = cfg.view_step_deg, cfg.view_step_distance
        az = [self._range(gen, N, cfg.azimuth_deg, deg)]
        el = [self._range(gen, N, cfg.elevation_deg, deg)]
        dist = [self._range(gen, N, cfg.distance)]
        steps = 2 * torch.rand(V - 1, 3, N, generator=gen, device=dev) - 1  # U(-1, 1): azimuth, elevation, distance
        for step in steps:
            az.append(az[-1] + step[0] * s * deg)
            el.append((el[-1] + step[1] * s / 2 * deg).clamp(cfg.elevation_deg[0] * deg, cfg.elevation_deg[1] * deg))
            dist.append((dist[-1] + step[2] * d).clamp(*cfg.distance))
        return tuple(torch.stack(x, dim=1).reshape(N * V) for x in (az, el, dist))  # group-major

    def _background(self, gen, B: int, res: int) -> torch.Tensor:
        dev = self.device
        c1, c2 = torch.rand(B, 1, 1, 3, generator=gen, device=dev), torch.rand(B, 1, 1, 3, generator=gen, device=dev)
        grid = cameras.pixel_grid(res, res, device=dev) / res  # (H, W, 2) in [0, 1]
        gradient = grid[..., 1].view(1, res, res, 1)
        freq = 2 + 6 * torch.rand(B, 1, 1, 2, generator=gen, device=dev)
        noise = 0.5 + 0.25 * (
            torch.sin(freq[..., :1] * BACKGROUND_RADIANS_PER_CYCLE * grid[..., :1])
            + torch.sin(freq[..., 1:] * BACKGROUND_RADIANS_PER_CYCLE * grid[..., 1:])
        )
        kind = torch.randint(len(BACKGROUNDS), (B, 1, 1, 1), generator=gen, device=dev)
        mix = torch.where(kind == 0, torch.zeros_like(noise), torch.where(kind == 1, gradient.expand_as(noise), noise))
        return c1 + (c2 - c1) * mix

    def _backdrop(self, gen, R, t, K, N: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour ``[B, H, W, 3]`` and z-depth ``[B, H, W]`` of the backdrop sphere seen by each camera."""
        res, dev, radius = self.config.resolution, self.device, self.config.backdrop_radius
        B = R.shape[0]
        rays = cameras.pixel_to_camera(
            cameras.pixel_grid(res, res, device=dev).expand(B, res, res, 2), torch.ones(B, res, res, device=dev), K
        ).reshape(B, -1, 3)  # camera frame, z = 1
        rays = rays @ R  # world frame (row form of R^T d)
        centre = -(R.transpose(1, 2) @ t.unsqueeze(-1))[..., 0]  # camera centres, world frame
        # |centre + s·ray| = radius with the camera inside: the positive root; s is the hit's z-depth.
        a, b = rays.square().sum(-1), (centre.unsqueeze(1) * rays).sum(-1)
        c = centre.square().sum(-1, keepdim=True) - radius**2
        s = (-b + (b.square() - a * c).sqrt()) / a
        points = centre.unsqueeze(1) + s.unsqueeze(-1) * rays  # (B, HW, 3)
        # Per object: 8 sinusoids over the sphere (3-18 radians per radius; phases per channel).
        waves = F.normalize(torch.randn(N, 3, 8, generator=gen, device=dev), dim=1)
        waves = waves * (1 + 5 * torch.rand(N, 1, 8, generator=gen, device=dev)) * (3 / radius)
        phases = 2 * math.pi * torch.rand(N, 1, 8, 3, generator=gen, device=dev)
        amplitude = 0.04 + 0.08 * torch.rand(N, 1, 8, 3, generator=gen, device=dev)
        waves, phases, amplitude = (x.repeat_interleave(V, dim=0) for x in (waves, phases, amplitude))
        colour = 0.5 + (amplitude * torch.sin((points @ waves).unsqueeze(-1) + phases)).sum(2)
        return colour.clamp(0, 1).view(B, res, res, 3), s.view(B, res, res)

    def _camera_effects(self, gen, image: torch.Tensor) -> torch.Tensor:
        """Colour cast, vignetting, blur and sensor noise of a cheap real camera; ``[B, 3, H, W]``."""
        B, _, H, W = image.shape
        dev = self.device
        image = image * (0.85 + 0.3 * torch.rand(B, 3, 1, 1, generator=gen, device=dev))
        grid = cameras.pixel_grid(H, W, device=dev)
        r2 = (((grid - grid.new_tensor([W / 2, H / 2])) / max(H, W)) ** 2).sum(-1) * 2  # 0 centre, 1 corners
        image = image * (1 - (0.1 + 0.3 * torch.rand(B, 1, 1, 1, generator=gen, device=dev)) * r2)
        sigma = (0.4 + 0.6 * torch.rand(B, 1, generator=gen, device=dev)).expand(B, 2)
        image = kornia.filters.gaussian_blur2d(image, (5, 5), sigma)
        noise_std = 0.01 + 0.02 * torch.rand(B, 1, 1, 1, generator=gen, device=dev)
        return image + noise_std * torch.randn(image.shape, generator=gen, device=dev)

    def to_columns(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> dict[str, Any]:
        """The batch's schema fields as ``[B, ...]`` columns on the CPU (what ``to_samples`` gives
        per sample), so a producer builds a chunk without a per-sample loop."""
        cpu = {k: v.detach().cpu() for k, v in batch.items()}
        meta = self.meta  # once per batch: its config digest costs about as much as the tar
        columns: dict[str, Any] = {
            "__key__": list(keys),
            "rgb.png": (cpu["rgb"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
            "mask.png": cpu["mask"].to(torch.uint8).numpy() * 255,
            "depth.npy": cpu["depth"].numpy(),
            "normal.npy": cpu["normal"].numpy(),
            "seg.png": cpu["seg"].clamp(0, 255).to(torch.uint8).numpy(),
            "kp2d.npy": cpu["kp2d"].numpy(),
            "kp3d.npy": cpu["kp3d"].numpy(),
            "cam.json": {k: cpu[k] for k in ("K", "R", "t", "azimuth", "elevation", "distance")},
            "light.json": {"direction": cpu["light"], "ambient": cpu["ambient"], "diffuse": cpu["diffuse"]},
            "meta.json": [{**meta, "seed": int(seed)} for seed in seeds],
        }
        if self.config.category:  # the object each render shows: proves which seed range it came from
            objects = cpu["object_seed"].tolist()
            columns["meta.json"] = [{**m, "object": o} for m, o in zip(columns["meta.json"], objects, strict=True)]
        if self.config.views > 1:
            columns["group.txt"], columns["view.txt"] = cpu["group"].numpy(), cpu["view"].numpy()
        return columns

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """Schema samples (CPU, ready for ``encode_sample``) from a batch, with their keys and seeds."""
        columns = self.to_columns(batch, seeds, keys)
        dicts = {name: columns.pop(name) for name in ("cam.json", "light.json")}
        samples = []
        for i in range(len(keys)):
            sample = {name: column[i] for name, column in columns.items()}
            sample.update({name: {k: v[i] for k, v in d.items()} for name, d in dicts.items()})
            for name in ("group.txt", "view.txt"):
                if name in sample:
                    sample[name] = int(sample[name])
            samples.append(sample)
        return samples
