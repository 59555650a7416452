"""Relative lift of a variant over the control: GrowthBook's frequentist two-sided t-test.

Inputs are sums, outputs a dataclass. The estimate is ``(mean_b - mean_a) / |mean_a|``;
its variance comes from the delta method (GrowthBook's ``variance_of_ratios`` with no
covariance between the two independent groups)::

    var = (var_b / n_b) / mean_a**2 + (var_a / n_a) * mean_b**2 / mean_a**4

and the interval and p-value from Student's t with Welch-Satterthwaite degrees of
freedom. A proportion (conversion) has variance ``p (1 - p)``; a mean (revenue per
user) has the sample variance ``(sum_squares - sum**2 / n) / (n - 1)``, exactly as
GrowthBook's ``ProportionStatistic`` and ``SampleMeanStatistic``.

>>> a, b = proportion(28, 14), proportion(30, 16)
>>> r = relative_lift(a, b)
>>> round(r.lift, 5), [round(x, 5) for x in r.ci95], round(r.p_value, 5)
(0.06667, [-0.47767, 0.61101], 0.80707)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t

__all__ = ["LiftResult", "SampleStats", "mean_stats", "proportion", "relative_lift"]


@dataclass(frozen=True)
class SampleStats:
    """One group's sufficient statistics: units, sum and sum of squares of the metric."""

    n: int
    sum: float
    sum_squares: float
    binomial: bool = False  # a 0/1 metric: variance p (1 - p)

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Population variance for proportions, sample variance (n - 1) for means.

        >>> mean_stats(3, 6.0, 14.0).variance
        1.0
        >>> proportion(4, 1).variance
        0.1875
        """
        if self.binomial:
            p = self.mean
            return p * (1.0 - p)
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_squares - self.sum ** 2 / self.n) / (self.n - 1))


def proportion(n: int, successes: int) -> SampleStats:
    """A conversion metric: ``successes`` of ``n`` units (each 0 or 1)."""
    return SampleStats(n, float(successes), float(successes), binomial=True)


def mean_stats(n: int, total: float, sum_squares: float) -> SampleStats:
    """A per-unit metric (revenue per user): units, sum and sum of squares."""
    return SampleStats(n, float(total), float(sum_squares))


@dataclass(frozen=True)
class LiftResult:
    """Relative lift of the treatment over the control with its 95% interval.

    ``lift`` etc. are None when the test cannot be run (``error`` says why): too few
    units, a control mean of zero, or no variance.
    """

    lift: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    std_error: float | None
    dof: float | None
    error: str | None = None


def _welch_dof(a: SampleStats, b: SampleStats) -> float:
    va, vb = a.variance / a.n, b.variance / b.n
    return (va + vb) ** 2 / (vb ** 2 / (b.n - 1) + va ** 2 / (a.n - 1))


def relative_lift(control: SampleStats, treatment: SampleStats,
                  alpha: float = 0.05) -> LiftResult:
    """Two-sided t-test of the relative difference ``treatment / control - 1``.

    Reference values (GrowthBook's own test of ``TwoSidedTTest``, relative):

    >>> r = relative_lift(mean_stats(3407, 1396.87, 52377.9767),
    ...                   mean_stats(3461, 2422.7, 134698.29))
    >>> round(r.lift, 5), round(r.std_error, 5), round(r.p_value, 5)
    (0.70732, 0.37879, 0.06191)
    >>> relative_lift(proportion(10, 0), proportion(10, 3)).error
    'the control mean is 0: a relative lift is undefined'
    """
    a, b = control, treatment
    if a.n < 2 or b.n < 2:
        return LiftResult(None, None, None, None, None,
                          f"need at least 2 units per group, got {a.n} and {b.n}")
    if a.mean == 0:
        return LiftResult(None, None, None, None, None,
                          "the control mean is 0: a relative lift is undefined")
    if a.variance <= 0 or b.variance <= 0:
        return LiftResult(None, None, None, None, None, "a group has no variance")
    point = (b.mean - a.mean) / abs(a.mean)
    variance = (b.variance / b.n) / a.mean ** 2 + (a.variance / a.n) * b.mean ** 2 / a.mean ** 4
    se = math.sqrt(variance)
    dof = _welch_dof(a, b)
    half = float(student_t.ppf(1 - alpha / 2, dof)) * se
    # GrowthBook writes 2 * (1 - cdf); the survival function is the same number without
    # rounding tiny p-values to 0.
    p = 2 * float(student_t.sf(abs(point / se), dof))
    return LiftResult(point, (point - half, point + half), p, se, dof)
