"""A short in-memory ring of scrapes per service, and the figures the console derives from it.

Each point of a service's series compares two consecutive scrapes: requests/s, p50 and
p99 latency (from the histogram's bucket deltas), the share of 5xx responses, CPU% (from
the processes' CPU seconds) and resident memory. Health and metrics requests (the
console's own scrapes among them) are left out of traffic, so an idle service reads 0.

>>> from mlplatform.monitoring.scrape import parse
>>> h = History(maxlen=10)
>>> body = '''mlsuite_http_requests_total{service="f",endpoint="/v1/s",method="POST",status="200"} %d
... mlsuite_http_requests_total{service="f",endpoint="/metrics",method="GET",status="200"} %d
... mlsuite_process_cpu_seconds{service="f",pid="1"} %f
... mlsuite_process_resident_memory_bytes{service="f",pid="1"} 1000
... '''
>>> h.add(Scrape("fraud", 0.0, parse(body % (0, 0, 1.0))))
>>> h.add(Scrape("fraud", 2.0, parse(body % (50, 1, 1.5))))
>>> p = h.series("fraud")[-1]
>>> p["rps"], p["cpu_percent"], p["memory_bytes"]
(25.0, 25.0, 1000.0)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from mlplatform.monitoring.scrape import Scrape, bucket_deltas, quantile, rate, total

__all__ = ["History", "OPS_ENDPOINTS", "point", "window_summary"]

OPS_ENDPOINTS = frozenset({"/metrics", "/healthz", "/readyz"})
REQUESTS = "mlsuite_http_requests_total"
LATENCY = "mlsuite_http_request_duration_seconds"
CPU = "mlsuite_process_cpu_seconds"
MEMORY = "mlsuite_process_resident_memory_bytes"


def _traffic(labels: Mapping[str, str]) -> bool:
    return labels.get("endpoint") not in OPS_ENDPOINTS


def _server_error(labels: Mapping[str, str]) -> bool:
    return _traffic(labels) and labels.get("status", "").startswith("5")


def point(a: Scrape, b: Scrape) -> dict[str, Any]:
    """The figures between two scrapes of one service (None where not measurable)."""
    if not b.up:
        return {"t": b.at, "up": False, "rps": None, "p50": None, "p99": None,
                "error_rate": None, "cpu_percent": None, "memory_bytes": None}
    rps = rate(a, b, REQUESTS, _traffic)
    errors = rate(a, b, REQUESTS, _server_error)
    deltas = bucket_deltas(a, b, LATENCY, _traffic) if a.up else []
    cpu = rate(a, b, CPU)
    return {
        "t": b.at, "up": True, "rps": rps,
        "p50": quantile(0.5, deltas), "p99": quantile(0.99, deltas),
        "error_rate": round(errors / rps, 6) if rps and errors is not None else (
            0.0 if rps == 0 else None),
        "cpu_percent": round(cpu * 100, 2) if cpu is not None else None,
        "memory_bytes": total(b.samples, MEMORY),
    }


def window_summary(a: Scrape, b: Scrape) -> dict[str, Any]:
    """Like ``point`` but over a longer span (the headline figures and alert inputs)."""
    summary = point(a, b)
    summary["since"] = a.at
    return summary


class History:
    """Scrapes per service, newest last, at most ``maxlen`` each; safe across threads."""

    def __init__(self, maxlen: int = 150) -> None:
        self._rings: dict[str, deque[Scrape]] = {}
        self._lock = threading.Lock()
        self.maxlen = maxlen

    def add(self, scrape: Scrape) -> None:
        with self._lock:
            self._rings.setdefault(scrape.service, deque(maxlen=self.maxlen)).append(scrape)

    def scrapes(self, service: str) -> list[Scrape]:
        with self._lock:
            return list(self._rings.get(service, ()))

    def latest(self, service: str) -> Scrape | None:
        ring = self.scrapes(service)
        return ring[-1] if ring else None

    def series(self, service: str) -> list[dict[str, Any]]:
        """One point per consecutive pair of scrapes, oldest first."""
        ring = self.scrapes(service)
        return [point(a, b) for a, b in zip(ring, ring[1:])]

    def summary(self, service: str, window_seconds: float = 30.0) -> dict[str, Any] | None:
        """Figures over about the last ``window_seconds`` (from the oldest scrape in it that
        succeeded); None before two scrapes."""
        ring = self.scrapes(service)
        if len(ring) < 2:
            return None
        newest = ring[-1]
        start = next((s for s in ring if s.up and s.at >= newest.at - window_seconds
                      and s is not newest), ring[-2])
        return window_summary(start, newest)
