"""GAN2Shape (``method=gan2shape``): 3D shape from a 2D GAN's images, by exploring their latent space.

Pan et al., "Do 2D GANs Know 3D Shape?" (ICLR 2021). A stream of GAN images with their latents w
(``source=stylegan2``) trains an Unsup3d-style decomposition (canonical depth, albedo, view and
light networks, ``models/decomposition.py``) rendered by the depth-map renderer, and a latent
offset encoder E, in rounds of three steps after an initialization:

- ``init``: the depth network fits (mean square error) an ellipsoid placed by the oracle
  segmenter's object mask.
- ``albedo`` (step 1): the albedo reconstructs the image with depth, view and light held fixed.
  Each of these two phases updates only its own network (``Phase.trains``), as the paper's
  per-network optimizers do: the others take no gradient, so Adam's decay and momentum leave them.
- ``offset`` (step 2): pseudo samples (the image re-rendered under random views and lights) are
  projected into the GAN: E predicts Δw from each (through G's last ``offset_depth`` mapping
  layers), and G(w + Δw) learns to match it, with
  ``lam_offset`` times the mean square of Δw keeping the offsets small.
- ``shape`` (step 3): depth and albedo of the image, with each projected sample's own view and
  light, reconstruct the projected samples and the image (plus the curvature of the depth and
  of its diffuse shading and, with ``symmetry``, the flipped reconstruction).

The paper runs this per image: ``instances.count = N`` does so for N held-out renders inverted
into W, each with its own copy of the networks (``models/instances.py``), trained side by side.
By default it runs jointly on the stream (the paper's joint mode). Either way the
projected samples of step 3 come from the frozen E and from a frozen copy of the decomposition
as it stood when the shape phase began (as the paper's, collected after step 2, come from the
networks of steps 1-2): targets made from the depth being trained would follow it. Per image they
are collected as the paper does, ``instances.collect`` per image when step 3 begins, and drawn
from at every step; jointly, where each streamed image is seen once, they are made afresh for each
batch. With ``use_mask`` the pseudo and projected
samples' losses count only the object (the oracle's mask of the image, carried into their
views). Perceptual terms use the oracle segmenter's features, the declared substitute for
ImageNet features, in every row alike. ``mode=unsup3d`` is
the paper's baseline: the same networks trained on reconstruction (and, with ``symmetry``, the
flip term that defines Unsup3d) alone;
``mode=supervised`` the ceiling: the depth network trained on renders of the GAN's objects with
their true depth (a scale-invariant log-depth loss, depth in the input view).
``renderloop eval`` scores depth on held-out simulator renders with ``depth_scores``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.config import ConfigError, check_number, check_roles
from renderloop.datasets import category
from renderloop.datasets.sources import build_source, image_size, source_config
from renderloop.models.decomposition import Decomposition, Encoder, ellipsoid_depth
from renderloop.models.instances import Instances
from renderloop.models.stylegan2.io import load_generator
from renderloop.models.stylegan2.latents import MappingTail
from renderloop.renderers.backends import config_backend, get_backend
from renderloop.renderers.cameras import fov_intrinsics
from renderloop.renderers.depth_map import (
    DepthRender,
    render_depth_map,
    reproject,
    sample_into_canonical,
    view_about_pivot,
)

from .depth_scores import interior, log_depth_variance, mad, side
from .method import Method, ModelSpec, Phase
from .oracle import Oracle

__all__ = ["GAN2ShapeConfig", "GAN2Shape"]

log = logging.getLogger(__name__)

MODES = ("gan2shape", "unsup3d", "supervised")
PRIORS = ("ellipsoid", "flat")
PROJECTED_VIEWS = ("predicted", "pseudo")


def _shown_normals(rendered: DepthRender) -> torch.Tensor:
    """Normals as colours in [0, 1]: x right, y up and z towards the viewer."""
    facing = torch.tensor([1.0, -1.0, -1.0], device=rendered.normals.device).view(1, 3, 1, 1)
    return (rendered.normals * facing + 1) / 2


@dataclass
class GAN2ShapeEvalConfig:
    samples: int = 128
    """Held-out renders (the ``test`` object range) scored against their true depth."""
    batch_size: int = 32
    frontal_deg: float = 30.0
    """The near-frontal split: views within this azimuth of the object's front."""
    average_samples: int = 256
    """Renders of the ``oracle`` range whose mean true depth is the ``average`` row."""
    seed: int = 0
    figure_rows: int = 4
    invert: int = 16
    """Test renders inverted into W (the paper's input path for held-out images): the inversion's
    PSNR and the depth scores of the method's prediction from the GAN's reconstruction."""
    invert_steps: int = 300

    def __post_init__(self) -> None:
        for key in ("samples", "batch_size", "average_samples", "figure_rows", "invert_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.evaluation.{key}", f"must be >= 1; got {getattr(self, key)}")
        check_number("method.evaluation.frontal_deg", self.frontal_deg, above=0, at_most=180)


@dataclass
class GAN2ShapeInstancesConfig:
    count: int = 0
    """0: joint training on the GAN's stream. ``N > 0``: the paper's per-image optimization (its car
    setting, ``joint_train: false`` with the weights reset for every image) on ``N`` held-out test
    renders inverted into W: each image gets its own copy of every network, all started from the
    same weights, and is trained on alone; the evaluation scores these ``N`` renders."""
    first: int = 0
    """The first test render taken (the evaluation's test set, in order): runs over consecutive
    slices cover it."""
    samples: int = 8
    """Pseudo and projected samples per image and step (the official batch of 8 for cars)."""
    collect: int = 800
    """Projected samples collected per image when each step 3 begins, from which its every step
    draws ``samples``, as the official code collects them after step 2 (100 batches of 8 for
    cars); 0: a fresh projection through the GAN at every step."""
    invert_steps: int = 300

    def __post_init__(self) -> None:
        if min(self.count, self.first, self.collect) < 0 or self.samples < 1 or self.invert_steps < 1:
            raise ConfigError("method.instances", "needs count, first and collect >= 0, samples >= 1 and "
                              f"invert_steps >= 1; got {self.count}, {self.first}, {self.collect}, {self.samples}, "
                              f"{self.invert_steps}")  # fmt: skip


