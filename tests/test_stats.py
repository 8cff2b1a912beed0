"""Means and 95% intervals against hand-computed values."""

from __future__ import annotations

import math

import pytest

from renderloop.stats import mean_ci95, t975


def test_interval_of_three_values_by_hand():
    # mean 2, sample sd 1, t(2) = 4.303: half-width 4.303 / sqrt(3)
    s = mean_ci95([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.n == 3
    assert s.half_width == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    assert s.excludes(4.6) and not s.excludes(4.4)


def test_identical_values_have_no_spread_and_one_value_no_interval():
    assert mean_ci95([0.5] * 5).half_width == 0.0
    assert math.isnan(mean_ci95([0.5]).half_width)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_quantiles_fall_towards_the_normal():
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(30) == 2.042
    assert t975(120) == pytest.approx(1.980) and t975(10**6) == pytest.approx(1.960, abs=1e-4)
    qs = [t975(df) for df in range(1, 400)]
    assert all(a >= b for a, b in zip(qs, qs[1:], strict=False))
    with pytest.raises(ValueError):
        t975(0)
