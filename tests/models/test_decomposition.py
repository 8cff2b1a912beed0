"""The photo-geometric decomposition: every output in the range the depth-map renderer takes, at
any power-of-two size, and the ellipsoid prior with its known values."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.models.decomposition import Decomposition, ellipsoid_depth
from renderloop.renderers.cameras import fov_intrinsics
from renderloop.renderers.depth_map import render_depth_map, view_about_pivot


@pytest.mark.parametrize("resolution", [16, 32])
def test_outputs_are_in_range_and_render(resolution):
    torch.manual_seed(0)
    net = Decomposition(resolution, width=8, zdim=32, min_depth=0.9, max_depth=1.1, rotation_deg=30, translation=0.1)
    image = torch.rand(2, 3, resolution, resolution) * 20 - 10  # far outside [0, 1]: the squashing must hold
    depth, albedo = net.depth(image), net.albedo(image)
    angles, shift = net.view(image)
    ambient, diffuse, direction = net.light(image)
    assert depth.shape == (2, resolution, resolution) and depth.min() >= 0.9 and depth.max() <= 1.1
    assert albedo.shape == (2, 3, resolution, resolution) and albedo.min() >= 0 and albedo.max() <= 1
    assert angles.abs().max() <= math.radians(30) and shift[:, :2].abs().max() <= 0.1 and (shift[:, 2] == 0).all()
    assert ((ambient >= 0) & (ambient <= 1) & (diffuse >= 0) & (diffuse <= 1)).all()
    assert torch.allclose(direction.norm(dim=1), torch.ones(2)) and (direction[:, 2] < 0).all()
    K = fov_intrinsics(10.0, resolution, resolution, batch=2)
    R, t = view_about_pivot(angles, shift, 1.0)
    out = render_depth_map(depth, albedo, direction, K, R, t, ambient, diffuse)
    out.image.mean().backward()  # every network reaches the rendered image
    for name in ("depth_net", "albedo_net", "view_net", "light_net"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(net, name).parameters()), name


def test_the_depth_is_centred_and_its_side_columns_held_at_the_background():
    torch.manual_seed(0)
    net = Decomposition(16, width=8, zdim=32, min_depth=0.9, max_depth=1.1)
    image = torch.rand(2, 3, 16, 16)
    depth = net.depth(image)
    background = torch.full((2, 16, 2), 1.04)  # 0.3 · 0.9 + 0.7 · 1.1
    assert torch.allclose(depth[..., :2], background) and torch.allclose(depth[..., -2:], background)
    with torch.no_grad():
        net.depth_net.decode[-1].bias += 3.0  # a shift of the whole raw map moves nothing
    assert torch.allclose(net.depth(image), depth, atol=1e-6)


def test_sizes_and_ranges_that_do_not_work_are_refused():
    with pytest.raises(ValueError, match="resolution must be a power of two >= 8; got 24"):
        Decomposition(24)
    with pytest.raises(ValueError, match="need 0 < min_depth < max_depth"):
        Decomposition(16, min_depth=1.1, max_depth=0.9)


def test_the_ellipsoid_fills_the_masks_box_with_known_depths():
    mask = torch.zeros(2, 9, 13, dtype=torch.bool)
    mask[0, 2:7, 3:10] = True  # rows 2-6 (centre 4, half-size 2.5), columns 3-9 (centre 6, half-size 3.5)
    depth = ellipsoid_depth(mask, near=1.0, far=2.0)
    assert depth[0, 4, 6] == pytest.approx(1.0)  # the centre
    assert depth[0, 4, 8] == pytest.approx(2.0 - math.sqrt(1 - (2 / 3.5) ** 2), abs=1e-6)  # u = 2 / 3.5
    assert depth[0, 5, 8] == pytest.approx(2.0 - math.sqrt(1 - (2 / 3.5) ** 2 - (1 / 2.5) ** 2), abs=1e-6)
    assert depth[0, 0].eq(2.0).all() and depth[0, :, 0].eq(2.0).all()  # outside the box
    assert torch.allclose(depth[0, :, 3:10], depth[0, :, 3:10].flip(1))  # symmetric about the box centre
    assert depth[1].eq(2.0).all()  # an empty mask: no object, the far plane


def test_a_new_decomposition_sees_every_image_in_the_canonical_view_under_a_frontal_light():
    torch.manual_seed(0)
    net = Decomposition(16, width=8, zdim=32)
    image = torch.rand(4, 3, 16, 16)
    angles, shift = net.view(image)
    ambient, diffuse, direction = net.light(image)
    assert (angles == 0).all() and (shift == 0).all()
    assert torch.equal(ambient, torch.full((4,), 0.5)) and torch.equal(diffuse, torch.full((4,), 0.5))
    assert torch.equal(direction, torch.tensor([0.0, 0.0, -1.0]).expand(4, 3))
    # ... and learns to leave it: a step towards a turned view moves every image's angles that way.
    target = torch.tensor([0.2, -0.3, 0.1])
    (net.view(image)[0] - target).square().sum().backward()
    with torch.no_grad():
        for p in net.view_net.parameters():
            p -= 1e-3 * p.grad
    moved = net.view(image)[0]
    assert (moved.sign() == target.sign()).all() and moved.std(0).sum() > 0
