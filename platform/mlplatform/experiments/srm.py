"""Sample-ratio mismatch: is the observed split of units the one the weights ask for?

Pearson's chi-square of the observed units per variant against ``weight / sum(weights)``
of their total, with ``k - 1`` degrees of freedom (GrowthBook's ``check_srm``). A
p-value under ``threshold`` (0.001, as GrowthBook and most platforms flag) means the
assignment or the logging is broken: the other numbers of the report are not to be
trusted until it is explained.

>>> r = srm_test({"a": 500, "b": 500}, {"a": 0.5, "b": 0.5})
>>> r.p_value, r.mismatch
(1.0, False)
>>> srm_test({"a": 600, "b": 400}, {"a": 0.5, "b": 0.5}).mismatch
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy.stats import chi2

__all__ = ["SRM_THRESHOLD", "SRMResult", "srm_test"]

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SRMResult:
    """The chi-square test of one split; ``expected`` units per variant."""

    p_value: float
    mismatch: bool
    chi2: float
    dof: int
    expected: dict[str, float] = field(default_factory=dict)
    threshold: float = SRM_THRESHOLD


def srm_test(users: Mapping[str, int], weights: Mapping[str, float],
             threshold: float = SRM_THRESHOLD) -> SRMResult:
    """Chi-square of ``users`` per variant against ``weights`` (variants with weight 0 are
    left out; units seen in a variant without weight count as a mismatch).

    >>> r = srm_test({"a": 5050, "b": 4950}, {"a": 1, "b": 1})
    >>> round(r.chi2, 3), round(r.p_value, 4)
    (1.0, 0.3173)
    """
    total_weight = sum(w for w in weights.values() if w > 0)
    stray = sum(n for v, n in users.items() if weights.get(v, 0) <= 0)
    counted = {v: int(users.get(v, 0)) for v, w in weights.items() if w > 0}
    total = sum(counted.values())
    if total == 0 or len(counted) < 2:
        return SRMResult(1.0, stray > 0, 0.0, max(0, len(counted) - 1))
    expected = {v: weights[v] / total_weight * total for v in counted}
    stat = sum((counted[v] - e) ** 2 / e for v, e in expected.items())
    dof = len(counted) - 1
    p = float(chi2.sf(stat, dof))
    return SRMResult(p, p < threshold or stray > 0, stat, dof, expected, threshold)
