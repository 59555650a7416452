"""Per-model-version metrics in Redis: what the rollout controller reads.

Request workers count, per model version and role (``live``: it answered the request;
``shadow``: it scored a copy off the response path), requests, errors, a latency
histogram and the business guards each app reports (``observe(metric, value, n)``:
a sum and a count, so ``conversion`` is conversions / exposures, ``decline_rate``
declines / decisions). Counting is an in-process dict increment; a daemon thread flushes
the totals every ``flush_seconds`` as one pipeline of ``HINCRBY`` into one hash per
version, role and second::

    mlsuite:rollout:{<name>}:m:<version>:<role>:<epoch second>
        requests, errors, lat:<bucket index>, sum:<metric>, n:<metric>

so a request never waits on Redis for its metrics, and the controller sums the seconds
of its window (one pipelined ``HGETALL`` per second) whichever worker wrote them. Keys
expire after a day.

>>> p99_ms({0: 98, 5: 2}), p99_ms({})
(7.5, None)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import redis

from mlplatform.rollouts.machine import Measurements

__all__ = ["LATENCY_MS", "MetricsRecorder", "read_measurements", "p99_ms", "metrics_key",
           "count_guard"]

log = logging.getLogger(__name__)

# Upper bounds (ms) of the latency buckets; the last one is everything slower.
LATENCY_MS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
              2500.0, math.inf)
KEY_TTL_SECONDS = 86_400
MAX_WINDOW_SECONDS = 3_600  # a window longer than this is read from its last hour


def metrics_key(name: str, version: int, role: str, second: int) -> str:
    # The hash tag keeps one rollout's keys on one Redis Cluster slot.
    return f"mlsuite:rollout:{{{name}}}:m:{version}:{role}:{second}"


def _bucket(ms: float) -> int:
    for i, bound in enumerate(LATENCY_MS):
        if ms <= bound:
            return i
    return len(LATENCY_MS) - 1


def p99_ms(histogram: Mapping[int, int], q: float = 0.99) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (conservative)."""
    total = sum(histogram.values())
    if not total:
        return None
    need, seen = q * total, 0
    for i in sorted(histogram):
        seen += histogram[i]
        if seen >= need:
            bound = LATENCY_MS[min(i, len(LATENCY_MS) - 1)]
            return bound if math.isfinite(bound) else LATENCY_MS[-2] * 2
    return None


class MetricsRecorder:
    """Counts per version in memory and flushes them to Redis in the background."""

    def __init__(self, client: redis.Redis, *, flush_seconds: float = 0.25) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._pending: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float))
        self._pid = 0
        self._stop = threading.Event()

    def request(self, name: str, version: int, latency_s: float, *, error: bool = False,
                role: str = "live", n: int = 1, at: float | None = None) -> None:
        """``n`` requests (a batch's units) answered by ``version`` in ``latency_s``."""
        key = metrics_key(name, version, role, int(time.time() if at is None else at))
        with self._lock:
            fields = self._pending[key]
            fields["requests"] += n
            if error:
                fields["errors"] += n
            fields[f"lat:{_bucket(latency_s * 1000)}"] += n
        self._ensure_thread()

    def observe(self, name: str, version: int, metric: str, value: float, n: float = 1,
                *, role: str = "live", at: float | None = None) -> None:
        """A business guard: ``value`` summed over ``n`` units (rate = sum / n)."""
        key = metrics_key(name, version, role, int(time.time() if at is None else at))
        with self._lock:
            fields = self._pending[key]
            fields[f"sum:{metric}"] += value
            fields[f"n:{metric}"] += n
        self._ensure_thread()

    def flush(self) -> int:
        """Write what was counted so far (one pipeline); the number of keys written."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, fields in pending.items():
            for name, value in fields.items():
                if name.startswith("sum:") or value != int(value):
                    pipe.hincrbyfloat(key, name, value)
                else:
                    pipe.hincrby(key, name, int(value))
            pipe.expire(key, KEY_TTL_SECONDS)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # metrics are best effort: never fail a request
            log.warning("rollout metrics not written (%d keys): %s", len(pending), exc)
            return 0
        return len(pending)

    def stop(self) -> None:
        self._stop.set()
        self.flush()

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            threading.Thread(target=self._run, name="rollout-metrics", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()


def count_guard(pipe: Any, name: str, version: int, metric: str, value: float, n: float = 1.0,
                *, role: str = "live", at: float | None = None) -> None:
    """Add a business guard's ``value`` over ``n`` units into ``pipe`` (a pipeline or a
    consumer's transaction: the count then commits with the entry's ack, exactly once).

    For the guards computed by stream consumers: precision and recall as labels arrive,
    conversion as attribution credits a version (``value`` conversions of ``n`` exposures).
    """
    key = metrics_key(name, version, role, int(time.time() if at is None else at))
    if value:
        pipe.hincrbyfloat(key, f"sum:{metric}", float(value))
    if n:
        pipe.hincrbyfloat(key, f"n:{metric}", float(n))
    pipe.expire(key, KEY_TTL_SECONDS)


def read_measurements(client: redis.Redis, name: str, version: int, since: float,
                      until: float, *, role: str = "live", smoke: str | None = None
                      ) -> Measurements:
    """The sums of ``version``'s per-second hashes in [since, until]."""
    first = int(max(since, until - MAX_WINDOW_SECONDS))
    seconds = range(first, int(until) + 1)
    pipe = client.pipeline(transaction=False)
    for s in seconds:
        pipe.hgetall(metrics_key(name, version, role, s))
    totals: defaultdict[str, float] = defaultdict(float)
    for reply in pipe.execute():
        for k, v in reply.items():
            totals[k.decode()] += float(v)
    hist = {int(k[4:]): int(v) for k, v in totals.items() if k.startswith("lat:")}
    values: dict[str, Any] = {}
    for k, v in totals.items():
        if k.startswith("sum:"):
            n = totals.get(f"n:{k[4:]}", 0.0)
            if n > 0:
                values[k[4:]] = v / n
    return Measurements(requests=int(totals.get("requests", 0)),
                        errors=int(totals.get("errors", 0)), p99_ms=p99_ms(hist),
                        values=values, smoke=smoke)
