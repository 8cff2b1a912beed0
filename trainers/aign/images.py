"""AIGN tasks ``superres`` and ``inpaint``: restore images whose degradation P is known.

The input stream holds clean images; the task degrades them (average pooling by ``factor``, or a
random missing box) and G restores them from the degraded image only. The reconstruction is
``‖P(G(x)) − x‖₁`` and D compares G's outputs with a memory of clean images, which may be biased
(e.g. Fashion-MNIST restricted to some classes): the paper's "biased memory" experiment.

For inpainting P keeps the observed pixels only, so the reconstruction says nothing about the box:
whatever G paints there comes from D (or, without D, from how G generalises from copying the kept
pixels). The evaluation therefore scores the box itself, beside trivial fills of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderloop.datasets.sources import build_source, source_config
from renderloop.renderers.degradations import apply_mask, downsample, random_box_masks

from .config import AIGNConfig

log = logging.getLogger(__name__)

__all__ = ["Restorer", "ImageDiscriminator", "ImageTask", "psnr", "Classifier", "train_classifier", "cached_classifier"]


def psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images ``[N, C, H, W]`` in ``[0, 1]``, per image ``[N]``.

    ``region [N, 1, H, W]`` (1: counted) restricts the mean squared error to those pixels, e.g. an
    inpainting box, where a whole-image PSNR would mostly score pixels copied from the input."""
    error = (pred.float() - target.float()).pow(2)
    if region is None:
        mse = error.flatten(1).mean(1)
    else:
        weight = region.float().expand_as(error)
        mse = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)  # plain ReLUs die on mostly-black images (Fashion-MNIST) and G stalls


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


