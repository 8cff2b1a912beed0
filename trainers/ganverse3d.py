"""GANverse3D (``method=ganverse3d``): an inverse-graphics network trained on a GAN's multi-view data.

Zhang et al., "Image GANs meet Differentiable Rendering for Inverse Graphics and Interpretable 3D
Neural Rendering" (ICLR 2021). The stream is ``source=stylegan2`` with ``views > 1``: one object
(content) under several view codes drawn from the source's pool, each code labelled with a 30°
azimuth bin by the emulated annotator (``trainers/view_codes.py: annotate``, written next to the
codes as JSON). Every code of the pool has a camera that starts at its bin (elevation 0, the
nominal distance) and, with ``optimize_cameras``, is learned with the network (``ViewCameras``:
the mean azimuth and distance stay pinned). Samples whose oracle mask is not one object covering
``min_area`` of the image drop out of the loss with their whole group.

The network (``models/inverse_graphics.py``, drawn by ``renderers/textured.py``) predicts a mesh
and texture from each view; with ``multi_view`` they are rendered into every view of the same
content (the multi-view loss), else into their own view only (the single-view ablation). Loss:
``lam_col`` L1 of colour inside the mask, ``lam_iou`` (1 − soft IoU), ``lam_lap`` Laplacian of the offsets,
``lam_flat`` flatness, ``lam_mov`` offset size, and after ``warmup_steps`` ``lam_percept`` on the
oracle segmenter's features (the declared offline substitute for ImageNet features).
``renderloop eval`` scores silhouettes on held-out renders at their true cameras (the input view
and novel views of the same object) and the shape against the object's true mesh
(``mesh_scores``: scale-normalized Chamfer distance and F-score); on held-out GAN groups, the
silhouettes against the oracle's masks and each drawn code's learned azimuth against the oracle's.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from renderloop.config import ConfigError, check_number, check_roles
from renderloop.datasets import category
from renderloop.datasets.simulator import Simulator
from renderloop.datasets.sources import image_size, source_config
from renderloop.datasets.stylegan2 import StyleGAN2Source, view_pool
from renderloop.models.inverse_graphics import InverseGraphicsNet
from renderloop.models.stylegan2.latents import ViewCodes
from renderloop.renderers.backends import config_backend, get_backend
from renderloop.renderers.cameras import fov_intrinsics, orbit_camera
from renderloop.renderers.meshes import icosphere
from renderloop.renderers.textured import edge_pairs, flatten_loss, laplacian_loss, neighbouring_faces, render_textured

from .gan_quality import one_object
from .mesh_scores import chamfer_fscore, normalized, sample_surface
from .method import Method, ModelSpec, Phase
from .oracle import Oracle
from .scores import angle_error_deg
from .view_codes import AZIMUTH_BINS

__all__ = ["GANverse3DConfig", "GANverse3D", "ViewCameras", "per_code_viewpoints"]


@dataclass
class GANverse3DEvalConfig:
    samples: int = 500
    """Held-out objects (the ``test`` range), each seen from ``1 + novel_views`` true cameras."""
    novel_views: int = 4
    batch_size: int = 20
    seed: int = 0
    gan_groups: int = 32
    """Held-out GAN groups (a producer seed no run uses) scored against the oracle's masks and
    viewpoints: silhouette IoU in every view, and the camera error of each code they draw."""
    shape_points: int = 10000
    """Surface samples per mesh for Chamfer distance and F-score (both scale-normalized). A true
    mesh against new samples of itself scores Chamfer about 0.012 and F 0.90 at 2,000 points,
    0.005 and 1.00 at 10,000: with too few points the sampling floor hides differences between rows."""
    fscore_tau: float = 0.02
    """F-score threshold, as a share of the bounding-box diagonal (at 0.05 the mean shape already
    scores 0.99 on this category)."""
    mean_shape_objects: int = 500
    """Training objects (the ``gan`` range) averaged into the constant mean-shape row (0: none)."""

    def __post_init__(self) -> None:
        if self.mean_shape_objects < 0:
            raise ConfigError("method.evaluation.mean_shape_objects", f"must be >= 0; got {self.mean_shape_objects}")
        for key in ("samples", "novel_views", "batch_size", "shape_points", "gan_groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")
        check_number("method.evaluation.fscore_tau", self.fscore_tau, above=0)


@dataclass
class GANverse3DConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data role ``views``: a ``stylegan2`` source with ``views > 1`` and a ``view_codes`` file (the
    method), or simulator renders of the category with their exact cameras and masks (the ceiling
    with ``views > 1``, the single-view baseline with ``views = 1``)."""
    view_labels: str = ""
    """JSON ``{view code name: azimuth bin}`` written by the annotator with the codes (GAN data);
    every code of the source's pool needs one."""
    renders: dict[str, Any] = field(default_factory=dict)
    """The simulator category, for the evaluation."""
    gan_test: dict[str, Any] = field(default_factory=dict)
    """A ``stylegan2`` source with ``views > 1`` whose held-out groups every row is scored on, each
    image drawn from the oracle's viewpoint of it at the nominal distance: rows trained on renders
    are then scored in the GAN's domain too, with the same cameras as the GAN rows. Empty: the
    GAN rows' own ``data.views``; none for rows trained on renders."""
    oracle_run: str = "???"
    subdivisions: int = 3
    texture_size: int = 64
    width: int = 32
    zdim: int = 256
    max_offset: float = 1.0
    fov_deg: float = 40.0
    distance: float = 2.7
    """The cameras' nominal distance (the annotator gives none)."""
    optimize_cameras: bool = True
    camera_lr_scale: float = 30.0
    """The cameras' learning rate over the network's (``ViewCameras``): 30 lets an elevation
    15° off its label move there in about a hundred updates."""
    multi_view: bool = True
    min_area: float = 0.1
    lr: float = 1e-4
    warmup_steps: int = 1000
    lam_col: float = 20.0
    lam_percept: float = 0.5
    lam_iou: float = 5.0
    lam_lap: float = 5.0
    lam_flat: float = 0.5
    lam_mov: float = 2.5
    sigma: float = 0.15
    """Softness of the silhouette, squared pixels: 0.15 at 64² is DIB-R's default (1/7000 in
    NDC units; scale it with the resolution squared). At 1 px² the soft IoU's optimum draws the
    hard outline inside the target (BENCHMARKS.md, GANverse3D)."""
    renderer_backend: str = "torch"
    """The rasterizer (``renderers.backends``): ours, or an installed nvdiffrast or pytorch3d."""
    evaluation: GANverse3DEvalConfig = field(default_factory=GANverse3DEvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.evaluation, dict):
            self.evaluation = GANverse3DEvalConfig(**self.evaluation)
        check_roles(self.data, ("views",))
        name, views = source_config(self.data["views"])
        if name == "simulator" and views.category:
            category.check_disjoint({"training": tuple(views.object_seeds), "test": category.SEED_RANGES["test"]})
        elif name != "stylegan2" or views.views < 2:
            raise ConfigError("method.data.views", "needs a stylegan2 source with views >= 2 (the annotated "
                              "view_codes) or simulator renders of the category")  # fmt: skip
        elif not self.view_labels:
            raise ConfigError("method.view_labels", "GAN views need their codes' azimuth labels (view_labels.json)")
        else:
            category.check_generator_held_out(views.checkpoint, "method.data.views.checkpoint")
        if self.multi_view and views.views < 2:
            raise ConfigError("method.multi_view", "needs views >= 2 per object; set it false for single views")
        if self.gan_test:
            gname, gan = source_config(self.gan_test)
            if gname != "stylegan2" or gan.views < 2:
                raise ConfigError("method.gan_test", "needs a stylegan2 source with views >= 2 (the view codes)")
            category.check_generator_held_out(gan.checkpoint, "method.gan_test.checkpoint")
        rname, renders = source_config(self.renders)
        if rname != "simulator" or not renders.category:
            raise ConfigError("method.renders", f"needs a simulator category (simulator_vehicle); got {rname}")
        for key in ("subdivisions", "width", "zdim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}", f"must be >= 1; got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise ConfigError("method.warmup_steps", f"must be >= 0; got {self.warmup_steps}")
        for key in ("fov_deg", "distance", "lr", "max_offset", "sigma", "camera_lr_scale"):
            check_number(f"method.{key}", getattr(self, key), above=0)
        config_backend("method.renderer_backend", self.renderer_backend)
        check_number("method.min_area", self.min_area, at_least=0, below=1)
        for key in ("lam_col", "lam_percept", "lam_iou", "lam_lap", "lam_flat", "lam_mov"):
            check_number(f"method.{key}", getattr(self, key), at_least=0)


class ViewCameras(nn.Module):
    """One learnable orbit camera per view code: azimuth, elevation and log-distance.

    Each is its start (``initial``) plus a learned change. Turning every azimuth by one angle turns
    the predicted mesh with them, and scaling every distance scales it: the loss cannot see either,
    so the cameras would drift together. The azimuth and log-distance changes are therefore
    centred over the codes (their mean is zero: the start's mean heading and the nominal distance
    fix the frame); with one code they stay at the start. The elevation change stays free: the
    labels say 0 for every code, and a common tilt is not a rigid motion of the scene, so the
    images can show the true elevation and the cameras should move there together.

    The changes are stored divided by ``lr_scale``: Adam moves a parameter by about the learning
    rate per update whatever its gradient's size, so the cameras move ``lr_scale`` times faster
    than the network's weights (at the network's rate, 1e-4 rad per update, they would stay at
    their labels).
    """

    def __init__(self, azimuths: torch.Tensor, distance: float, lr_scale: float = 1.0) -> None:
        super().__init__()
        self.lr_scale = lr_scale
        azimuths = azimuths.float()
        start = [azimuths, torch.zeros_like(azimuths), torch.full_like(azimuths, math.log(distance))]
        self.register_buffer("initial", torch.stack(start))
        self.stored = nn.Parameter(torch.zeros_like(self.initial))

    def _change(self, row: int, pinned: bool) -> torch.Tensor:
        change = self.stored[row] * self.lr_scale
        return change - change.mean() if pinned else change

    @property
    def azimuth(self) -> torch.Tensor:
        return self.initial[0] + self._change(0, pinned=True)

    @property
    def elevation(self) -> torch.Tensor:
        return self.initial[1] + self._change(1, pinned=False)

    @property
    def log_distance(self) -> torch.Tensor:
        return self.initial[2] + self._change(2, pinned=True)

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return orbit_camera(self.azimuth[view], self.elevation[view], self.log_distance[view].exp())


class GANverse3DModel(nn.Module):
    """The network and the view codes' cameras, trained together (one optimizer)."""

    def __init__(self, net: InverseGraphicsNet, cameras: ViewCameras, optimize_cameras: bool) -> None:
        super().__init__()
        self.net, self.cameras = net, cameras.requires_grad_(optimize_cameras)


class GANverse3D(Method):
    """Mesh and texture from one image, learned from a GAN's view-coded groups."""

    name = "ganverse3d"

    def __init__(self, config: GANverse3DConfig, device: torch.device) -> None:
        super().__init__(config, device)
        name, self.source = source_config(config.data["views"])
        self.exact = name == "simulator"  # renders: true cameras and masks instead of codes and the oracle
        self.view_names: list[str] = []  # the source's pool: one camera per code it may draw
        self.bins = torch.zeros(0, dtype=torch.long)
        if not self.exact:
            self.view_names = view_pool(self.source, ViewCodes.load(self.source.view_codes).names())
            labels = json.loads(Path(config.view_labels).read_text())
            if missing := [n for n in self.view_names if n not in labels]:
                raise ConfigError("method.view_labels", f"labels no azimuth bin for the view codes {missing}")
            self.bins = torch.tensor([int(labels[n]) for n in self.view_names])
        self.oracle = Oracle.load(config.oracle_run, str(device))
        self.raster = get_backend(config.renderer_backend)

    @classmethod
    def check_engine(cls, config: GANverse3DConfig, engine: Any) -> None:
        if engine.precision == "bf16":
            raise ConfigError("engine.precision", "the renderer runs on fp32 inputs: use fp32 or bf16_autocast")

    def fields(self, role: str) -> list[str]:
        groups = ["view.txt", "group.txt"] if self.source.views > 1 else []
        return ["rgb.png", "mask.png", "cam.json", *groups] if self.exact else ["rgb.png", *groups]

    def state_dict(self) -> dict[str, Any]:
        return {"oracle_calls": dict(self.oracle.calls)}  # the mask filter's calls reach the report

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.oracle.calls.update(state["oracle_calls"])

    def shuffle(self, role: str) -> bool:
        """Groups stay whole, in the order the source wrote them; single views (row C's closed
        set, read for many epochs) are shuffled, or every batch would hold the same renders."""
        return self.source.views == 1

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        res = image_size(self.source)
        sphere = icosphere(cfg.subdivisions)
        net = InverseGraphicsNet(res, sphere.verts, sphere.faces, max_offset=cfg.max_offset,
                                 texture_size=cfg.texture_size, width=cfg.width, zdim=cfg.zdim)  # fmt: skip
        self.edges, self.face_pairs = edge_pairs(net.faces), neighbouring_faces(net.faces)
        cameras = ViewCameras(self.bins.float() * (2 * math.pi / AZIMUTH_BINS), cfg.distance, cfg.camera_lr_scale)
        return {"model": ModelSpec(GANverse3DModel(net, cameras, cfg.optimize_cameras), lr=cfg.lr)}

    def phases(self) -> list[Phase]:
        warm = self.config.warmup_steps
        return [Phase("warmup", "model", ("views",), stop=warm), Phase("main", "model", ("views",), start=warm)]

    def _K(self, n: int, res: int) -> torch.Tensor:
        return fov_intrinsics(self.config.fov_deg, res, res, batch=n, device=self.device)

    def _whole_groups(self, mask: torch.Tensor, views: int) -> torch.Tensor:
        """``[N]`` per image, whether every view of its group is one object covering ``min_area``
        (the mask filter, in training and on held-out GAN groups alike)."""
        return one_object(mask, self.config.min_area).view(-1, views).all(1).repeat_interleave(views)

    def _iou_loss(self, soft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inter = (soft * mask).sum((1, 2))
        return 1 - inter / (soft + mask - soft * mask).sum((1, 2)).clamp_min(1e-6)

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        cfg, model = self.config, nets["model"]
        views = batch["views"]
        rgb, V, res = views["rgb"].float(), self.source.views, views["rgb"].shape[-1]
        if V > 1:
            group = views["group"].long().view(-1)
            if len(rgb) % V or not (group.view(-1, V) == group.view(-1, V)[:, :1]).all():
                need = f"engine.data.batch_size a multiple of {V} and an unshuffled stream"
                raise ValueError(f"a batch must hold whole groups of {V} views in order: {need}")
        if self.exact:
            mask, usable = views["mask"].view(rgb.shape[0], res, res) > 0.5, torch.ones(len(rgb), device=rgb.device)
            cam = views["cam"]

            def camera(index: torch.Tensor):
                return cam["R"].float()[index], cam["t"].float()[index], cam["K"].float()[index]
        else:
            mask = self.oracle.mask(rgb)
            usable = self._whole_groups(mask, V).float()
            view, K = views["view"].long().view(-1), self._K(len(rgb), res)

            def camera(index: torch.Tensor):
                return (*model.cameras(view[index]), K[index])

        verts, tex = model.net(rgb)
        own = torch.arange(len(rgb), device=rgb.device)
        # Multi-view: every view of the same content, the sample's own first.
        targets = [(own // V) * V + (own + k) % V for k in range(V if cfg.multi_view else 1)]
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=rgb.device)
        perceptual = phase.name == "main" and cfg.lam_percept
        if perceptual:  # the masked inputs' features, once for every target view (a permutation of them)
            with torch.no_grad():
                reference = self.oracle.features(rgb * mask[:, None].float())
        for index in targets:
            R, t, K = camera(index)
            out = render_textured(verts, model.net.faces, model.net.template, tex, R, t, K, (res, res), cfg.sigma,
                                  backend=self.raster)  # fmt: skip
            m = mask[index].float()
            colour = ((out.image - rgb[index]).abs().mean(1) * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
            iou = self._iou_loss(out.soft, m)
            per_sample = cfg.lam_col * colour + cfg.lam_iou * iou
            if perceptual:
                pairs = zip(self.oracle.features(out.image), reference, strict=True)
                per_sample = per_sample + cfg.lam_percept * sum((a - b[index]).abs().mean((1, 2, 3)) for a, b in pairs)
            total = total + (per_sample * usable).sum() / usable.sum().clamp_min(1) / len(targets)
            key = "iou" if "iou" not in losses else "iou_other_views"
            losses[key] = losses.get(key, 0) + (1 - iou.detach().mean()) / (1 if key == "iou" else len(targets) - 1)
        # The Laplacian of the offsets (DIB-R's): the template sphere's own curvature costs nothing.
        shape = (cfg.lam_lap * laplacian_loss(verts - model.net.template, self.edges.to(rgb.device))
                 + cfg.lam_flat * flatten_loss(verts, model.net.faces, self.face_pairs.to(rgb.device))
                 + cfg.lam_mov * (verts - model.net.template).square().sum(-1).mean())  # fmt: skip
        losses["usable"] = usable.mean()
        return {"loss": total + shape, "shape": shape.detach(), **losses}

    def _gan_test(self) -> Any | None:
        """The source of the held-out GAN groups every row is scored on, if any."""
        if self.config.gan_test:
            return source_config(self.config.gan_test)[1]
        return None if self.exact else self.source

    @torch.no_grad()
    def _oracle_camera_scores(self, model: GANverse3DModel, b: dict, mask: torch.Tensor, V: int) -> dict[str, float]:
        """Each group's prediction from its first image, drawn at the oracle's viewpoint of every
        image of the group at the nominal distance: the same cameras for every row."""
        rgb = b["rgb"]
        azimuth, elevation = self.oracle.viewpoint(rgb)
        R, t = orbit_camera(azimuth, elevation, torch.full_like(azimuth, self.config.distance))
        verts, tex = model.net(rgb[::V])
        res = rgb.shape[-1]
        out = render_textured(verts.repeat_interleave(V, 0), model.net.faces, model.net.template,
                              tex.repeat_interleave(V, 0), R, t, self._K(len(rgb), res), (res, res), sigma=None,
                              backend=self.raster)  # fmt: skip
        iou = _iou(out.mask, mask).view(-1, V)
        return {"gan_oracle_camera_input_view_iou": float(iou[:, 0].mean()),
                "gan_oracle_camera_other_views_iou": float(iou[:, 1:].mean())}  # fmt: skip

    @torch.no_grad()
    def _gan_scores(self, model: GANverse3DModel, b: dict, mask: torch.Tensor) -> dict[str, Any]:
        """The GAN rows' own cameras: IoU with each view code's learned camera, and those cameras'
        error against the oracle's viewpoints of the images that drew them."""
        V = self.source.views
        rgb, view = b["rgb"], b["view"].long()
        verts, tex = model.net(rgb[::V])
        verts, tex = verts.repeat_interleave(V, 0), tex.repeat_interleave(V, 0)
        R, t = model.cameras(view)
        res = rgb.shape[-1]
        out = render_textured(verts, model.net.faces, model.net.template, tex, R, t, self._K(len(rgb), res), (res, res),
                              sigma=None, backend=self.raster)  # fmt: skip
        cams = model.cameras
        seen_azimuth, seen_elevation, used = per_code_viewpoints(*self.oracle.viewpoint(rgb), view, len(cams.azimuth))
        error = angle_error_deg(cams.azimuth, seen_azimuth)  # NaN for a code no group drew
        elevation_error = torch.rad2deg(cams.elevation - seen_elevation).abs()
        return {
            "gan_view_iou": float(_iou(out.mask, mask).mean()),
            "camera_error_deg": float(error[used].mean()),
            "camera_error_per_code_deg": [None if e.isnan() else round(float(e), 1) for e in error],
            "camera_elevation_error_deg": float(elevation_error[used].mean()),
            "camera_codes_scored": float(used.sum()),
        }

    def _prediction_scores(self, batch: dict, true: torch.Tensor, views: int, points: torch.Generator, verts, faces,
                           template, tex) -> tuple[Any, tuple[torch.Tensor, ...]]:  # fmt: skip
        """One prediction per object (``verts [N, Vm, 3]``, its faces, texture template and map)
        drawn at the ``views`` true cameras of each object in ``batch``: the drawing, and per object
        the silhouette IoU of the input view, the mean of the novel views', and the Chamfer
        distance and F-score against the true surface samples ``true``."""
        ev, res = self.config.evaluation, batch["rgb"].shape[-1]
        drawn = render_textured(verts.repeat_interleave(views, 0), faces, template, tex.repeat_interleave(views, 0),
                                batch["R"], batch["t"], batch["K"], (res, res), sigma=None,
                                backend=self.raster)  # fmt: skip
        iou = _iou(drawn.mask, batch["mask"].bool()).view(-1, views)
        pred = normalized(sample_surface(verts, faces, ev.shape_points, points))
        return drawn, (iou[:, 0], iou[:, 1:].mean(1), *chamfer_fscore(pred, true, ev.fscore_tau))

    @torch.no_grad()
    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        from renderloop.images import image_grid, save_png

        ev, model = self.config.evaluation, nets["model"]
        V = 1 + ev.novel_views
        _, renders = source_config(self.config.renders)
        res = image_size(self.source)
        objects = max(1, ev.batch_size // V)
        sim = Simulator(replace(category.held_out(renders), resolution=res, views=V, batch_size=objects * V),
                        self.device)  # fmt: skip
        points = torch.Generator().manual_seed(ev.seed)
        mean_points = torch.Generator().manual_seed(ev.seed + 1)  # its own: the network's samples stay the same
        mean = _mean_shape(sim, ev.mean_shape_objects) if ev.mean_shape_objects else None
        scores: dict[str, list[torch.Tensor]] = defaultdict(list)  # "[mean_shape/]<score>" → per-object values
        score_names = ("input_view_iou", "novel_view_iou", "chamfer", f"fscore@{ev.fscore_tau:g}")
        figure = None
        for index in range(math.ceil(ev.samples / objects)):
            b = sim.generate(ev.seed, index)
            true_verts, true_faces = sim.category_meshes(b["object_seed"][::V])
            true = normalized(sample_surface(true_verts, true_faces, ev.shape_points, points))
            verts, tex = model.net(b["rgb"][::V])
            rows = {"": (points, verts, model.net.faces, model.net.template, tex)}
            if mean is not None:  # the constant prediction: the same mean shape for every input, untextured
                n = len(true_verts)
                grey = torch.full((n, 3, 8, 8), 0.5, device=verts.device)
                rows["mean_shape/"] = (mean_points, mean.expand(n, -1, -1), true_faces, sim.sphere_dirs, grey)
            drawings = {}
            for row, prediction in rows.items():
                drawings[row], values = self._prediction_scores(b, true, V, *prediction)
                for name, value in zip(score_names, values, strict=True):
                    scores[f"{row}{name}"].append(value.cpu())
            if figure is None:
                out = drawings[""]
                k = min(4 * V, len(out.image))
                silhouettes = out.mask[:k, None].expand(-1, 3, -1, -1).float()
                figure = torch.cat([b["rgb"][:k].cpu(), out.image[:k].cpu(), silhouettes.cpu()])
        report = {"test_objects": float(len(torch.cat(scores["input_view_iou"])[: ev.samples]))}
        report |= {key: float(torch.cat(values)[: ev.samples].mean()) for key, values in scores.items()}
        report |= {
            "camera_names": self.view_names,
            "camera_azimuth_deg": [round(float(a), 1) for a in torch.rad2deg(model.cameras.azimuth) % 360],
            "camera_elevation_deg": [round(float(e), 1) for e in torch.rad2deg(model.cameras.elevation)],
            "camera_distance": [round(float(d), 3) for d in model.cameras.log_distance.exp()],
            "labelled_azimuth_deg": [int(b) * 360 // AZIMUTH_BINS for b in self.bins],
        }
        if (gan := self._gan_test()) is not None:
            b = StyleGAN2Source(replace(gan, batch_size=gan.views * ev.gan_groups), self.device).generate(
                HELD_OUT_GAN_SEED, 0
            )
            mask = self.oracle.mask(b["rgb"])
            # As in training, a group with a view that is not one object is not scored: its true mask is broken.
            keep = self._whole_groups(mask, gan.views)
            report["gan_groups_scored"] = float(keep.sum()) / gan.views
            own_cameras = not self.exact and not self.config.gan_test
            if keep.any():
                b = {key: value[keep] for key, value in b.items() if torch.is_tensor(value) and len(value) == len(keep)}
                report |= self._oracle_camera_scores(model, b, mask[keep], gan.views)
                if own_cameras:
                    report |= self._gan_scores(model, b, mask[keep])
            else:  # nothing to score: said so, not left out (a summary over seeds would drop the key)
                names = [*GAN_ORACLE_CAMERA_SCORES, *(GAN_OWN_CAMERA_SCORES if own_cameras else ())]
                report |= dict.fromkeys(names, math.nan)
        report["oracle_calls"] = dict(self.oracle.calls)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(figure, columns=len(figure) // 3), out / "ganverse3d_eval.png")
        (out / "ganverse3d_eval.json").write_text(json.dumps(report, indent=2) + "\n")
        return {k: v for k, v in report.items() if isinstance(v, float)}


HELD_OUT_GAN_SEED = 2**31 - 1
GAN_ORACLE_CAMERA_SCORES = ("gan_oracle_camera_input_view_iou", "gan_oracle_camera_other_views_iou")
GAN_OWN_CAMERA_SCORES = ("gan_view_iou", "camera_error_deg", "camera_elevation_error_deg")
"""The producer seed of the GAN groups the evaluation draws (producers count up from 0)."""


def _mean_shape(sim: Simulator, count: int) -> torch.Tensor:
    """``[1, V, 3]`` the average of the first ``count`` training (``gan`` range) objects' vertices:
    the trivial row's constant prediction (every object shares the sphere's vertex order)."""
    first = category.SEED_RANGES["gan"][0]
    verts, _ = sim.category_meshes(torch.arange(first, first + count))
    return verts.mean(0, keepdim=True).to(sim.sphere_dirs.device)


def per_code_viewpoints(
    azimuth: torch.Tensor, elevation: torch.Tensor, code: torch.Tensor, codes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each of ``codes`` view codes' viewpoint as the oracle sees it, over the samples drawn with
    it (``code``: each sample's index): the circular mean azimuth and the mean elevation (radians,
    ``[codes]``, NaN where no sample drew the code), and which codes were drawn. Groups draw
    different codes, so a code's samples are gathered by its index, not by position in a group."""

    def total(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(codes).index_add_(0, code, values)

    count = torch.bincount(code, minlength=codes)
    drawn = count > 0
    mean_azimuth = torch.atan2(total(azimuth.sin()), total(azimuth.cos())) % (2 * math.pi)
    mean_elevation = total(elevation) / count.clamp_min(1)
    nan = torch.tensor(math.nan, device=azimuth.device)
    return torch.where(drawn, mean_azimuth, nan), torch.where(drawn, mean_elevation, nan), drawn


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
    return inter.float() / union.clamp_min(1).float()
