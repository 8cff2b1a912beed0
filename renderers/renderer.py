"""``MeshRenderer``: the module a source or method builds once per process and reuses per batch.

It chains the functional core: world → camera → clip, rasterize, interpolate normals and colours,
Lambertian shading, and (optionally) a soft silhouette for mask gradients. With
``compile: true`` the rasterizer's dense kernels and the shading stage are ``torch.compile``d
(the data-dependent candidate binning stays eager) and Inductor's and Triton's on-disk caches go to
``compile_cache_dir``; ``warmup()`` pays the compilation before the first real batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from renderloop.config import MAX_IMAGE_SIDE, ConfigError, check_number

from .antialias import antialias
from .backends import config_backend, get_backend
from .cameras import camera_to_clip, fov_intrinsics, orbit_camera, world_to_camera
from .meshes import icosphere
from .ops import Fragments, gather_faces, interpolate, make_context
from .shading import face_normals, lambertian, unit3, vertex_normals

__all__ = ["RendererConfig", "RenderOutput", "MeshRenderer", "configure_compile_cache"]

# The warm-up cameras orbit a full turn so the batch holds varied views; no output depends on them.
WARMUP_ORBIT = math.tau


@dataclass
class RendererConfig:
    """Settings of a :class:`MeshRenderer` (Hydra group ``renderer``)."""

    height: int = 128
    """Output image height in pixels."""
    width: int = 128
    """Output image width in pixels."""
    backend: str = "torch"
    """Rasterizer backend name (see ``renderers.backends``)."""
    cull_backfaces: bool = False
    """Drop faces seen from behind; off by default so open meshes render from both sides."""
    normals: str = "vertex"
    """Shading normals: ``vertex`` (interpolated, smooth) or ``face`` (flat)."""
    near: float = 0.01
    """Near plane distance; faces with a corner in front of it are culled."""
    far: float = 100.0
    """Far plane distance."""
    soft_mask: bool = False
    """Also compute a soft silhouette (gradients of the mask w.r.t. vertex positions)."""
    sigma: float = 1.0
    """Soft silhouette softness in squared pixels."""
    antialias: bool = False
    """Blend the image (and the hard mask, unless ``soft_mask``) across mesh outlines
    (``antialias.antialias``): antialiased edges, and gradients of both w.r.t. vertex positions."""
    background: float = 0.0
    """Grey level of uncovered pixels."""
    compile: bool = False
    """``torch.compile`` (dynamic shapes) the shading stage and the rasterizer's dense kernels:
    candidate keys, fragment maths and soft-silhouette terms; candidate binning stays eager (on
    CUDA the z-buffer pass is one Triton kernel, compiled or not). Kernels compile on first use, so
    call ``MeshRenderer.warmup`` to pay that before real batches."""
    compile_cache_dir: str = "~/.cache/renderloop/compile"
    """Where ``compile`` keeps Inductor's and Triton's caches, so later processes reuse the kernels
    (put it on shared storage on a cluster). Building a compiling renderer sets ``TORCHINDUCTOR_CACHE_DIR``
    and ``TRITON_CACHE_DIR`` for the whole process, unless they are already set (also by any earlier
    compilation in the process), in which case this path is ignored."""
    warmup_batch: int = 0
    """Default batch size of ``MeshRenderer.warmup`` (nothing runs it at build time); 0 skips it."""

    def __post_init__(self) -> None:
        for key in ("height", "width"):
            if not 0 < getattr(self, key) <= MAX_IMAGE_SIDE:  # larger buffers fail in the allocator mid-run
                raise ConfigError(f"renderer.{key}", f"must be 1 to {MAX_IMAGE_SIDE} pixels; got {getattr(self, key)}")
        check_number("renderer.near", self.near, above=0)
        check_number("renderer.far", self.far, above=0)
        if not self.near < self.far:
            raise ConfigError("renderer.near", f"must satisfy 0 < near < far; got near={self.near}, far={self.far}")
        check_number("renderer.sigma", self.sigma, above=0)
        check_number("renderer.background", self.background, at_least=0, at_most=1, note="a grey level")
        if self.normals not in ("vertex", "face"):
            raise ConfigError("renderer.normals", f"must be 'vertex' or 'face'; got {self.normals!r}")
        if self.warmup_batch < 0:
            raise ConfigError("renderer.warmup_batch", f"must be >= 0; got {self.warmup_batch}")
        config_backend("renderer.backend", self.backend)


@dataclass(frozen=True)
class RenderOutput:
    """Images from :class:`MeshRenderer`, channels-last.

    Attributes:
        rgb: ``[B, H, W, C]`` shaded colour over the background.
        mask: ``[B, H, W]`` float coverage: hard, soft when ``soft_mask`` is on, else antialiased
            when ``antialias`` is.
        depth: ``[B, H, W]`` camera depth, 0 in the background.
        normals: ``[B, H, W, 3]`` unit camera-frame normals, 0 in the background.
        fragments: the rasterizer output.
    """

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    fragments: Fragments


def configure_compile_cache(path: str | os.PathLike) -> Path:
    """Point Inductor's and Triton's caches at ``path`` (unless already set) and return it."""
    root = Path(os.path.expanduser(str(path)))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    return root


def _shade(
    frags: Fragments,
    normals: torch.Tensor,
    colors: torch.Tensor,
    light_dir: torch.Tensor,
    ambient: torch.Tensor,
    diffuse: torch.Tensor,
    background: float,
    flat: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense shading of visible fragments (the stage that ``compile`` fuses). ``normals`` are
    per face ``[B, F, 3]`` when ``flat``, else per vertex ``[B, V, 3]``."""
    if flat:
        n, albedo = unit3(gather_faces(normals, frags)), interpolate(colors, frags)
    else:
        both = interpolate(torch.cat([normals, colors], dim=-1), frags)  # one gather for both attributes
        n, albedo = unit3(both[..., :3]), both[..., 3:]
    m = frags.mask.unsqueeze(-1).to(albedo.dtype)
    rgb = lambertian(n, albedo, light_dir, ambient, diffuse) * m + background * (1 - m)
    return rgb, n * m