@dataclass
class GAN2ShapeConfig:
    data: dict[str, Any] = field(default_factory=dict)
    """Data role ``images``: a ``stylegan2`` source (one view, constant noise), whose checkpoint is
    also the generator that step 2 projects into; for ``mode=supervised``, simulator renders of
    the category's ``gan`` objects (``method=gan2shape_supervised``)."""
    renders: dict[str, Any] = field(default_factory=dict)
    """The simulator category the GAN learned (``simulator_vehicle``), for the evaluation."""
    oracle_run: str = "???"
    """A ``method=oracle`` run: its segmenter masks the initialization and gives the features."""
    mode: str = "gan2shape"
    width: int = 32
    zdim: int = 256
    fov_deg: float = 40.0
    """The category's camera (the paper's 10° is a guess for distant real objects)."""
    min_depth: float = 0.7
    max_depth: float = 1.4
    """The canonical depth's range: a ratio of 2, an object about its own size away as in the
    renders (the paper's [0.9, 1.1] fits distant objects; SIDE forgives scale, not ratio)."""
    prior: str = "ellipsoid"
    """The initial depth: ``ellipsoid`` (placed by the oracle's mask) or ``flat`` (the ablation)."""
    prior_depth: tuple[float, float] = (0.85, 1.15)
    """The ellipsoid's nearest depth (its centre) and the depth of the plane it bulges from."""
    rotation_deg: float = 60.0
    translation: float = 0.1
    pseudo_yaw_deg: float = 45.0
    pseudo_pitch_deg: float = 15.0
    """Pseudo samples' views: yaw and pitch uniform within ± these."""
    projected_view: str = "predicted"
    """The view step 3 draws the image's depth from to match a projected sample: ``predicted``
    (the view network on the sample, the paper's) or ``pseudo`` (the view its pseudo sample was
    drawn at, which the projection keeps). The paper optimizes one image at a time, so every
    sample shares that image's canonical frame; trained jointly, each image's frame is its own
    view, and a car seen at 30° is a sample turned 30° from one image and the canonical view of
    another, contradictory targets for a view network. Per image too, an untrained view network
    guesses the canonical view for turned samples, and step 3 bends the depth to explain them."""
    init_steps: int = 1000
    rounds: int = 4
    first_round: tuple[int, int, int] = (700, 700, 600)
    later_rounds: tuple[int, int, int] = (200, 500, 400)
    """Steps 1-3 of the first and of every later round (the paper's per-image counts for cars)."""
    lr: float = 1e-4
    weight_decay: float = 5e-4
    """An L2 term in every network's gradient, as the paper's Adam has (not AdamW's decay)."""
    lam_perc: float = 0.5
    lam_smooth: float = 0.01
    lam_offset: float = 0.01
    lam_projected: float = 1.0
    """Step 3's weight of the projected samples (the paper's 1). 0 is the control: step 3 then fits
    the image alone, so whatever the method gains over it comes from the GAN's samples; step 2, whose
    offsets nothing then reads, keeps its steps but draws and projects nothing."""
    offset_depth: int = 2
    """Mapping layers that E's output passes through to become Δw (the paper's ``F1_d``, 2 for
    cars): E moves the hidden code there, so w + Δw stays near what the mapping makes; 0: Δw in W."""
    use_mask: bool = True
    """Count only the object in the pseudo and projected samples' losses: the oracle's mask of the
    image, carried into their views (the paper's car setting); false: every drawn pixel."""
    symmetry: bool = False
    """The flip term. Off, as in the paper's car config: the category is mirror-symmetric, but a
    depth map flipped in the image is its mirror image only in views along its axis, and the
    renders' views go all round."""
    lam_flip: float = 0.5
    renderer_backend: str = "torch"
    """The depth-map renderer's rasterizer (``renderers.backends``)."""
    instances: GAN2ShapeInstancesConfig = field(default_factory=GAN2ShapeInstancesConfig)
    evaluation: GAN2ShapeEvalConfig = field(default_factory=GAN2ShapeEvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.evaluation, dict):
            self.evaluation = GAN2ShapeEvalConfig(**self.evaluation)
        if isinstance(self.instances, dict):
            self.instances = GAN2ShapeInstancesConfig(**self.instances)
        if self.mode not in MODES:
            raise ConfigError("method.mode", f"must be one of {MODES}; got {self.mode!r}")
        if self.instances.count and self.mode != "gan2shape":
            raise ConfigError("method.instances.count", f"per-image optimization is GAN2Shape's (mode=gan2shape); "
                              f"got mode={self.mode}")  # fmt: skip
        check_roles(self.data, ("images",))
        name, images = source_config(self.data["images"])
        if self.mode == "supervised":
            if name != "simulator" or not images.category:
                raise ConfigError("method.data.images", f"mode=supervised learns from simulator renders; got {name}")
            category.check_disjoint({"training": tuple(images.object_seeds), "test": category.SEED_RANGES["test"]})
        elif name != "stylegan2" or images.views != 1 or images.noise_mode != "const" or images.resolution:
            needs = "a stylegan2 source with views=1, noise_mode=const and resolution=0"
            raise ConfigError("method.data.images", f"needs {needs} (step 2 regenerates its images); got {name}")
        else:
            category.check_generator_held_out(images.checkpoint, "method.data.images.checkpoint")
        rname, renders = source_config(self.renders)
        if rname != "simulator" or not renders.category:
            raise ConfigError("method.renders", f"needs a simulator category (simulator_vehicle); got {rname}")
        config_backend("method.renderer_backend", self.renderer_backend)
        if self.projected_view not in PROJECTED_VIEWS:
            raise ConfigError("method.projected_view", f"must be one of {PROJECTED_VIEWS}; got {self.projected_view!r}")
        if self.prior not in PRIORS:
            raise ConfigError("method.prior", f"must be one of {PRIORS}; got {self.prior!r}")
        if not 0 < self.min_depth < self.prior_depth[0] < self.prior_depth[1] <= self.max_depth:
            raise ConfigError("method.prior_depth", "needs min_depth < near < far <= max_depth; got "
                              f"{self.min_depth}, {tuple(self.prior_depth)}, {self.max_depth}")  # fmt: skip
        for key in ("first_round", "later_rounds"):
            if len(getattr(self, key)) != 3 or min(getattr(self, key)) < 1:
                raise ConfigError(f"method.{key}", f"must be three step counts >= 1; got {getattr(self, key)}")
        if self.rounds < 1 or self.init_steps < 0 or self.width < 4 or self.zdim < 1:
            raise ConfigError("method", "needs rounds >= 1, init_steps >= 0, width >= 4 and zdim >= 1")
        for key in ("fov_deg", "lr", "rotation_deg", "pseudo_yaw_deg", "pseudo_pitch_deg"):
            check_number(f"method.{key}", getattr(self, key), above=0)
        for key in ("lam_perc", "lam_smooth", "lam_offset", "lam_projected", "lam_flip", "translation", "weight_decay"):
            check_number(f"method.{key}", getattr(self, key), at_least=0)

    @property
    def schedule_steps(self) -> int:
        """Engine steps of the schedule; the last shape step then runs on to ``engine.max_steps``."""
        return self.init_steps + sum(self.first_round) + (self.rounds - 1) * sum(self.later_rounds)


