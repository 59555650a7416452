"""Per-feature drift statistics: a reference sample against a live window, with numpy and scipy.

Which test decides, and its threshold, follow Evidently's default data-drift algorithm
(the reference's size and the feature's kind choose it):

| feature | reference rows | statistic | drifted when |
| --- | --- | --- | --- |
| numeric (more than 5 distinct values) | > 1000 | Wasserstein distance / reference std | >= 0.1 |
| numeric | <= 1000 | two-sample Kolmogorov-Smirnov p-value | < 0.05 |
| categorical (or numeric with <= 5 distinct values) | > 1000 | Jensen-Shannon distance (natural log) | >= 0.1 |
| categorical | <= 1000 | chi-square goodness-of-fit p-value | < 0.05 |

Every numeric feature also gets the population stability index (PSI) over ten quantile
bins of the reference, reported beside the deciding statistic with its usual rule
(PSI >= 0.1: a moderate shift; >= 0.25: a major one); it does not decide. A report flags
dataset drift when at least half of the features drifted (Evidently's default share).
Evidently tests binary features (<= 2 values) on a small reference with a z-test of
proportions; here chi-square covers every categorical feature on a small reference.

The functions are pure: arrays or counts in, floats or dataclasses out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

__all__ = [
    "FeatureDrift",
    "LARGE_REFERENCE",
    "THRESHOLDS",
    "PSI_THRESHOLD",
    "DATASET_DRIFT_SHARE",
    "psi",
    "wasserstein_normed",
    "ks_pvalue",
    "js_distance",
    "chi2_pvalue",
    "numeric_drift",
    "categorical_drift",
]

LARGE_REFERENCE = 1000  # more reference rows than this: distances, else p-values
THRESHOLDS = {"wasserstein": 0.1, "ks": 0.05, "jensenshannon": 0.1, "chi2": 0.05}
PSI_THRESHOLD = 0.1
DATASET_DRIFT_SHARE = 0.5
PSI_BINS = 10
EPSILON = 1e-4  # stands for an empty bin or an unseen category: log(0) and x/0 stay finite


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's verdict: the deciding statistic, its threshold, and PSI for numerics."""

    kind: str  # "numeric" | "categorical"
    statistic: str  # "wasserstein" | "ks" | "jensenshannon" | "chi2"
    value: float
    threshold: float
    drifted: bool
    psi: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = _round(self.value)
        if self.psi is None:
            del out["psi"]
        else:
            out["psi"] = _round(self.psi)
        return out


def _round(x: float) -> float:
    return round(float(x), 6) if math.isfinite(x) else float(x)