class MeshRenderer(torch.nn.Module):
    """Render batched triangle meshes with per-vertex colours under a directional light."""

    def __init__(self, config: RendererConfig | None = None) -> None:
        super().__init__()
        self.config = config or RendererConfig()
        self.backend = get_backend(self.config.backend)
        self._shade = _shade
        if self.config.compile:
            configure_compile_cache(self.config.compile_cache_dir)
            self._shade = torch.compile(_shade, dynamic=True)
        self.raster_context = make_context(compile=self.config.compile)

    @property
    def resolution(self) -> tuple[int, int]:
        return self.config.height, self.config.width

    def forward(
        self,
        verts: torch.Tensor,
        faces: torch.Tensor,
        colors: torch.Tensor,
        R: torch.Tensor,
        t: torch.Tensor,
        K: torch.Tensor,
        light_dir: torch.Tensor,
        ambient: torch.Tensor | float = 0.3,
        diffuse: torch.Tensor | float = 0.7,
    ) -> RenderOutput:
        """Render.

        Args:
            verts: ``[B, V, 3]`` world-frame positions.
            faces: ``[F, 3]`` shared or ``[B, F, 3]`` per item (``-1`` pads).
            colors: ``[B, V, C]`` or ``[V, C]`` vertex albedo.
            R, t, K: ``[B, 3, 3]``, ``[B, 3]``, ``[B, 3, 3]`` camera (see ``cameras``).
            light_dir: ``[B, 3]`` unit direction towards the light, camera frame.
            ambient, diffuse: floats or ``[B]`` tensors.
        """
        cfg = self.config
        cam = world_to_camera(verts, R, t)
        clip = camera_to_clip(cam, K, self.resolution, cfg.near, cfg.far)
        frags = self.backend.rasterize(
            clip, faces, self.resolution, cull_backfaces=cfg.cull_backfaces, ctx=self.raster_context
        )
        colors = colors.unsqueeze(0).expand(verts.shape[0], -1, -1) if colors.dim() == 2 else colors
        amb = torch.as_tensor(ambient, dtype=verts.dtype, device=verts.device).expand(verts.shape[0])
        dif = torch.as_tensor(diffuse, dtype=verts.dtype, device=verts.device).expand(verts.shape[0])
        flat = cfg.normals == "face"
        normals = face_normals(cam, faces) if flat else vertex_normals(cam, faces)
        rgb, normals = self._shade(frags, normals, colors, light_dir, amb, dif, cfg.background, flat)
        mask = frags.mask.to(verts.dtype)
        if cfg.antialias:
            blended = antialias(torch.cat([rgb, mask.unsqueeze(-1)], dim=-1), frags, clip)
            rgb, mask = blended[..., :-1], blended[..., -1]
        if cfg.soft_mask:
            mask = self.backend.soft_silhouette(clip, faces, self.resolution, sigma=cfg.sigma, ctx=self.raster_context)
        return RenderOutput(rgb=rgb, mask=mask, depth=frags.depth, normals=normals, fragments=frags)

    def warmup(self, batch: int | None = None, device: torch.device | str = "cpu") -> None:
        """Render an icosphere orbit of ``batch`` views (default ``warmup_batch``; 0 does nothing) on
        ``device`` and backpropagate: with ``compile`` on, this compiles the forward and backward
        kernels and fills the on-disk cache; without it, it only warms the allocator."""
        batch = batch or self.config.warmup_batch
        if not batch:
            return
        mesh = icosphere(3).to(device)
        verts = mesh.verts.expand(batch, -1, -1).clone().requires_grad_(True)
        angles = torch.linspace(0, WARMUP_ORBIT, batch, device=device)
        R, t = orbit_camera(angles, torch.full_like(angles, 0.3), torch.full_like(angles, 3.0))
        K = fov_intrinsics(40.0, *self.resolution, batch=batch, device=device)
        light = F.normalize(torch.tensor([[0.3, -0.5, -1.0]], device=device), dim=-1).expand(batch, 3)
        out = self(verts, mesh.faces, torch.ones_like(verts) * 0.7, R, t, K, light)
        (out.rgb.mean() + out.mask.mean()).backward()
