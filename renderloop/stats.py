"""Summaries of repeated measurements: a mean and its 95% confidence interval.

Experiments run several seeds; a difference is stated only when it exceeds its interval, so
every table reports ``mean ± half-width`` from the t-distribution of the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["T975", "t975", "mean_ci95", "welch_difference", "Summary"]

T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""The 97.5% quantile of Student's t with 1..30 degrees of freedom."""


def t975(df: int) -> float:
    """The two-sided 95% t quantile for ``df`` degrees of freedom (the normal's 1.960 above 120)."""
    if df < 1:
        raise ValueError(f"t975(): needs df >= 1; got {df}")
    if df <= len(T975):
        return T975[df - 1]
    # Between 30 and 120 the quantile falls from 2.042 towards 1.980; interpolate in 1/df.
    lo, hi = (30, 2.042), (120, 1.980)
    if df >= hi[0]:
        return 1.960 + (1.980 - 1.960) * 120 / df
    w = (1 / df - 1 / hi[0]) / (1 / lo[0] - 1 / hi[0])
    return hi[1] + w * (lo[1] - hi[1])


class Summary(tuple):
    """``(mean, half_width, n)``: ``mean ± half_width`` is the 95% interval of the mean."""

    def __new__(cls, mean: float, half_width: float, n: int) -> Summary:
        return super().__new__(cls, (mean, half_width, n))

    mean = property(lambda self: self[0])
    half_width = property(lambda self: self[1])
    n = property(lambda self: self[2])

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (the mean differs from it measurably)."""
        return abs(self.mean - value) > self.half_width

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.half_width:.2g} (n={self.n})"


def mean_ci95(values: Sequence[float]) -> Summary:
    """The mean of ``values`` and the half-width of its 95% t interval (``nan`` for one value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci95(): no values")
    n, mean = len(xs), sum(xs) / len(xs)
    if n == 1:
        return Summary(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, t975(n - 1) * sd / math.sqrt(n), n)


def welch_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | bool]:
    """Mean of ``a`` − mean of ``b``, the half-width of its 95% interval and whether the difference
    exceeds it. Welch's interval (unequal variances) at the whole degrees of freedom below Welch's,
    so it is never too narrow; ``nan`` below two values a side."""
    sa, sb = mean_ci95(a), mean_ci95(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return {"difference": diff, "ci95": math.nan, "exceeds_interval": False}
    va, vb = _variance(a) / sa.n, _variance(b) / sb.n
    if va + vb == 0:
        return {"difference": diff, "ci95": 0.0, "exceeds_interval": diff != 0}
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    half = t975(max(1, math.floor(df))) * math.sqrt(va + vb)
    return {"difference": diff, "ci95": half, "exceeds_interval": abs(diff) > half}


def _variance(values: Sequence[float]) -> float:
    xs = [float(v) for v in values]
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