def _curvature(field: torch.Tensor) -> torch.Tensor:
    """Mean absolute second differences of ``field [B, H, W]`` (d²/dx², d²/dy² and both mixed
    ones): zero on any plane, so a slope costs nothing and only bending does."""
    dx, dy = field[:, :, 1:] - field[:, :, :-1], field[:, 1:] - field[:, :-1]
    terms = (dx[:, :, 1:] - dx[:, :, :-1], dx[:, 1:] - dx[:, :-1], dy[:, :, 1:] - dy[:, :, :-1], dy[:, 1:] - dy[:, :-1])
    return sum(t.abs().mean() for t in terms)


def _diffuse_shading(rendered: DepthRender, direction: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: the canonical surface's Lambert term ``max(0, n · l)``."""
    return (rendered.normals * direction[:, :, None, None]).sum(1).clamp_min(0)


class OffsetEncoder(nn.Module):
    """E: an image → ``Δw`` through the last ``offset_depth`` layers of G's mapping (``MappingTail``).
    Its last layer starts at zero: no offset at the start, so G(w) is the image itself."""

    def __init__(self, resolution: int, tail: MappingTail, width: int, zdim: int) -> None:
        super().__init__()
        self.encoder, self.tail = Encoder(resolution, tail.hidden_dim, width, zdim), tail
        nn.init.zeros_(self.encoder.net[-1].weight)
        nn.init.zeros_(self.encoder.net[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.tail(self.encoder(image))


class GAN2Shape(Method):
    """Decomposition networks (``net``) and the latent offset encoder (``E``) on a GAN's images."""

    name = "gan2shape"

    def __init__(self, config: GAN2ShapeConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.source = source_config(config.data["images"])[1]
        self.oracle = Oracle.load(config.oracle_run, str(device))
        self.raster = get_backend(config.renderer_backend)
        self._round_net: Decomposition | None = None  # step 3's source of pseudo samples
        self._round_start: int | None = None
        self._round_saved: tuple[int, dict] | None = None
        self._pool_seed: int | None = None  # per image: the seed the round's projected samples are collected with
        self._pool: tuple[Decomposition, dict[str, torch.Tensor]] | None = None  # (its round's net, the samples)
        self._instances: dict[str, torch.Tensor] | None = None  # per-image mode: the images and their latents

    @property
    def _groups(self) -> int:
        """Images trained apart: the losses are means over each image's own samples, then over images."""
        return max(self.config.instances.count, 1)

    @classmethod
    def data_roles(cls, config: GAN2ShapeConfig) -> dict[str, Any]:
        return {} if config.instances.count else dict(config.data)  # per image: held-out renders, inverted

    @classmethod
    def check_engine(cls, config: GAN2ShapeConfig, engine: Any) -> None:
        if engine.precision == "bf16":
            raise ConfigError("engine.precision", "the renderer runs on fp32 inputs: use fp32 or bf16_autocast")
        if config.instances.count and engine.grad_clip:
            raise ConfigError("engine.grad_clip", "per-image optimization needs 0: a norm over all images' "
                              f"gradients would tie the images together; got {engine.grad_clip}")  # fmt: skip
        if config.mode == "gan2shape" and engine.max_steps < config.schedule_steps:
            log.warning("engine.max_steps=%d stops inside the schedule of %d steps (init, then %d rounds of "
                        "steps 1-3): a later run with engine.max_steps >= %d continues it",
                        engine.max_steps, config.schedule_steps, config.rounds, config.schedule_steps)  # fmt: skip

    def fields(self, role: str) -> list[str]:
        return ["rgb.png", "depth.npy", "seg.png"] if self.config.mode == "supervised" else ["rgb.png", "latent.npy"]

    def state_dict(self) -> dict[str, Any]:
        state = {"oracle_calls": dict(self.oracle.calls)}  # training's calls reach the evaluation's report
        if self._round_net is not None:  # a resumed shape phase keeps its pseudo samples' source
            state["round_net"] = (self._round_start, self._round_net.state_dict())
            state["pool_seed"] = self._pool_seed
        if self._instances is not None:  # a resume does not invert again
            state["instances"] = {k: v.cpu() for k, v in self._instances.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.oracle.calls.update(state["oracle_calls"])
        self._round_saved = state.get("round_net")
        self._pool_seed = state.get("pool_seed")
        if "instances" in state:
            self._instances = {k: v.to(self.device) for k, v in state["instances"].items()}

    def _frozen_round_net(self, phase: Phase, net: Decomposition) -> Decomposition:
        """The decomposition as it stood when this shape phase began, frozen: step 3's pseudo
        samples come from it."""
        if self._round_start != phase.start:
            self._round_net = copy.deepcopy(net).eval().requires_grad_(False)
            if self._round_saved is not None and self._round_saved[0] == phase.start:
                self._round_net.load_state_dict(self._round_saved[1])  # the pool's seed was loaded with it
            else:
                self._pool_seed = None
            if self._collects and self._pool_seed is None:
                self._pool_seed = int(torch.randint(2**62, ()))
            self._round_start, self._round_saved = phase.start, None
        return self._round_net

    def _generator(self) -> nn.Module:
        return load_generator(self.source.checkpoint, self.source.network)

    @cached_property
    def resolution(self) -> int:
        return image_size(self.source)

    def _decomposition(self) -> Decomposition:
        """The four networks; per image, each as ``Instances`` (a copy per image, started alike)."""
        cfg = self.config
        net = Decomposition(self.resolution, cfg.width, cfg.zdim, cfg.min_depth, cfg.max_depth, cfg.rotation_deg,
                            cfg.translation)  # fmt: skip
        if cfg.instances.count:
            for name in ("depth_net", "albedo_net", "view_net", "light_net"):
                setattr(net, name, Instances(getattr(net, name), cfg.instances.count))
        return net

    def build(self) -> dict[str, ModelSpec]:
        cfg = self.config
        res = self.resolution
        net = self._decomposition()
        adam = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "decoupled_weight_decay": False}
        if cfg.mode != "gan2shape":
            return {"net": ModelSpec(net, **adam)}
        G = self._generator().requires_grad_(False)
        if cfg.offset_depth > G.mapping.num_layers:
            raise ConfigError("method.offset_depth", f"the generator's mapping has {G.mapping.num_layers} layers; "
                              f"got {cfg.offset_depth}")  # fmt: skip
        E = OffsetEncoder(res, MappingTail(G, cfg.offset_depth), cfg.width, cfg.zdim)
        if cfg.instances.count:
            E.encoder = Instances(E.encoder, cfg.instances.count)  # G's mapping layers stay shared
        return {"net": ModelSpec(net, **adam), "E": ModelSpec(E, **adam), "G": ModelSpec(G, trainable=False)}

    def phases(self) -> list[Phase]:
        cfg = self.config
        if cfg.mode == "unsup3d":
            return [Phase("shape", "net", ("images",))]
        if cfg.mode == "supervised":
            return [Phase("depth", "net", ("images",))]
        reads = tuple(self.data_roles(cfg))
        init = Phase("init", "net", reads, stop=cfg.init_steps, trains=("depth_net",))
        phases = [init] if cfg.init_steps else []
        start = cfg.init_steps
        for r in range(cfg.rounds):
            for (name, model, trains), steps in zip(
                (("albedo", "net", ("albedo_net",)), ("offset", "E", ()), ("shape", "net", ())),
                cfg.first_round if r == 0 else cfg.later_rounds,
                strict=True,
            ):
                phases.append(Phase(name, model, reads, start=start, stop=start + steps, trains=trains))
                start += steps
        phases[-1] = replace(phases[-1], stop=None)  # the last shape step runs on to engine.max_steps
        return phases

    # -- rendering and losses -----------------------------------------------------------------

    def _K(self, image: torch.Tensor) -> torch.Tensor:
        H, W = image.shape[2:]
        return fov_intrinsics(self.config.fov_deg, H, W, batch=len(image), device=image.device)

    def _rigid(self, view: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, t)`` of a predicted or sampled view, turning about the depth range's middle."""
        return view_about_pivot(*view, pivot_depth=(self.config.min_depth + self.config.max_depth) / 2)

    def _render(self, image, depth, albedo, light, view) -> DepthRender:
        ambient, diffuse, direction = light
        return render_depth_map(depth, albedo, direction, self._K(image), *self._rigid(view), ambient, diffuse,
                                self.raster)  # fmt: skip

    def _perceptual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.oracle.features(a), self.oracle.features(b)
        return sum(F.l1_loss(x, y) for x, y in zip(fa, fb, strict=True)) / len(fa)

    def _reconstruction(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """L1 over the pixels ``weight [B, 1, H, W]`` counts (each image's samples apart, per image),
        plus the perceptual term on ``image`` there completed by the target elsewhere. The L1 is
        taken as on images in [-1, 1], as the official code does, so the paper's weights of the
        regularizers keep their balance against it."""
        per_image = 2 * ((image - target).abs() * weight).unflatten(0, (self._groups, -1)).flatten(1).sum(1)
        counted = weight.unflatten(0, (self._groups, -1)).flatten(1).sum(1) * target.shape[1]
        l1 = (per_image / counted.clamp_min(1)).mean()
        composite = image * weight + (1 - weight) * target
        return l1 + self.config.lam_perc * self._perceptual(composite, target)

    def _random_views(self, light: tuple) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple]:
        """A pseudo sample's view (yaw, pitch within the prior) and light: the image's own light
        with diffuse raised by r ~ U(-0.1, 0.6) and ambient lowered by 0.6 r (the official
        code's default), from a direction with x ~ U(-1, 1) as there and y ~ U(-0.8, 0.8), where
        the official code draws y from U(-0.2, 0.8) in its own axis convention: light from
        above and below alike, not checked against that convention."""
        cfg, (ambient, diffuse, _) = self.config, light
        n, device = len(ambient), ambient.device
        limits = torch.tensor([cfg.pseudo_pitch_deg, cfg.pseudo_yaw_deg, 0.0], device=device).deg2rad()
        angles = (torch.rand(n, 3, device=device) * 2 - 1) * limits
        r = torch.empty(n, device=device).uniform_(-0.1, 0.6)
        xy = (torch.rand(n, 2, device=device) * 2 - 1) * torch.tensor([1.0, 0.8], device=device)
        direction = F.normalize(torch.cat([xy, -torch.ones(n, 1, device=device)], 1), dim=1)
        return (angles, torch.zeros(n, 3, device=device)), (ambient - 0.6 * r, diffuse + r, direction)

    @torch.no_grad()
    def _pseudo(self, net: Decomposition, image: torch.Tensor) -> tuple[DepthRender, torch.Tensor, tuple]:
        """The image re-rendered from a random view under a random light, clipped to what an
        image can hold (the GAN cannot make brighter than white), the pixels its losses count
        ``[B, 1, H, W]`` (where it is drawn and, with ``use_mask``, where the oracle's object mask
        of the image, carried through the canonical frame, lands in that view), and the view."""
        cfg = self.config
        depth, view, light = net.depth(image), *self._random_views(net.light(image))
        rendered = self._render(image, depth, net.albedo(image), light, view)
        counted = rendered.mask
        if cfg.use_mask:
            K, seen = self._K(image), self.oracle.mask(image)[:, None].float()
            canonical = sample_into_canonical(seen, depth, K, *self._rigid(net.view(image)))
            moved, _, _ = reproject(canonical, depth, K, *self._rigid(view), self.raster)
            counted = counted * moved
        return replace(rendered, image=rendered.image.clamp(0, 1)), counted, view

    def _project(self, E: nn.Module, G: nn.Module, pseudo: torch.Tensor, w: torch.Tensor):
        """G's image for ``w + Δw`` in [0, 1], ``Δw = E(pseudo)``, and the offsets."""
        offset = E(pseudo)
        image = G.synthesis(w + offset[:, None].to(w.dtype), noise_mode="const")
        return (image.float() + 1) / 2, offset

    @property
    def _collects(self) -> bool:
        return bool(self.config.instances.count and self.config.instances.collect)

    @torch.no_grad()
    def _pseudo_projected(self, image: torch.Tensor, w: torch.Tensor, nets: Mapping[str, nn.Module],
                          net: Decomposition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:  # fmt: skip
        """Pseudo samples of ``image`` (one per row) from the decomposition ``net``, and what the GAN
        makes of them: the pseudo images, their projections, the pixels they count and their views."""
        pseudo, counted, view = self._pseudo(net, image)
        projected, _ = self._project(nets["E"], nets["G"], pseudo.image + (1 - pseudo.mask) * image, w)
        return pseudo.image, projected, counted, view

    @torch.no_grad()
    def _projections(self, image: torch.Tensor, w: torch.Tensor, nets: Mapping[str, nn.Module],
                     round_net: Decomposition) -> tuple[torch.Tensor, torch.Tensor, tuple]:  # fmt: skip
        """Step 3's projected samples, ``_samples`` rows per image: drawn from the round's pool
        (``instances.collect``), collected at its first step with the seed the round began with (so a
        resumed round collects the same pool), or projected afresh."""
        if not self._collects:
            return self._pseudo_projected(self._samples(image), self._samples(w), nets, round_net)[1:]
        inst = self.config.instances
        if self._pool is None or self._pool[0] is not round_net:
            devices = [image.device] if image.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self._pool_seed)
                drawn = [self._pseudo_projected(self._samples(image), self._samples(w), nets, round_net)
                         for _ in range(-(-inst.collect // inst.samples))]  # fmt: skip
            columns = zip(*[(projected, counted, *view) for _, projected, counted, view in drawn], strict=True)
            pooled = [torch.cat([x.unflatten(0, (inst.count, inst.samples)) for x in c], 1) for c in columns]
            self._pool = (round_net, dict(zip(("projected", "counted", "angles", "translation"), pooled, strict=True)))
        pool = self._pool[1]
        count, size = pool["projected"].shape[:2]
        pick = torch.randint(size, (count, inst.samples), device=image.device)
        taken = {k: v[torch.arange(count, device=image.device)[:, None], pick].flatten(0, 1) for k, v in pool.items()}
        return taken["projected"], taken["counted"], (taken["angles"], taken["translation"])

    def held_samples(self, phase: Phase) -> int:
        """Per image: the renders a step fits, and in steps 2 and 3 each one's projected samples too."""
        inst = self.config.instances
        projected = inst.count * inst.samples if self.config.lam_projected else 0
        return {"offset": projected, "shape": inst.count + projected}.get(phase.name, inst.count)

    def step(self, phase: Phase, batch: dict, nets: Mapping[str, nn.Module], gain: int) -> dict[str, torch.Tensor]:
        cfg, net = self.config, nets["net"]
        if phase.name == "depth":
            renders = batch["images"]
            variance = log_depth_variance(
                net.depth(renders["rgb"].float()), renders["depth"].float(), renders["seg"] > 0
            )
            loss = variance.mean()  # SIDE²: scale-invariant, as the depth of a single image is
            return {"loss": loss, "side": variance.detach().sqrt().mean()}
        if cfg.instances.count:
            image, w = self._instance_images(nets["G"])
        else:
            image, w = batch["images"]["rgb"].float(), batch["images"].get("latent")
        out = self._losses(phase, image, w, nets)
        # Per image, the loss is each image's own summed over images: every copy's gradient is its image's alone.
        return {**out, "loss": out["loss"] * self._groups}

    def _samples(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's row repeated for its pseudo samples (``instances.samples`` per image; jointly, one)."""
        return x.repeat_interleave(self.config.instances.samples, 0) if self.config.instances.count else x

    def _instance_images(self, G: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image mode's images: test renders ``[first, first + count)`` and their latents, inverted
        into W once (the paper's input path for held-out images)."""
        from renderloop.models.stylegan2.inversion import invert

        if self._instances is None:
            inst = self.config.instances
            rgb = self._test_renders("test", inst.first + inst.count)["rgb"][inst.first :]
            with torch.enable_grad():
                inverted = invert(G, rgb, steps=inst.invert_steps)
            self._instances = {"rgb": rgb, "latent": inverted.ws.detach(), "psnr": inverted.psnr}
            log.info("per-image mode: %d test renders inverted into W, PSNR %.1f dB", len(rgb), inverted.psnr.mean())
        return self._instances["rgb"], self._instances["latent"]

    def _losses(self, phase: Phase, image: torch.Tensor, w: torch.Tensor | None,
                nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:  # fmt: skip
        cfg, net = self.config, nets["net"]
        if phase.name == "init":
            if cfg.prior == "ellipsoid":
                prior = ellipsoid_depth(self.oracle.mask(image), *cfg.prior_depth)
            else:  # the level a constant raw map reaches (the depth head centres it)
                prior = torch.full_like(image[:, 0], (cfg.min_depth + cfg.max_depth) / 2)
            loss = F.mse_loss(net.depth(image), prior)  # as the official initialization
            return {"loss": loss, "prior_mse": loss.detach()}
        if phase.name == "albedo":
            view, light = (tuple(v.detach() for v in x) for x in (net.view(image), net.light(image)))
            rendered = self._render(image, net.depth(image).detach(), net.albedo(image), light, view)
            loss = self._reconstruction(rendered.image, image, rendered.mask)
            return {"loss": loss, "reconstruction": loss.detach()}
        if phase.name == "offset":
            if not cfg.lam_projected:  # the control reads no projection: E's steps keep the schedule, not its cost
                return {"loss": sum(p.sum() for p in nets["E"].parameters() if p.requires_grad) * 0.0}
            image, w = self._samples(image), self._samples(w)
            pseudo, counted, _ = self._pseudo(net, image)
            projected, offset = self._project(nets["E"], nets["G"], pseudo.image + (1 - pseudo.mask) * image, w)
            fit = self._reconstruction(projected, pseudo.image, counted)
            penalty = offset.float().square().mean()  # per latent dimension, as the paper's λ assumes
            return {"loss": fit + cfg.lam_offset * penalty, "projection": fit.detach(), "offset_sq": penalty.detach()}
        return self._shape(image, w, nets, self._frozen_round_net(phase, net) if cfg.mode == "gan2shape" else net)

    def _shape(self, image: torch.Tensor, w: torch.Tensor, nets: Mapping[str, nn.Module],
               round_net: Decomposition) -> dict[str, torch.Tensor]:  # fmt: skip
        cfg, net = self.config, nets["net"]
        depth, albedo = net.depth(image), net.albedo(image)
        view, light = net.view(image), net.light(image)
        rendered = self._render(image, depth, albedo, light, view)
        own = self._reconstruction(rendered.image, image, rendered.mask)
        smoothness = _curvature(depth) + _curvature(_diffuse_shading(rendered, light[2]))
        losses = {"reconstruction": own.detach(), "smoothness": smoothness.detach(),
                  "view_deg": torch.rad2deg(view[0].detach()).abs().mean()}  # fmt: skip
        loss = own + cfg.lam_smooth * smoothness
        if cfg.symmetry:
            flipped = self._render(image, depth.flip(2), albedo.flip(3), light, view)
            flip = self._reconstruction(flipped.image, image, flipped.mask)
            loss, losses["flip"] = loss + cfg.lam_flip * flip, flip.detach()
        if cfg.mode == "gan2shape" and cfg.lam_projected:
            projected, counted, pseudo_view = self._projections(image, w, nets, round_net)
            image, depth, albedo = (self._samples(x) for x in (image, depth, albedo))
            guess = net.view(projected) if cfg.projected_view == "predicted" else None
            rendered = self._render(image, depth, albedo, net.light(projected), pseudo_view if guess is None else guess)
            samples = self._reconstruction(rendered.image, projected, rendered.mask * counted)
            loss, losses["projected"] = loss + cfg.lam_projected * samples, samples.detach()
            with torch.no_grad():  # how far the view network is from the views the samples were drawn at
                turn = (net.view(projected) if guess is None else guess)[0].detach()
                losses["projected_view_error_deg"] = torch.rad2deg(turn - pseudo_view[0]).abs().mean()
            # Near 0, the projected samples are the image again: step 3 gets no new views to learn from.
            losses["projected_vs_image"] = (projected - image).abs().mean()
        return {"loss": loss, **losses}

    # -- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def images(self, batch: dict, nets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """TensorBoard's grids, as the evaluation figure's columns: the inputs, their depth and
        normals, the reconstruction, the shape turned ±30° and relit, and (GAN2Shape, where the
        images' latents are at hand) a pseudo sample and its projection through the GAN."""
        if self.config.instances.count:  # every copy sees its own image: all go in, eight are shown
            if self._instances is None:
                return {}
            image, w = self._instances["rgb"], self._instances["latent"]
        else:
            image, w = batch["images"]["rgb"].float()[:8], batch["images"].get("latent")
            w = None if w is None else w[:8]
        net = nets["net"]
        depth = net.depth(image)
        rendered = self._render(image, depth, net.albedo(image), net.light(image), net.view(image))
        shown = (depth - self.config.min_depth) / (self.config.max_depth - self.config.min_depth)
        turned_left, turned_right, lit_left, lit_right = self._turned_and_relit(net, image)
        grids = {"input": image, "depth": shown[:, None].expand(-1, 3, -1, -1), "normals": _shown_normals(rendered),
                 "reconstruction": rendered.image, "turned_left": turned_left, "turned_right": turned_right,
                 "lit_left": lit_left, "lit_right": lit_right}  # fmt: skip
        if self.config.mode == "gan2shape" and w is not None and "E" in nets:
            grids["pseudo"], grids["projected"] = self._projected(nets, image, w)
        return {name: grid[:8] for name, grid in grids.items()}

    def _test_renders(self, object_seeds: str, count: int) -> dict[str, torch.Tensor]:
        ev = self.config.evaluation
        name, cfg = source_config(self.config.renders)
        cfg = replace(cfg, object_seeds=object_seeds, resolution=self.resolution, batch_size=ev.batch_size)
        source = build_source(name, cfg, self.device)
        keys = ("rgb", "depth", "mask", "K", "azimuth")
        batches = [source.generate(ev.seed, i) for i in range(-(-count // ev.batch_size))]
        return {k: torch.cat([b[k].float() for b in batches])[:count].to(self.device) for k in keys}

    def _turned_and_relit(self, net: Decomposition, image: torch.Tensor) -> list[torch.Tensor]:
        """The recovered shape turned ±30° about the vertical axis, and lit from the left and the
        right (the figure's last columns)."""
        depth, albedo, light = net.depth(image), net.albedo(image), net.light(image)
        n = len(image)
        views = []
        for yaw in (-30.0, 30.0):
            angles = torch.tensor([0.0, math.radians(yaw), 0.0], device=image.device).expand(n, 3)
            views.append(self._render(image, depth, albedo, light, (angles, torch.zeros_like(angles))).image)
        front = (torch.zeros(n, 3, device=image.device), torch.zeros(n, 3, device=image.device))
        for x in (-0.8, 0.8):
            direction = F.normalize(torch.tensor([x, 0.0, -1.0], device=image.device), dim=0).expand(n, 3)
            views.append(self._render(image, depth, albedo, (light[0], light[1], direction), front).canonical_image)
        return views

    def _predict(self, net: Decomposition, image: torch.Tensor, mask: torch.Tensor) -> tuple[DepthRender, torch.Tensor]:
        """The predicted depth seen in the input view, and the pixels it is scored on."""
        predicted = self._render(image, net.depth(image), net.albedo(image), net.light(image), net.view(image))
        if self.config.mode == "supervised":  # depth in the input view, seen through the renders' camera
            predicted = replace(predicted, depth=net.depth(image), mask=torch.ones_like(predicted.mask))
        return predicted, mask & (predicted.mask[:, 0] > 0) & (predicted.depth > 0)

    def _trajectory(self, test: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """SIDE and MAD (all views) of every snapshot the run kept (``engine.snapshot_every``),
        each with the phase that had just run: which step of the schedule moves the depth, and
        which way."""
        snapshots = sorted((self.run_dir / "snapshots").glob("step*/net.pt")) if self.run_dir else []
        phases, points = self.phases(), []
        net = self._decomposition().to(self.device).eval()
        for weights in snapshots:  # a folder without net.pt is an export cut short
            net.load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
            step = int(weights.parent.name.removeprefix("step"))
            predicted, valid = self._predict(net, test["rgb"], test["mask"].bool())
            keep = interior(valid).flatten(1).any(1)
            s, m = self._scores(predicted.depth, test, valid, keep, own_camera=self.config.mode != "supervised")
            phase = [p.name for p in phases if p.start < step][-1]  # the phase of the snapshot's last step
            points.append({"step": step, "phase": phase, "side": s.mean().item(), "mad": m.mean().item(),
                           "scored_images": int(keep.sum())})  # fmt: skip
        return points

    def _scores(self, depth: torch.Tensor, test: dict[str, torch.Tensor], valid: torch.Tensor, keep: torch.Tensor,
                own_camera: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per-image SIDE (×10⁻²) and MAD of ``depth`` on the ``keep`` renders; ``own_camera``: the
        depth is unprojected through the method's camera (``fov_deg``), else through the renders'."""
        K = (self._K(test["rgb"]) if own_camera else test["K"])[keep]
        true = test["depth"][keep]
        return side(depth[keep], true, valid[keep]) * 100, mad(depth[keep], true, valid[keep], K, test["K"][keep])

    def _on_inversions(self, nets: Mapping[str, nn.Module],
                       test: dict[str, torch.Tensor]) -> tuple[dict[str, float], torch.Tensor]:  # fmt: skip
        """Invert the first ``evaluation.invert`` renders into W, predict depth from G's
        reconstructions, and score it against the renders' true depth; also the latents."""
        from renderloop.models.stylegan2.inversion import invert

        n, net = min(self.config.evaluation.invert, len(test["rgb"])), nets["net"]
        G = nets["G"] if "G" in nets else self._generator().to(self.device).eval()
        with torch.enable_grad():
            inverted = invert(G, test["rgb"][:n], steps=self.config.evaluation.invert_steps)
        image = inverted.images
        predicted = self._render(image, net.depth(image), net.albedo(image), net.light(image), net.view(image))
        valid = test["mask"][:n].bool() & (predicted.mask[:, 0] > 0) & (predicted.depth > 0)
        keep = interior(valid).flatten(1).any(1)  # the scores need an interior pixel
        report = {"inverted_images": float(n), "inversion_psnr": inverted.psnr.mean().item()}
        if keep.any():
            true, K = test["depth"][:n][keep], test["K"][:n][keep]
            row = f"{self.config.mode}_on_inversions"
            report[f"{row}/side"] = (side(predicted.depth[keep], true, valid[keep]) * 100).mean().item()
            report[f"{row}/mad"] = mad(predicted.depth[keep], true, valid[keep], self._K(image)[keep], K).mean().item()
        return report, inverted.ws

    def _projected(self, nets: Mapping[str, nn.Module], image: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        """A pseudo sample of each image and what the GAN makes of it (the figure's last columns)."""
        pseudo, projected, _, _ = self._pseudo_projected(image, w, nets, nets["net"])
        return [pseudo, projected.clamp(0, 1)]

    @torch.no_grad()
    def evaluate(self, nets: Mapping[str, nn.Module], out_dir: Any) -> dict[str, float]:
        """Scores and ``gan2shape_eval.json``; the figure's rows are test renders: input, true and
        predicted depth, predicted normals, reconstruction, turned ±30°, lit from the left and the
        right, and for GAN2Shape a pseudo sample and its projection through the GAN."""
        from renderloop.images import image_grid, save_png

        cfg, ev, net, inst = self.config, self.config.evaluation, nets["net"], self.config.instances
        if inst.count:  # the renders the copies were trained on, one each
            test = {k: v[inst.first :] for k, v in self._test_renders("test", inst.first + inst.count).items()}
        else:
            test = self._test_renders("test", ev.samples)
        category.check_disjoint({"average": category.SEED_RANGES["oracle"], "test": category.SEED_RANGES["test"]})
        train = self._test_renders("oracle", ev.average_samples)
        image, mask = test["rgb"], test["mask"].bool()
        predicted, valid = self._predict(net, image, mask)
        covered = (train["depth"] * train["mask"]).sum(0) / train["mask"].sum(0).clamp_min(1)
        average = torch.where(train["mask"].sum(0) > 0, covered, covered[covered > 0].mean())
        rows = {
            cfg.mode: predicted.depth,
            "ellipsoid": ellipsoid_depth(self.oracle.mask(image), *cfg.prior_depth),
            "average": average.expand_as(test["depth"]),
            "flat": torch.ones_like(test["depth"]),
        }
        azimuth = test["azimuth"].rad2deg() % 360
        frontal = torch.minimum(azimuth, 360 - azimuth) <= ev.frontal_deg
        report: dict[str, Any] = {"test_images": float(len(image)), "frontal_images": float(frontal.sum())}
        keep = interior(valid).flatten(1).any(1)  # the scores need an interior pixel
        # Each scored render's index in the test set, and every row's scores on it: runs that scored
        # different slices (per-image mode) are compared on the renders they share.
        first = cfg.instances.first if cfg.instances.count else 0
        per_image: dict[str, list] = {"index": (keep.nonzero()[:, 0] + first).tolist(),
                                      "frontal": frontal[keep].tolist()}  # fmt: skip
        for row, depth in rows.items():  # the method's depth is seen through its camera, the others the renders'
            s, m = self._scores(depth, test, valid, keep, own_camera=row in ("gan2shape", "unsup3d"))
            report[f"{row}/side"], report[f"{row}/mad"] = s.mean().item(), m.mean().item()
            per_image[f"{row}/side"], per_image[f"{row}/mad"] = s.tolist(), m.tolist()
            if frontal[keep].any():
                f = frontal[keep]
                report[f"{row}/frontal_side"], report[f"{row}/frontal_mad"] = s[f].mean().item(), m[f].mean().item()
        report["scored_images"] = float(keep.sum())
        report["per_image"] = per_image
        if trajectory := self._trajectory(test):
            report["trajectory"] = trajectory
        latents = None  # of the first renders, for the figure's projected samples
        if inst.count and self._instances is not None:
            report["inversion_psnr"] = self._instances["psnr"].mean().item()
            latents = self._instances["latent"]
        elif cfg.mode != "supervised" and ev.invert > 0:
            scores, latents = self._on_inversions(nets, test)
            report |= scores
        report["oracle_segment_calls"] = float(self.oracle.calls["segment"])
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gan2shape_eval.json").write_text(json.dumps(report, indent=2) + "\n")
        n = min(ev.figure_rows, len(image) if latents is None else len(latents))

        def shade(depth: torch.Tensor) -> torch.Tensor:
            lo, hi = depth.flatten(1).quantile(0.02, 1), depth.flatten(1).quantile(0.98, 1)
            return ((depth - lo[:, None, None]) / (hi - lo).clamp_min(1e-6)[:, None, None]).clamp(0, 1)

        columns = [image[:n], shade(torch.where(mask, test["depth"], test["depth"][mask].max()))[:n, None],
                   shade(predicted.depth)[:n, None] * valid[:n, None], _shown_normals(predicted)[:n],
                   predicted.image[:n], *(v[:n] for v in self._turned_and_relit(net, image))]  # fmt: skip
        if cfg.mode == "gan2shape" and latents is not None:  # all rows per image: each copy sees its own
            shown = image if inst.count else image[:n]
            columns += [v[:n] for v in self._projected(nets, shown, latents[: len(shown)])]
        grid = torch.stack([c.expand(-1, 3, -1, -1).cpu() for c in columns], 1).flatten(0, 1)
        save_png(image_grid(grid, columns=len(columns)), out / "gan2shape_eval.png")
        return {k: v for k, v in report.items() if not isinstance(v, list | dict)}  # lists stay in the JSON
