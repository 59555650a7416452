"""Latency and error guardrails of a variant, from the counters the service records.

Per variant the recommender's worker keeps requests, errors, the latency sum and a
latency histogram (counts per upper bound in ms, ``LATENCY_BUCKETS_MS``); a variant
passes when its error rate and its estimated p99 stay under the experiment's limits.
A variant can win on conversion and still be unshippable because it is slow or fails.

>>> g = check_guardrails(LatencyCounts(1000, 2, 3992.0, {5.0: 990, 10.0: 6, 50.0: 2}),
...                      max_error_rate=0.01, max_p99_ms=50.0)
>>> g.ok, g.error_rate, g.latency_p99_ms, g.latency_mean_ms
(True, 0.002, 5.0, 4.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS_MS", "GuardrailResult", "LatencyCounts", "bucket_of",
           "check_guardrails", "quantile_ms"]

# Upper bounds (ms) of the latency histogram; the last catches everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
                                         500.0, 1000.0, 2000.0, math.inf)


def bucket_of(ms: float) -> float:
    """The histogram bucket (upper bound) of a latency.

    >>> bucket_of(0.4), bucket_of(7.0), bucket_of(1e6)
    (1.0, 10.0, inf)
    """
    for upper in LATENCY_BUCKETS_MS:
        if ms <= upper:
            return upper
    return math.inf


@dataclass(frozen=True)
class LatencyCounts:
    """What one variant's requests did: counts, errors, latency sum and histogram."""

    requests: int  # answered, errors included
    errors: int
    latency_ms_sum: float  # of the answered (non-error) requests
    buckets: Mapping[float, int] = field(default_factory=dict)  # upper bound -> count


def quantile_ms(buckets: Mapping[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (an upper estimate).

    >>> quantile_ms({1.0: 50, 5.0: 49, 20.0: 1}, 0.99), quantile_ms({}, 0.5)
    (5.0, None)
    """
    total = sum(buckets.values())
    if total == 0:
        return None
    need = q * total
    seen = 0
    for upper in sorted(buckets):
        seen += buckets[upper]
        if seen >= need:
            return upper
    return max(buckets)


@dataclass(frozen=True)
class GuardrailResult:
    """One variant against the limits; ``reasons`` lists what failed."""

    ok: bool
    requests: int
    errors: int
    error_rate: float
    latency_mean_ms: float | None
    latency_p99_ms: float | None
    reasons: list[str] = field(default_factory=list)


def check_guardrails(counts: LatencyCounts, *, max_error_rate: float,
                     max_p99_ms: float) -> GuardrailResult:
    """Whether ``counts`` stay within ``max_error_rate`` and ``max_p99_ms``.

    >>> bad = check_guardrails(LatencyCounts(100, 5, 90.0, {1.0: 95}), max_error_rate=0.01,
    ...                        max_p99_ms=50.0)
    >>> bad.ok, bad.reasons
    (False, ['error rate 0.0500 > 0.0100'])
    """
    answered = counts.requests - counts.errors
    rate = counts.errors / counts.requests if counts.requests else 0.0
    mean = counts.latency_ms_sum / answered if answered > 0 else None
    p99 = quantile_ms(counts.buckets, 0.99)
    reasons = []
    if rate > max_error_rate:
        reasons.append(f"error rate {rate:.4f} > {max_error_rate:.4f}")
    if p99 is not None and p99 > max_p99_ms:
        reasons.append(f"p99 latency <= {p99:g} ms > {max_p99_ms:g} ms")
    return GuardrailResult(not reasons, counts.requests, counts.errors, round(rate, 6),
                           None if mean is None else round(mean, 3), p99, reasons)