def psi(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray,
        bins: int = PSI_BINS) -> float:
    """Population stability index over quantile bins of ``reference`` (empty bins: epsilon).

    Shifted by half its range, the live sample leaves five bins empty (share epsilon)
    and piles 60% into the top one: 5 * (1e-4 - 0.1) * ln(1e-4 / 0.1) + 0.5 * ln 6.

    >>> ref = np.arange(1000.0)
    >>> psi(ref, ref)
    0.0
    >>> round(psi(ref, ref + 500), 3)
    4.346
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1))[1:-1])
    # Inner edges only: the outer bins reach to +-infinity, so live values past the
    # reference's range count in the end bins instead of vanishing.
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    e = np.maximum(expected / max(len(ref), 1), EPSILON)
    a = np.maximum(actual / max(len(cur), 1), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def wasserstein_normed(reference: Sequence[float] | np.ndarray,
                       current: Sequence[float] | np.ndarray) -> float:
    """Wasserstein (earth mover's) distance divided by the reference's standard deviation.

    A constant reference has no scale: any move then counts as drift (inf), none as 0.

    >>> round(wasserstein_normed([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]), 4)
    0.8944
    >>> wasserstein_normed([1.0, 1.0], [1.0]), wasserstein_normed([1.0, 1.0], [2.0])
    (0.0, inf)
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    d = float(stats.wasserstein_distance(ref, cur))
    std = float(np.std(ref))
    if std == 0.0:
        return 0.0 if d == 0.0 else math.inf
    return d / std


def ks_pvalue(reference: Sequence[float] | np.ndarray,
              current: Sequence[float] | np.ndarray) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test (small: the samples differ).

    >>> ks_pvalue(np.arange(100.0), np.arange(100.0))
    1.0
    >>> ks_pvalue(np.arange(100.0), np.arange(100.0) + 50) < 0.05
    True
    """
    return float(stats.ks_2samp(np.asarray(reference, float), np.asarray(current, float)).pvalue)


def _aligned(reference: Mapping[str, float], current: Mapping[str, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Both count tables over the union of categories, in one order."""
    keys = sorted(set(reference) | set(current))
    return (np.array([float(reference.get(k, 0.0)) for k in keys]),
            np.array([float(current.get(k, 0.0)) for k in keys]))


def js_distance(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (natural log, so in [0, sqrt(ln 2)]) of two count tables.

    >>> js_distance({"a": 50, "b": 50}, {"a": 5, "b": 5})
    0.0
    >>> round(js_distance({"a": 1}, {"b": 1}), 4)
    0.8326
    """
    ref, cur = _aligned(reference, current)
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


def chi2_pvalue(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """p-value of chi-square: are ``current``'s counts drawn from ``reference``'s shares?

    A category the reference never saw is expected with share epsilon, so it weighs in
    strongly instead of dividing by zero.

    >>> chi2_pvalue({"a": 500, "b": 500}, {"a": 50, "b": 50})
    1.0
    >>> chi2_pvalue({"a": 500, "b": 500}, {"a": 90, "b": 10}) < 0.05
    True
    """
    ref, cur = _aligned(reference, current)
    if ref.sum() == 0 or cur.sum() == 0:
        return 1.0
    shares = np.maximum(ref / ref.sum(), EPSILON)
    expected = shares / shares.sum() * cur.sum()
    return float(stats.chisquare(cur, expected).pvalue)


def numeric_drift(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray,
                  *, reference_rows: int | None = None) -> FeatureDrift:
    """Drift of a numeric feature: normed Wasserstein (large reference) or K-S, plus PSI.

    ``reference_rows``: the size of the data the sample was drawn from (default: its length).

    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(100, 20, 5000)
    >>> numeric_drift(ref, rng.normal(100, 20, 2000)).drifted
    False
    >>> d = numeric_drift(ref, rng.normal(100, 20, 2000) * 5)
    >>> d.statistic, d.drifted, d.psi > 0.1
    ('wasserstein', True, True)
    >>> numeric_drift(ref[:500], rng.normal(130, 20, 200)).statistic
    'ks'
    """
    n = len(reference) if reference_rows is None else reference_rows
    p = psi(reference, current)
    if n > LARGE_REFERENCE:
        value, name = wasserstein_normed(reference, current), "wasserstein"
        return FeatureDrift("numeric", name, value, THRESHOLDS[name],
                            value >= THRESHOLDS[name], p)
    value, name = ks_pvalue(reference, current), "ks"
    return FeatureDrift("numeric", name, value, THRESHOLDS[name], value < THRESHOLDS[name], p)


def categorical_drift(reference: Mapping[str, float], current: Mapping[str, float], *,
                      reference_rows: int | None = None) -> FeatureDrift:
    """Drift of a categorical feature: Jensen-Shannon (large reference) or chi-square.

    >>> categorical_drift({"web": 3000, "app": 1000}, {"web": 290, "app": 110}).drifted
    False
    >>> d = categorical_drift({"web": 3000, "app": 1000}, {"web": 100, "app": 300})
    >>> d.statistic, d.drifted
    ('jensenshannon', True)
    >>> categorical_drift({"web": 300, "app": 100}, {"web": 100, "app": 300}).statistic
    'chi2'
    """
    n = int(sum(reference.values())) if reference_rows is None else reference_rows
    if n > LARGE_REFERENCE:
        value, name = js_distance(reference, current), "jensenshannon"
        return FeatureDrift("categorical", name, value, THRESHOLDS[name],
                            value >= THRESHOLDS[name])
    value, name = chi2_pvalue(reference, current), "chi2"
    return FeatureDrift("categorical", name, value, THRESHOLDS[name], value < THRESHOLDS[name])
