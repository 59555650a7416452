"""Experiment aggregates in Redis: what was shown to whom, and what it led to.

Written by the services (a touch per shown item, on the request path) and their workers
(the counts, off the request path); read by the report. Keys, per experiment NAME (the
``{NAME}`` braces are a Redis Cluster hash tag: one experiment's keys live together,
so the revenue script may touch two of them):

- ``mlsuite:exp:{NAME}:agg``: a hash of counters ``<variant>|<metric>`` (exposures,
  errors, latency_ms_sum, lat|<bucket>, conversion_events, purchases, revenue,
  revenue_sq) and ``<variant>|<version>|<metric>`` per model version;
- ``mlsuite:exp:{NAME}:users:<variant>`` / ``...:conv:<variant>``: sets of exposed and
  converted units (exact counts: the SRM test is a chi-square on them, an estimate
  such as HyperLogLog's 0.8% error would raise false alarms);
- ``mlsuite:exp:{NAME}:rev:<variant>``: revenue per unit, so the sum of squares (the
  variance of revenue per user) is kept exactly as revenue arrives;
- ``mlsuite:exp:{NAME}:variants``, ``mlsuite:exp:names``: what exists.

Touches (last touch wins): ``mlsuite:exp:seen:<unit>``, a hash item -> ``at_ms|name|
variant|version``, expiring one attribution window after the unit's last exposure,
so it stays bounded by what a unit was shown within the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from mlplatform.experiments.guardrails import LATENCY_BUCKETS_MS

__all__ = ["Aggregates", "ExperimentStore", "Touch", "VariantCounts", "latency_field",
           "seen_key"]

NAMES_KEY = "mlsuite:exp:names"
SEEN_PREFIX = "mlsuite:exp:seen:"

# Revenue per unit and the sum of its squares, in one atomic step (several workers may
# attribute purchases of one unit at the same time).
_REVENUE = """
local after = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2]))
local before = after - tonumber(ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3], string.format('%.17g', after * after - before * before))
return 1
"""


def seen_key(unit: str) -> str:
    return SEEN_PREFIX + unit


def _prefix(name: str) -> str:
    return f"mlsuite:exp:{{{name}}}:"


@dataclass(frozen=True)
class Touch:
    """An exposure of one item to one unit, as remembered for attribution."""

    at_ms: int
    experiment: str
    variant: str
    version: str

    def encode(self) -> str:
        return f"{self.at_ms}|{self.experiment}|{self.variant}|{self.version}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Touch:
        """A touch from its encoded form.

        >>> Touch.decode(b"1700000000000|exp|als|recommender:v2")
        Touch(at_ms=1700000000000, experiment='exp', variant='als', version='recommender:v2')
        """
        text = raw.decode() if isinstance(raw, bytes) else raw
        at, experiment, variant, version = text.split("|", 3)
        return cls(int(at), experiment, variant, version)


@dataclass
class VariantCounts:
    """Everything counted for one variant (and, in ``versions``, per model version)."""

    users: int = 0
    converted: int = 0
    exposures: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    latency_buckets: dict[float, int] = field(default_factory=dict)
    conversion_events: int = 0
    purchases: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0
    versions: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregates:
    """One experiment's counts per variant, as read from Redis."""

    name: str
    variants: dict[str, VariantCounts]


