"""SIDE and MAD know their answers: zero for the truth and any scale of it, the tilt angle between
two planes, the log-depth spread for a flat guess; the mask's edge does not count."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.renderers.cameras import fov_intrinsics, pixel_grid
from renderloop.trainers.depth_scores import interior, mad, side

S = 32
K = fov_intrinsics(30.0, S, S, batch=1)


def plane(tilt_deg: float, distance: float = 3.0) -> torch.Tensor:
    """Depth ``[1, S, S]`` of the plane through ``(0, 0, distance)`` turned by ``tilt_deg`` about
    the camera's y axis: depth = distance / (n · ray) / n_z with rays ``K⁻¹ [u, v, 1]``."""
    t = math.radians(tilt_deg)
    n = torch.tensor([math.sin(t), 0.0, -math.cos(t)])
    uv = pixel_grid(S, S)
    rays = torch.cat([uv, torch.ones(S, S, 1)], -1) @ torch.linalg.inv(K[0]).T
    return (n @ torch.tensor([0.0, 0.0, distance])) / (rays @ n)[None]


def test_truth_and_its_scales_score_zero():
    true = plane(20.0) + 0.1 * torch.rand(1, S, S)
    mask = torch.ones(1, S, S, dtype=torch.bool)
    for scale in (1.0, 0.3, 7.0):
        assert side(true * scale, true, mask).item() == pytest.approx(0.0, abs=1e-5)
        assert mad(true * scale, true, mask, K).item() == pytest.approx(0.0, abs=0.05)


def test_mad_is_the_angle_between_two_planes_and_side_the_log_spread_of_a_flat_guess():
    mask = torch.ones(1, S, S, dtype=torch.bool)
    assert mad(plane(0.0), plane(30.0), mask, K).item() == pytest.approx(30.0, abs=0.05)
    true = plane(30.0)
    flat = torch.full_like(true, 2.0)
    expected = true.log()[:, 1:-1, 1:-1].flatten().std(unbiased=False)  # the interior of a full mask
    assert side(flat, true, mask).item() == pytest.approx(expected.item(), rel=1e-4)
    assert side(flat, true, mask).item() > 0.05


def test_only_the_mask_counts_and_bad_input_is_refused():
    true = plane(0.0)
    pred = true.clone()
    pred[:, :, : S // 2] *= 1.5  # wrong outside the mask only
    mask = torch.zeros(1, S, S, dtype=torch.bool)
    mask[:, :, S // 2 + 2 :] = True
    assert side(pred, true, mask).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="share one shape"):
        side(pred[:, :4], true, mask)
    with pytest.raises(ValueError, match="valid pixel"):
        side(pred, true, torch.zeros_like(mask))


def test_the_interior_drops_the_edge_where_a_depth_map_meets_the_background():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[:, 1:5, 1:5] = True
    assert interior(mask)[0].nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    true = plane(20.0)
    pred = true.clone()
    pred[:, :, : S // 2] = 0.0  # a rendered depth: zero where nothing is drawn
    mask = torch.ones(1, S, S, dtype=torch.bool)
    # The pixels beside the background would have normals pointing at the camera's centre.
    assert mad(pred, true, mask, K).item() == pytest.approx(0.0, abs=0.05)
    assert side(pred, true, mask).item() == pytest.approx(0.0, abs=1e-5)