class Restorer(nn.Module):
    """``[B, C_in, H, W]`` degraded image (upsampled, or masked with its mask) → ``[B, 3, H, W]``
    restored image (about ``[0, 1]``; :meth:`ImageTask.composite` clamps it).

    An encoder halves the resolution twice so the receptive field covers missing boxes; ResNet
    blocks work at 1/4 resolution; a decoder with a skip from full resolution restores it.

    ``residual``: the output is the input plus a correction whose layer starts at zero (super-
    resolution: the untrained network is bilinear upsampling, and its reconstruction error is not
    zero there, so it trains from the first step). Otherwise the network paints the whole image
    from a randomly initialised head around mid-grey (inpainting: an identity start would
    reproduce the kept pixels exactly, a zero loss with zero gradient that never trains).
    """

    def __init__(self, in_channels: int, channels: int = 64, blocks: int = 4, residual: bool = True) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), _act())
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 4, 2, 1), _act(), nn.Conv2d(2 * c, 2 * c, 4, 2, 1), _act())
        self.blocks = nn.Sequential(*(_Block(2 * c) for _ in range(blocks)))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1), _act(), nn.ConvTranspose2d(2 * c, c, 4, 2, 1), _act()
        )
        self.head = nn.Conv2d(2 * c, 3, 3, padding=1)
        self.residual = residual
        if residual:
            nn.init.zeros_(self.head.weight)  # starts as the identity on the degraded image
            nn.init.zeros_(self.head.bias)
        else:
            nn.init.constant_(self.head.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A linear output, not a sigmoid: on mostly-black images a sigmoid output saturates at 0
        # and the L1 reconstruction stops sending gradients.
        skip = self.stem(2 * x - 1)
        out = self.head(torch.cat([self.up(self.blocks(self.down(skip))), skip], 1))
        return x[:, :3] + out if self.residual else out


class ImageDiscriminator(nn.Module):
    """``[B, 3, H, W]`` in ``[0, 1]`` → one real-vs-generated logit per image ``[B]``."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        c = [3, *channels]
        layers: list[nn.Module] = []
        for a, b in zip(c, c[1:], strict=False):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(2 * x - 1).mean((2, 3)))[:, 0]


class ImageTask:
    """Inputs and memory: ``rgb.png`` of image streams (Fashion-MNIST, the simulator, folders)."""

    def __init__(self, config: AIGNConfig, device: torch.device) -> None:
        self.config, self.device, self.icfg = config, device, config.image

    def fields(self, role: str) -> list[str]:
        return ["rgb.png"]

    def shuffle(self, role: str) -> bool:
        return True

    def degrade(
        self, clean: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(observation x, G's input)`` of clean images ``[B, 3, H, W]``."""
        if self.config.task == "superres":
            low = downsample(clean, self.icfg.factor)
            return low, F.interpolate(low, size=clean.shape[-2:], mode="bilinear", align_corners=False)
        mask = random_box_masks(
            clean.shape[0],
            tuple(clean.shape[-2:]),
            tuple(self.icfg.box_fraction),
            generator=generator,
            device=clean.device,
        ).to(clean.dtype)
        masked = apply_mask(clean, mask, fill=0.5)
        return torch.cat([masked, mask], 1), torch.cat([masked, mask], 1)

    def render(self, image: torch.Tensor, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P(image) and the observation to compare it with (the kept pixels, for inpainting)."""
        if self.config.task == "superres":
            return downsample(image, self.icfg.factor), observation
        mask = observation[:, 3:]
        return image * mask, observation[:, :3] * mask

    def build(self) -> tuple[nn.Module, nn.Module]:
        superres = self.config.task == "superres"
        G = Restorer(3 if superres else 4, self.icfg.channels, self.icfg.blocks, residual=superres)
        return G, ImageDiscriminator(self.icfg.disc_channels)

    def lift(self, G: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        observation, g_input = self.degrade(batch["rgb"])
        restored = G(g_input)
        rendered, observed = self.render(restored, observation)
        return restored, (rendered - observed).abs().mean(), {}

    def fake(self, restored: torch.Tensor) -> torch.Tensor:
        return restored

    def real(self, batch: dict) -> torch.Tensor:
        return batch["rgb"]

    def composite(self, restored: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        """The output image: inpainting keeps the observed pixels and takes G's in the box."""
        if self.config.task == "superres":
            return restored.clamp(0, 1)
        mask = observation[:, 3:]
        return observation[:, :3] * mask + restored.clamp(0, 1) * (1 - mask)

    @torch.no_grad()
    def images(self, batch: dict, G: nn.Module) -> dict[str, torch.Tensor]:
        clean = batch["input"]["rgb"][:16]
        observation, g_input = self.degrade(clean)
        return {"input": g_input[:, :3], "restored": self.composite(G(g_input), observation), "truth": clean}

    @torch.no_grad()
    def memory_mean(self, count: int, seed: int) -> torch.Tensor:
        """The per-pixel mean ``[1, 3, H, W]`` of ``count`` memory images: the inpainting baseline
        that fills the box with what the memory looks like on average (biased memory included)."""
        name, scfg = source_config(self.config.data["memory"])
        source = build_source(name, scfg, self.device)
        total, seen = 0.0, 0
        for i in range(math.ceil(count / scfg.batch_size)):
            rgb = source.generate(seed, i)["rgb"].float()[: count - seen]
            total, seen = total + rgb.sum(0, keepdim=True), seen + len(rgb)
        return (total / seen).cpu()

    @torch.no_grad()
    def evaluate(self, G: nn.Module, out_dir: Any) -> dict[str, float]:
        """PSNR of G's outputs and of trivial restorations of the same test images.

        Super-resolution: ``psnr_db``, against ``baseline_psnr_db`` (bilinear upsampling, G's input)
        and ``baseline_bicubic_psnr_db``. Inpainting: ``psnr_box_db`` over the missing box (the main
        number: elsewhere the output copies the input), ``psnr_db`` over the whole image, each also
        for the grey fill G sees (``baseline_``) and the memory's mean image (``baseline_mean_``).
        With classes to measure, the share of outputs (and of the baselines) a classifier puts in them.
        """
        from .figures import save_rows

        ecfg, task = self.config.evaluation, self.config.task
        name, scfg = source_config(ecfg.data or self.config.data["input"])
        source = build_source(name, scfg, self.device)
        generator = torch.Generator().manual_seed(ecfg.seed)
        mean_image = self.memory_mean(ecfg.samples, ecfg.seed) if task == "inpaint" else None
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "inputs", "outputs", "trivial", "box")}
        for i in range(math.ceil(ecfg.samples / scfg.batch_size)):
            truth = source.generate(ecfg.seed, i)["rgb"].float().to(self.device)
            observation, g_input = self.degrade(truth, generator)
            parts["clean"].append(truth.cpu())
            parts["inputs"].append(g_input[:, :3].cpu())
            parts["outputs"].append(self.composite(G(g_input), observation).cpu())
            if task == "superres":
                up = F.interpolate(observation, size=truth.shape[-2:], mode="bicubic", align_corners=False)
                parts["trivial"].append(up.clamp(0, 1).cpu())
            else:
                fill = mean_image.to(truth.device).expand_as(truth)
                parts["trivial"].append(self.composite(fill, observation).cpu())
                parts["box"].append(1 - observation[:, 3:].cpu())
        clean, inputs, outputs, trivial = (
            torch.cat(parts[k])[: ecfg.samples] for k in ("clean", "inputs", "outputs", "trivial")
        )
        results = {"psnr_db": psnr(outputs, clean).mean().item(), "baseline_psnr_db": psnr(inputs, clean).mean().item()}
        if task == "superres":
            results["baseline_bicubic_psnr_db"] = psnr(trivial, clean).mean().item()
        else:
            box = torch.cat(parts["box"])[: ecfg.samples]
            results = {
                "psnr_box_db": psnr(outputs, clean, box).mean().item(),
                **results,
                "baseline_psnr_box_db": psnr(inputs, clean, box).mean().item(),
                "baseline_mean_psnr_box_db": psnr(trivial, clean, box).mean().item(),
                "baseline_mean_psnr_db": psnr(trivial, clean).mean().item(),
            }
        results["samples"] = float(len(clean))
        classes = ecfg.attribute_classes or _memory_classes(self.config)
        if name == "fashion_mnist" and classes:
            classifier = cached_classifier(
                scfg, ecfg.classifier_steps, ecfg.seed, self.device, ecfg.classifier_cache_dir
            )
            results["classifier_test_accuracy"] = _accuracy(classifier, scfg, ecfg.seed, self.device)
            share = lambda x: _share(classifier, x, classes, self.device)  # noqa: E731
            results["attribute_share_outputs"] = share(outputs)
            results["attribute_share_truth"] = share(clean)
            results["attribute_share_baseline"] = share(inputs)
            if task == "inpaint":
                results["attribute_share_baseline_mean"] = share(trivial)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_rows([inputs, outputs, clean], out / f"{task}.png", ecfg.figure_rows)
        return results


