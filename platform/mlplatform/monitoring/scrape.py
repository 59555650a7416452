"""Scrapes of a service's ``/metrics``: parsing, and rates and quantiles between two scrapes.

Pure functions over ``Scrape`` values, so the console's arithmetic is tested without a
server. A scrape holds every sample as ``{(name, labels): value}`` with ``labels`` a
sorted tuple of pairs; counters and histogram buckets are cumulative, so what the
console shows (requests/s, p99, error rate, CPU%) comes from the difference of two
scrapes, as Prometheus' ``rate`` and ``histogram_quantile`` do.

>>> text = '''# TYPE mlsuite_http_requests_total counter
... mlsuite_http_requests_total{endpoint="/v1/x",status="200"} 10
... mlsuite_http_requests_total{endpoint="/v1/x",status="500"} 2
... '''
>>> a = Scrape("fraud", 100.0, parse(text))
>>> b = Scrape("fraud", 110.0, parse(text.replace(" 10", " 40").replace(" 2", " 6")))
>>> rate(a, b, "mlsuite_http_requests_total")
3.4
>>> rate(a, b, "mlsuite_http_requests_total", lambda l: l["status"].startswith("5"))
0.4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "Scrape", "parse", "total", "rate", "buckets", "bucket_deltas",
           "quantile", "LabelFilter", "label_is"]

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
LabelFilter = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True)
class Scrape:
    """One scrape of one service: when, and its samples (empty when the service was down)."""

    service: str
    at: float
    samples: Samples = field(default_factory=dict)
    up: bool = True
    error: str | None = None


def parse(text: str) -> Samples:
    """Every sample of a Prometheus exposition text, keyed by name and sorted labels.

    >>> parse('m_total{b="2",a="1"} 3\\nup 1\\n')
    {('m_total', (('a', '1'), ('b', '2'))): 3.0, ('up', ()): 1.0}
    """
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def label_is(key: str, value: str) -> LabelFilter:
    """A filter accepting the series whose label ``key`` equals ``value``."""
    return lambda labels: labels.get(key) == value


def total(samples: Samples, name: str, match: LabelFilter | None = None) -> float | None:
    """The sum of ``name`` over the label sets ``match`` accepts; None when none is present.

    >>> s = parse('g{k="a"} 1\\ng{k="b"} 2\\n')
    >>> total(s, "g"), total(s, "g", lambda l: l["k"] == "b"), total(s, "missing")
    (3.0, 2.0, None)
    """
    found = False
    acc = 0.0
    for (n, labels), value in samples.items():
        if n == name and (match is None or match(dict(labels))):
            found = True
            acc += value
    return acc if found else None


def _increase(prev: Samples, cur: Samples, name: str, match: LabelFilter | None) -> float:
    # Per series, like Prometheus: a value lower than before means the process restarted
    # (its counter began again at 0), so the whole current value is the increase.
    acc = 0.0
    for key, value in cur.items():
        if key[0] != name or (match is not None and not match(dict(key[1]))):
            continue
        before = prev.get(key, 0.0)
        acc += value - before if value >= before else value
    return acc


def rate(a: Scrape, b: Scrape, name: str, match: LabelFilter | None = None) -> float | None:
    """Per-second increase of counter ``name`` from scrape ``a`` to the later ``b``.

    None when either scrape failed or no time passed.
    """
    dt = b.at - a.at
    if not (a.up and b.up) or dt <= 0:
        return None
    return round(_increase(a.samples, b.samples, name, match) / dt, 6)


def buckets(samples: Samples, name: str, match: LabelFilter | None = None
            ) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` of histogram ``name`` summed over matching series.

    >>> s = parse('h_bucket{le="0.1"} 1\\nh_bucket{le="1.0"} 3\\nh_bucket{le="+Inf"} 4\\n')
    >>> buckets(s, "h")
    [(0.1, 1.0), (1.0, 3.0), (inf, 4.0)]
    """
    acc: dict[float, float] = {}
    bucket = f"{name}_bucket"
    for (n, labels), value in samples.items():
        if n != bucket:
            continue
        as_dict = dict(labels)
        if match is not None and not match(as_dict):
            continue
        le = float(as_dict["le"])
        acc[le] = acc.get(le, 0.0) + value
    return sorted(acc.items())


def bucket_deltas(a: Scrape, b: Scrape, name: str, match: LabelFilter | None = None
                  ) -> list[tuple[float, float]]:
    """Observations per cumulative bucket of histogram ``name`` made between ``a`` and ``b``."""
    before = dict(buckets(a.samples, name, match)) if a.up else {}
    after = buckets(b.samples, name, match)
    return [(le, count - before.get(le, 0.0) if count >= before.get(le, 0.0) else count)
            for le, count in after]


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative buckets, interpolated linearly inside the bucket
    (Prometheus' ``histogram_quantile``); None without observations.

    >>> quantile(0.5, [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)])
    0.1
    >>> quantile(0.99, [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)])
    0.198
    >>> quantile(0.99, [(0.1, 0.0), (math.inf, 5.0)])  # beyond the last finite bucket
    0.1
    >>> quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    True
    """
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    count = cumulative[-1][1]
    rank = q * count
    lower_le, lower_count = 0.0, 0.0
    for le, c in cumulative:
        if c >= rank:
            if math.isinf(le):
                return lower_le  # Prometheus answers the highest finite bound here
            if c == lower_count:
                return le
            return round(lower_le + (le - lower_le) * (rank - lower_count) / (c - lower_count), 9)
        lower_le, lower_count = le, c
    return lower_le
