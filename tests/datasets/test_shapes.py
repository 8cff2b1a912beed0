"""Seeded shapes, textures and backgrounds keep the values earlier runs streamed."""

from __future__ import annotations

import pytest
import torch

from renderloop.datasets.shapes import PROCEDURAL, TEXTURES, deform, solid_texture
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.renderers.meshes import icosphere

# (|x| sum, x² sum) in float64 of each seeded output below, as first streamed. Replacing a rounded
# 2π (6.28) by math.tau moves each by 2e-5 to 7e-5 relative, over the 1e-5 tolerance.
STREAMED = {
    "extrusion": (206.050695, 116.076298),
    "noise_texture": (257.064683, 161.704529),
    "background": (2028.557615, 1083.501017),
    "rgb": (12265.440256, 7601.668337),
    "depth": (10079.84849, 24930.594099),
}


def _checksum(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.abs().sum()), float(x.square().sum())


def test_extrusions_and_noise_textures_are_unchanged():
    gen = torch.Generator().manual_seed(7)
    verts = deform(icosphere(1).verts, torch.full((4,), PROCEDURAL.index("extrusion")), gen)
    colors = solid_texture(verts, torch.full((4,), TEXTURES.index("noise")), gen)
    assert _checksum(verts) == pytest.approx(STREAMED["extrusion"], rel=1e-5)
    assert _checksum(colors) == pytest.approx(STREAMED["noise_texture"], rel=1e-5)


def test_backgrounds_are_unchanged():
    sim = Simulator(SimulatorConfig(resolution=16, batch_size=4, subdivisions=1))
    background = sim._background(torch.Generator().manual_seed(0), 6, 16)
    assert _checksum(background) == pytest.approx(STREAMED["background"], rel=1e-5)


def test_default_simulator_batch_is_unchanged():
    batch = Simulator(SimulatorConfig(resolution=32, batch_size=8, subdivisions=2)).generate(3, 1)
    for key in ("rgb", "depth"):
        assert _checksum(batch[key]) == pytest.approx(STREAMED[key], rel=1e-5), key