class ExperimentStore:
    """Reads and writes one Redis's experiment aggregates (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    # -- request path --------------------------------------------------------------------

    @staticmethod
    def remember(pipe: Any, unit: str, items: Sequence[str], touch: Touch,
                 window_ms: int) -> None:
        """Queue on ``pipe`` the touches of ``items`` shown to ``unit`` (two commands)."""
        if not items:
            return
        key = seen_key(unit)
        value = touch.encode()
        pipe.hset(key, mapping={item: value for item in items})
        pipe.pexpire(key, window_ms)

    # -- worker --------------------------------------------------------------------------

    def touches(self, pairs: Sequence[tuple[str, str]]) -> list[Touch | None]:
        """The last touch of each (unit, item), None when not shown within its window;
        one round trip."""
        if not pairs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for unit, item in pairs:
            pipe.hget(seen_key(unit), item)
        return [None if raw is None else Touch.decode(raw) for raw in pipe.execute()]

    @staticmethod
    def count_exposures(tx: Any, name: str, counters: Mapping[str, float],
                        users: Mapping[str, Iterable[str]]) -> None:
        """Queue on ``tx`` counter increments (field -> amount: an int is a count, a float
        a sum) and exposed units per variant."""
        p = _prefix(name)
        tx.sadd(NAMES_KEY, name)
        for fld, amount in counters.items():
            if isinstance(amount, float):
                tx.hincrbyfloat(p + "agg", fld, amount)
            else:
                tx.hincrby(p + "agg", fld, int(amount))
        for variant, units in users.items():
            units = list(units)
            tx.sadd(p + "variants", variant)
            if units:
                tx.sadd(p + "users:" + variant, *units)

    def add_conversion(self, tx: Any, touch: Touch, unit: str, *, purchase: bool,
                       revenue: float) -> None:
        """Queue on ``tx`` one attributed conversion event (a cart or a purchase)."""
        p = _prefix(touch.experiment)
        agg = p + "agg"
        v, vv = touch.variant, f"{touch.variant}|{touch.version}"
        tx.sadd(p + "conv:" + v, unit)
        tx.hincrby(agg, f"{v}|conversion_events", 1)
        tx.hincrby(agg, f"{vv}|conversion_events", 1)
        if purchase:
            tx.hincrby(agg, f"{v}|purchases", 1)
            tx.hincrby(agg, f"{vv}|purchases", 1)
            if revenue > 0:
                tx.hincrbyfloat(agg, f"{v}|revenue", revenue)
                tx.hincrbyfloat(agg, f"{vv}|revenue", revenue)
                # EVAL, not the registered script's EVALSHA: a Redis Cluster pipeline
                # cannot load a script first, and a node without it would refuse the
                # command inside the consumer's MULTI. Redis caches the compiled body.
                # (A cluster pipeline has no eval(): the command itself, routed by its keys.)
                tx.execute_command("EVAL", _REVENUE, 2, p + "rev:" + v, agg, unit,
                                   repr(float(revenue)), f"{v}|revenue_sq")

    # -- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(NAMES_KEY))  # type: ignore[union-attr]

    def read(self, name: str) -> Aggregates:
        """The counts of experiment ``name`` (empty when nothing was recorded)."""
        p = _prefix(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(p + "variants")
        pipe.hgetall(p + "agg")
        raw_variants, raw_agg = pipe.execute()
        variants = sorted(v.decode() for v in raw_variants)
        pipe = self.client.pipeline(transaction=False)
        for v in variants:
            pipe.scard(p + "users:" + v)
            pipe.scard(p + "conv:" + v)
        cards = pipe.execute()
        out = {v: VariantCounts(users=int(cards[2 * i]), converted=int(cards[2 * i + 1]))
               for i, v in enumerate(variants)}
        for raw_field, raw_value in raw_agg.items():
            parts = raw_field.decode().split("|")
            counts = out.setdefault(parts[0], VariantCounts())
            value = float(raw_value)
            if len(parts) == 3 and parts[1] == "lat":
                counts.latency_buckets[float(parts[2])] = int(value)
            elif len(parts) == 3:
                counts.versions.setdefault(parts[1], {})[parts[2]] = value
            elif len(parts) == 2 and hasattr(counts, parts[1]):
                current = getattr(counts, parts[1])
                setattr(counts, parts[1], int(value) if isinstance(current, int) else value)
        return Aggregates(name, out)

    def reset(self, name: str) -> int:
        """Delete experiment ``name``'s counts (a new run); keys deleted."""
        keys = list(self.client.scan_iter(match=_prefix(name).replace("{", "\\{")
                                          .replace("}", "\\}") + "*", count=1000))
        self.client.srem(NAMES_KEY, name)
        return int(self.client.delete(*keys)) if keys else 0  # type: ignore[arg-type]


def latency_field(variant: str, ms: float) -> str:
    """The counter of ``ms``'s histogram bucket for ``variant``.

    >>> latency_field("als", 3.2), latency_field("als", 9e9)
    ('als|lat|5', 'als|lat|inf')
    """
    for upper in LATENCY_BUCKETS_MS:
        if ms <= upper:
            return f"{variant}|lat|{upper:g}"
    return f"{variant}|lat|{math.inf:g}"
