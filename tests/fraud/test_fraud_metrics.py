"""The fraud metrics' own helpers give what prometheus_client itself would."""

from __future__ import annotations

import math

from fraud import metrics


def _buckets() -> tuple[dict[str, float], float]:
    [family] = metrics.SCORES.collect()
    counts = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    return counts, total


def test_a_batch_of_scores_lands_in_the_buckets_one_observe_each_would() -> None:
    """``observe_scores`` writes a batch's buckets once each; the exported histogram
    (cumulative buckets, sum, count) moves exactly as with one ``observe`` per score,
    bounds included (a score equal to a bound counts in that bound's bucket)."""
    scores = [0.0, 0.01, 0.015, 0.05, 0.3, 0.30000001, 0.99, 1.0, 0.5, 0.5, 0.2, 0.9999]
    before, sum_before = _buckets()
    metrics.observe_scores(scores)
    after, sum_after = _buckets()
    for le, count in after.items():
        bound = math.inf if le == "+Inf" else float(le)
        expected = sum(1 for s in scores if s <= bound)
        assert count - before[le] == expected, (le, count - before[le], expected)
    assert math.isclose(sum_after - sum_before, sum(scores))
    metrics.observe_scores([0.4, 0.6])  # a few: prometheus_client's observe, one each
    assert _buckets()[0]["0.5"] - after["0.5"] == 1