def _memory_classes(config: AIGNConfig) -> list[int] | None:
    name, scfg = source_config(config.data["memory"])
    return list(scfg.classes) if name == "fashion_mnist" and scfg.classes else None


class Classifier(nn.Module):
    """A small CNN: ``[B, 3, H, W]`` → ``[B, classes]`` logits."""

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _split(scfg, split: str, device: torch.device):
    """The whole split on ``device`` (loaded once), so batches are made where the classifier runs."""
    from dataclasses import replace

    from renderloop.datasets.fashion_mnist import FashionMNIST

    return FashionMNIST(replace(scfg, split=split, classes=None, index_range=(0.0, 1.0), batch_size=256), device)


@torch.enable_grad()
def train_classifier(scfg, steps: int, seed: int, device: torch.device) -> Classifier:
    """A Fashion-MNIST classifier on the train split at the source's resolution (Adam, cosine)."""
    torch.manual_seed(seed)
    source = _split(scfg, "train", device)
    model = Classifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        batch = source.generate(seed, step)
        loss = F.cross_entropy(model(batch["rgb"]), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def cached_classifier(scfg, steps: int, seed: int, device: torch.device, cache_dir: str) -> Classifier:
    """``train_classifier``'s model, trained once and then loaded from ``cache_dir`` (empty: no cache).

    The file is named by the data (folder, file sizes), resolution, steps and seed. Concurrent
    evaluations wait on a lock for the first to train it; a cache that cannot be written or read
    costs a training, never the evaluation."""
    if not cache_dir:
        return train_classifier(scfg, steps, seed, device)
    data = Path(scfg.root).resolve()
    identity = {
        "data": str(data), "sizes": sorted((p.name, p.stat().st_size) for p in data.glob("*-ubyte*")),
        "resolution": scfg.resolution, "steps": steps, "seed": seed, "classifier": 1,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"fashion-mnist-{key}.pt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 - held by the with below
    except OSError as err:
        log.warning("classifier cache %s is unusable (%s): training without it", path.parent, err)
        return train_classifier(scfg, steps, seed, device)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                model = Classifier()
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return model.to(device).eval()
            except Exception as err:  # noqa: BLE001 - any unreadable file is trained again
                log.warning("cached classifier %s is unreadable (%s): training it again", path, err)
        model = train_classifier(scfg, steps, seed, device)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        except OSError as err:
            log.warning("could not cache the classifier in %s (%s)", path, err)
            tmp.unlink(missing_ok=True)
        return model


@torch.no_grad()
def _accuracy(model: Classifier, scfg, seed: int, device: torch.device) -> float:
    source = _split(scfg, "test", device)
    right = total = 0
    for i in range(8):
        batch = source.generate(seed + 1, i)
        right += (model(batch["rgb"]).argmax(-1) == batch["label"]).sum().item()
        total += len(batch["label"])
    return right / total


@torch.no_grad()
def _share(model: Classifier, images: torch.Tensor, classes: list[int], device: torch.device) -> float:
    predicted = torch.cat([model(chunk.to(device)).argmax(-1).cpu() for chunk in images.split(256)])
    return torch.isin(predicted, torch.tensor(classes)).float().mean().item()
