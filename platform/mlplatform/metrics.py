"""Monitoring: the Prometheus metrics every service shares, correct across worker processes.

The serving layer sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts worker processes;
prometheus-client then keeps every value in a per-process file, and ``/metrics``
aggregates all of them, so a scrape sees the whole service, not one random worker.
In a single process (tests, the CLI) the default registry is used as is.

Services define their own metrics with prometheus-client, named ``mlsuite_<service>_*``.

``render`` adds what is read at scrape time rather than recorded
(``mlplatform.monitoring.resources``): CPU and memory of every process of the service,
and Redis memory, stream lengths and backlogs. Every process importing this module marks
itself in the multiprocess folder (``mlsuite_process_start_time_seconds``), which is how
the scraping process finds the others, the idle ones included.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mlplatform.monitoring.resources import ProcessCollector, RedisCollector, reap

__all__ = [
    "LATENCY_BUCKETS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "ERRORS",
    "MODEL_INFO",
    "PROCESS_START",
    "set_model_info",
    "render",
    "multiprocess_enabled",
]

# Fine-grained below 10 ms: the hot paths answer in about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)

REQUESTS = Counter(
    "mlsuite_http_requests_total", "HTTP requests by endpoint and status",
    ["service", "endpoint", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "mlsuite_http_request_duration_seconds", "HTTP request latency",
    ["service", "endpoint", "method"], buckets=LATENCY_BUCKETS,
)
ERRORS = Counter(
    "mlsuite_http_errors_total", "HTTP error responses by error code",
    ["service", "endpoint", "code"],
)
# "mostrecent": after a hot swap every process writes the new version, so the
# aggregate shows the version being served, not a mix of stale per-process values.
MODEL_INFO = Gauge(
    "mlsuite_model_info", "Model version being served (1 = serving)",
    ["service", "model", "version"], multiprocess_mode="mostrecent",
)

# "liveall": one value per live process (a pid label); a dead process's file is removed
# at the next scrape (resources.reap). Set at import so that even a worker that has not
# served a request yet has a file the scraping process finds.
PROCESS_START = Gauge(
    "mlsuite_process_start_time_seconds", "Start time of each process of the service (epoch)",
    multiprocess_mode="liveall",
)
PROCESS_START.set(psutil.Process().create_time())

_current_model: dict[tuple[str, str], str] = {}


def set_model_info(service: str, model: str, version: str) -> None:
    """Record that ``service`` now serves ``model`` at ``version`` (and no longer the old one)."""
    previous = _current_model.get((service, model))
    if previous is not None and previous != version:
        MODEL_INFO.labels(service, model, previous).set(0)
    MODEL_INFO.labels(service, model, version).set(1)
    _current_model[(service, model)] = version


def multiprocess_enabled() -> bool:
    """Whether this process's values live in the multiprocess folder's files.

    prometheus-client decides that once, when it is imported; the environment can say
    otherwise later (importing Feast sets ``PROMETHEUS_MULTIPROC_DIR`` to a temporary
    folder of its own), and reading that folder would then show none of our values.
    """
    return values.ValueClass is not values.MutexValue


def render(service: str | None = None,
           client: redis.Redis | None = None) -> tuple[bytes, str]:
    """The exposition text of all processes of this service, and its content type.

    ``service`` and ``client`` (the service's Redis) default to the Flask app serving the
    request, so the ``/metrics`` view needs no arguments.
    """
    if service is None:
        service, client = _from_app()
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if multiprocess_enabled() else None
    extras: list[Collector] = []
    if service:
        extras.append(ProcessCollector(service, Path(folder) if folder else None))
    if client is not None:
        extras.append(_redis_collector(client))
    if folder:
        reap(Path(folder))  # before reading: a dead process's live gauges are dropped
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(_Scrape(registry, extras)), CONTENT_TYPE_LATEST
    return generate_latest(_Scrape(REGISTRY, extras)), CONTENT_TYPE_LATEST


class _Scrape:
    """Recorded metrics plus the scrape-time collectors; a scrape-time family replaces a
    recorded one of the same name (the retention job's ``mlsuite_stream_length`` is only
    as fresh as its last run; the scrape reads the stream now)."""

    def __init__(self, recorded: CollectorRegistry, extras: list[Collector]) -> None:
        self.recorded = recorded
        self.extras = extras

    def collect(self) -> Iterator[Metric]:
        fresh = [m for c in self.extras for m in c.collect()]
        names = {m.name for m in fresh}
        for metric in self.recorded.collect():
            if metric.name not in names:
                yield metric
        yield from fresh


_redis_collectors: dict[int, RedisCollector] = {}


def _redis_collector(client: redis.Redis) -> RedisCollector:
    # One per client: it keeps the stream list between scrapes.
    collector = _redis_collectors.get(id(client))
    if collector is None or collector.client is not client:
        collector = _redis_collectors[id(client)] = RedisCollector(client)
    return collector


def _from_app() -> tuple[str | None, redis.Redis | None]:
    from flask import current_app, has_app_context

    if not has_app_context():
        return None, None
    ext = current_app.extensions
    return ext.get("mlsuite.service"), ext.get("mlsuite.redis")
