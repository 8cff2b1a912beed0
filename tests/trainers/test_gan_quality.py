"""GAN quality statistics on feature sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from renderloop.trainers.gan_quality import (
    RandomEncoder,
    frechet_distance,
    histogram_tv,
    kernel_distance,
    largest_component_share,
    one_object,
    precision_recall,
)


def _features(n=2000, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen)


def test_frechet_distance_has_closed_forms():
    x = _features()
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    shift = torch.arange(8.0)
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # Centred x and b = 2x: same mean, covariance 4Σ, so tr(Σ + 4Σ − 2·2Σ) = tr(Σ).
    x = x - x.mean(0)
    cov = torch.cov(x.double().T)
    assert frechet_distance(x, 2 * x) == pytest.approx(float(cov.trace()), rel=1e-6)


def test_kernel_distance_is_near_zero_for_one_distribution_and_large_for_two():
    gen = torch.Generator().manual_seed(3)
    p, q = torch.randn(1500, 8, generator=gen), torch.randn(1500, 8, generator=gen)
    mean, std = kernel_distance(p, q, subsets=20, subset_size=500)
    assert abs(mean) < 3 * std + 1e-3  # unbiased: independent draws of one distribution centre on 0
    assert kernel_distance(p, q + 1.0)[0] > 10 * max(abs(mean), std)


def test_precision_and_recall_see_quality_and_coverage_apart():
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(800, 4, generator=gen)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    collapsed = real[:1].repeat(800, 1) + 1e-3 * torch.randn(800, 4, generator=gen)  # one mode only
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05


def test_histogram_total_variation():
    a = torch.tensor([0.1, 0.2, 0.6, 0.7])
    assert histogram_tv(a, a, 4, 0.0, 1.0) == 0.0
    assert histogram_tv(a, a + 2.0, 4, 0.0, 4.0) == 1.0
    assert histogram_tv(a, torch.tensor([0.1, 0.2, 0.3, 0.6]), 2, 0.0, 1.0) == pytest.approx(0.25)


def test_random_encoder_is_fixed_by_its_seed():
    x = torch.rand(3, 3, 32, 32)
    a, b, c = RandomEncoder(seed=1, width=8), RandomEncoder(seed=1, width=8), RandomEncoder(seed=2, width=8)
    assert a(x).shape == (3, 64) and torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_connected_components_and_the_one_object_filter():
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True  # one square of 16 pixels: 16% of the image
    masks[1, 0:4, 0:4] = True
    masks[1, 6:8, 6:10] = True  # two pieces, 16 and 8 pixels
    masks[2, 0, 0] = True  # one pixel: too small
    masks[3, 1:9, 5] = True
    masks[3, 5, 1:9] = True  # a plus sign: connected through its centre
    masks[3, 0, 0] = True  # and a stray pixel diagonal to nothing
    share = largest_component_share(masks)
    assert share.tolist() == pytest.approx([1.0, 16 / 24, 1.0, 15 / 16])
    assert one_object(masks).tolist() == [True, False, False, False]
    assert one_object(masks, min_share=0.9).tolist() == [True, False, False, True]
    assert largest_component_share(torch.zeros(1, 5, 5, dtype=torch.bool)).tolist() == [1.0]


def _largest_share_by_scipy(mask: torch.Tensor) -> float:
    from scipy import ndimage

    labels, count = ndimage.label(mask.numpy())  # 4-connected by default
    return float(np.bincount(labels.ravel())[1:].max() / mask.sum()) if count else 1.0


@pytest.mark.parametrize("check_every", [1, 4])
def test_component_shares_match_an_independent_labelling(check_every):
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(6, 24, 31, generator=g) > torch.linspace(0.3, 0.7, 6).view(6, 1, 1)
    snake = torch.zeros(1, 24, 31, dtype=torch.bool)  # one path folding back and forth: many rounds to settle
    snake[0, ::4] = True
    snake[0, 1::8, -1] = snake[0, 2::8, -1] = snake[0, 3::8, 0] = snake[0, 5::8, 0] = snake[0, 6::8, 0] = True
    snake[0, 7::8, -1] = True
    checker = (torch.arange(24).view(24, 1) + torch.arange(31)).remainder(2).bool().unsqueeze(0)  # only diagonals touch
    masks = torch.cat([noisy, snake, checker])
    expected = [_largest_share_by_scipy(m) for m in masks]
    assert largest_component_share(masks, check_every=check_every).tolist() == pytest.approx(expected)
    assert expected[-1] == pytest.approx(1 / int(checker.sum()))
    assert largest_component_share(masks.transpose(1, 2)).tolist() == pytest.approx(expected)  # any strides
    with pytest.raises(ValueError, match="check_every"):
        largest_component_share(masks, check_every=0)
