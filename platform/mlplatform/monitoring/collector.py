"""What the console knows: a background loop scraping the services, drift, Redis and alerts.

``Collector.tick`` scrapes every service's ``/metrics`` and ``/v1/model`` over HTTP (a
service that does not answer is recorded as down, with the reason), pings Redis, every
``drift_seconds`` takes each service's drift report (the one its worker published, while
at most two minutes old; else computed here with ``mlplatform.monitoring.driftreport``,
imported lazily: without it the console says "not available"), turns all
of that into alert readings and lets the ``Notifier`` post what newly fires. A daemon
thread calls it every ``interval`` seconds; views only read its results.

Each console process runs its own loop (they are cheap: one GET per service every few
seconds); the webhook is deduplicated across processes in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from mlplatform.config import Settings
from mlplatform.monitoring.alerts import Alert, Notifier, Reading, evaluate
from mlplatform.monitoring.history import History
from mlplatform.monitoring.resources import redis_memory
from mlplatform.monitoring.scrape import Scrape, buckets, label_is, parse, quantile, total
from mlplatform.security.keys import bearer

__all__ = ["Collector", "SERVICES", "published_drift", "readings"]

log = logging.getLogger(__name__)

SERVICES = ("recommender", "fraud")


class Collector:
    """Scrapes and evaluates on a timer; every result is kept for the views."""

    def __init__(self, settings: Settings, client: redis.Redis | None, *,
                 interval: float = 2.0, drift_seconds: float = 15.0,
                 services: tuple[str, ...] = SERVICES, timeout: float = 2.0) -> None:
        self.settings = settings
        self.client = client
        self.interval = interval
        self.drift_seconds = drift_seconds
        # A worker's published drift report younger than this is shown as it is (two of
        # its rounds: ``driftreport.INTERVAL_SECONDS``).
        self.published_seconds = 120.0
        self.services = services
        self.urls = {s: settings.service_url(s) for s in services}
        self.history = History(maxlen=max(30, int(300 / interval)))
        # /metrics is open; /v1/model needs a key (scopes score, recommend) when the
        # services check keys: the console's own, if one is configured.
        self.http = httpx.Client(timeout=timeout, headers=bearer(settings.api_key))
        self.models: dict[str, dict[str, Any]] = {}
        self.drift: dict[str, dict[str, Any]] = {}
        self.redis: dict[str, Any] = {"up": None}
        self.alerts: list[Alert] = []
        self.notifier = Notifier(settings.alert_webhook, client)
        self.ticks = 0
        self._drift_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background loop (once; a second call does nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="console-collector",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # the loop outlives any one bad scrape
                log.exception("console collector tick failed")
            self._stop.wait(max(0.1, self.interval - (time.monotonic() - started)))

    def tick(self, now: float | None = None) -> list[Alert]:
        """One round: scrape, read Redis, maybe drift, evaluate; returns new alerts."""
        at = time.time() if now is None else now
        for service, url in self.urls.items():
            self.history.add(self.scrape(service, url, at))
            self.models[service] = self._model(service, url)
        self.redis = self._redis_state()
        if at - self._drift_at >= self.drift_seconds:
            self._drift_at = at
            for service in self.services:
                self.drift[service] = self._drift(service, at)
        firing = evaluate(readings(self), now=at)
        with self._lock:
            new = self.notifier.update(firing)
            self.alerts = list(self.notifier.firing.values())
        self.ticks += 1
        if new:
            log.info("alerts firing: %s", ", ".join(a.key for a in new))
        return new

    # -- sources -----------------------------------------------------------------------

    def scrape(self, service: str, url: str, at: float) -> Scrape:
        try:
            reply = self.http.get(f"{url}/metrics")
            reply.raise_for_status()
            return Scrape(service, at, parse(reply.text))
        except (httpx.HTTPError, ValueError) as exc:
            return Scrape(service, at, {}, up=False, error=f"{type(exc).__name__}: {exc}")

    def _model(self, service: str, url: str) -> dict[str, Any]:
        try:
            reply = self.http.get(f"{url}/v1/model")
            reply.raise_for_status()
            return {"up": True, **reply.json()}
        except (httpx.HTTPError, ValueError) as exc:
            return {"up": False, "error": f"{type(exc).__name__}: {exc}"}

    def _redis_state(self) -> dict[str, Any]:
        if self.client is None:
            return {"up": None, "detail": "no Redis configured"}
        try:
            used, limit = redis_memory(self.client)
            return {"up": True, "used_memory_bytes": int(used), "memory_limit_bytes": int(limit)}
        except redis.RedisError as exc:
            return {"up": False, "detail": f"{type(exc).__name__}: {exc}"}

    def _drift(self, service: str, now: float) -> dict[str, Any]:
        """The service worker's published report while it is fresh (at most
        ``published_seconds`` old), else one computed here. A report over a busy window
        costs seconds of CPU (about 2.5 s for 50,000 decision records): every console
        process computing its own every ``drift_seconds`` would cost a sixth of a core
        each, for what the worker publishes every minute anyway."""
        published = published_drift(self.client, service, now, self.published_seconds)
        if published is not None:
            return published
        return drift_of(self.settings, service, self.client)

    def firing(self) -> list[Alert]:
        with self._lock:
            return list(self.alerts)


def published_drift(client: redis.Redis | None, service: str, now: float,
                    max_age: float) -> dict[str, Any] | None:
    """The worker's last published drift report of ``service`` if it is at most
    ``max_age`` seconds old at ``now`` (``{"available": True, ...}`` as ``drift_of``
    gives), else None: none published, too old, or unreadable."""
    if client is None:
        return None
    try:
        from mlplatform.monitoring import driftreport

        report = driftreport.latest(client, service)
    except Exception:  # noqa: BLE001 - no module, Redis down, bad JSON: compute instead
        return None
    if report is None:
        return None
    at = report.get("at")
    if not isinstance(at, (int, float)) or not 0 <= now - at <= max_age:
        return None
    return {"available": True, **report}


def drift_of(settings: Settings, service: str, client: redis.Redis | None,
             compute: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """``service``'s drift report, computed now; ``{"available": False, "reason"}`` when the
    drift module or a reference model is missing, or Redis fails."""
    try:
        from mlplatform.monitoring import driftreport
    except ImportError:
        return {"available": False, "reason": "drift: not available yet"}
    try:
        report = (compute or driftreport.drift_report)(settings, service, redis_client=client)
    except Exception as exc:  # no model, no reference, Redis down: a state to show
        return {"available": False, "reason": getattr(exc, "message", None) or str(exc)}
    return {"available": True, **report}


def readings(c: Collector) -> list[Reading]:
    """The alert inputs from what ``c`` last saw (see ``alerts.CONDITIONS``)."""
    out: list[Reading] = []
    for service in c.services:
        scrapes = c.history.scrapes(service)
        if not scrapes:
            continue
        latest = scrapes[-1]
        out.append(Reading("service_up", {"service": service}, 1.0 if latest.up else 0.0))
        summary = c.history.summary(service, window_seconds=60.0)
        if summary and summary["up"]:
            if summary["error_rate"] is not None:
                out.append(Reading("error_rate", {"service": service}, summary["error_rate"]))
            if summary["p99"] is not None:
                out.append(Reading("p99_seconds", {"service": service}, summary["p99"]))
        if latest.up:
            out.extend(_from_samples(latest, scrapes))
        report = c.drift.get(service) or {}
        if report.get("available"):
            out.append(Reading("drift_share", {"service": service}, float(report["drift_share"])))
            for name, feature in (report.get("features") or {}).items():
                if feature.get("drifted"):
                    out.append(Reading("feature_drifted", {"service": service, "feature": name},
                                       1.0))
    if c.redis.get("up") is not None:
        out.append(Reading("redis_up", {}, 1.0 if c.redis["up"] else 0.0))
    if c.redis.get("up") and c.redis.get("memory_limit_bytes"):
        out.append(Reading("redis_memory_used", {},
                           c.redis["used_memory_bytes"] / c.redis["memory_limit_bytes"]))
    return out


def _from_samples(latest: Scrape, scrapes: list[Scrape]) -> list[Reading]:
    out = []
    auc = total(latest.samples, "mlsuite_fraud_online_quality", label_is("metric", "roc_auc"))
    if auc is not None and auc > 0:  # 0 until enough labels arrived
        out.append(Reading("online_roc_auc", {}, auc))
    lag = quantile(0.9, buckets(latest.samples, "mlsuite_fraud_label_lag_seconds"))
    if lag is not None:
        out.append(Reading("label_lag_p90_seconds", {}, lag))
    for (name, labels), value in latest.samples.items():
        if name == "mlsuite_stream_backlog":
            out.append(Reading("stream_backlog", dict(labels), value))
    # Dead letters over the ring (about the last five minutes), per stream and group.
    first = next((s for s in scrapes if s.up), latest)
    for (name, labels), value in latest.samples.items():
        if name == "mlsuite_stream_dead_letters_total":
            before = first.samples.get((name, labels), 0.0) if first is not latest else 0.0
            grew = value - before if value >= before else value
            if grew > 0:
                out.append(Reading("dead_letters", dict(labels), grew))
    return out
