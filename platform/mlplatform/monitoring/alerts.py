"""Alerts: one table of conditions, evaluated by the console and written as Prometheus rules.

Every condition names the console reading it tests (``Reading.metric``: figures the
console derives from its scrapes, drift reports and Redis), a comparison, a threshold
and the PromQL expression ``monitoring/alerts.yml`` carries for teams that run
Prometheus (a test keeps the two in step). ``evaluate`` is pure: readings in, firing
alerts out. ``Notifier`` posts each alert that newly fires to ``MLSUITE_ALERT_WEBHOOK``
(an Alertmanager-shaped JSON body); with several console processes, a Redis ``SET NX``
per alert makes sure only one of them posts it.

>>> firing = evaluate([Reading("error_rate", {"service": "fraud"}, 0.2),
...                    Reading("error_rate", {"service": "recommender"}, 0.0)])
>>> [(a.name, a.labels["service"], a.value) for a in firing]
[('HighErrorRate', 'fraud', 0.2)]
"""

from __future__ import annotations

import json
import logging
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

__all__ = ["Condition", "Reading", "Alert", "CONDITIONS", "evaluate", "Notifier",
           "webhook_body"]

log = logging.getLogger(__name__)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Condition:
    """An alert: fires for each reading of ``metric`` where ``value <op> threshold``."""

    name: str
    metric: str
    op: str
    threshold: float
    severity: str
    summary: str  # formatted with the reading's labels, value and the threshold
    expr: str  # the same condition in PromQL (monitoring/alerts.yml)
    for_: str = "5m"

    def fires(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Reading:
    """One measured value the conditions look at, e.g. ``error_rate{service="fraud"}``."""

    metric: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    labels: dict[str, str]
    value: float
    threshold: float
    summary: str
    since: float = field(default=0.0, compare=False)

    @property
    def key(self) -> str:
        """Identity of an alert across evaluations: its name and labels."""
        return self.name + json.dumps(self.labels, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "severity": self.severity, "labels": self.labels,
                "value": self.value, "threshold": self.threshold, "summary": self.summary,
                "since": self.since}


_ERR = 'status=~"5..",endpoint!~"/metrics|/healthz|/readyz"'
_ALL = 'endpoint!~"/metrics|/healthz|/readyz"'

CONDITIONS: tuple[Condition, ...] = (
    Condition("ServiceDown", "service_up", "==", 0, "critical",
              "{service} does not answer its /metrics", 'up{job=~"mlsuite.*"} == 0', "1m"),
    Condition("HighErrorRate", "error_rate", ">", 0.05, "critical",
              "{service}: {value:.1%} of requests fail with a 5xx (limit {threshold:.0%})",
              f"sum by (service) (rate(mlsuite_http_requests_total{{{_ERR}}}[5m])) / "
              f"sum by (service) (rate(mlsuite_http_requests_total{{{_ALL}}}[5m])) > 0.05"),
    Condition("HighLatencyP99", "p99_seconds", ">", 0.25, "warning",
              "{service}: p99 latency {value:.3f} s (limit {threshold} s)",
              "histogram_quantile(0.99, sum by (service, le) (rate("
              f"mlsuite_http_request_duration_seconds_bucket{{{_ALL}}}[5m]))) > 0.25"),
    Condition("FeatureDrift", "feature_drifted", "==", 1, "warning",
              "{service}: input feature {feature} drifted from the training reference",
              "mlsuite_feature_drifted == 1", "10m"),
    Condition("DatasetDrift", "drift_share", ">=", 0.5, "critical",
              "{service}: {value:.0%} of input features drifted",
              "mlsuite_feature_drift_share >= 0.5", "10m"),
    Condition("OnlineRocAucDrop", "online_roc_auc", "<", 0.7, "critical",
              "fraud: online ROC AUC {value:.3f} below {threshold}",
              'mlsuite_fraud_online_quality{metric="roc_auc"} < 0.7', "15m"),
    Condition("LabelLagHigh", "label_lag_p90_seconds", ">", 45 * 86400.0, "warning",
              "fraud: 90% of labels arrive within {value:.0f} s (limit 45 days)",
              "histogram_quantile(0.9, sum by (le) (rate("
              "mlsuite_fraud_label_lag_seconds_bucket[1h]))) > 3888000", "30m"),
    Condition("StreamBacklog", "stream_backlog", ">", 10_000, "warning",
              "{stream}: group {group} is {value:.0f} entries behind",
              "mlsuite_stream_backlog > 10000", "10m"),
    Condition("RedisDown", "redis_up", "==", 0, "critical",
              "Redis does not answer", "mlsuite_redis_up == 0", "1m"),
    # Streams grow with rate x retention (a fraud decision record is about 1.9 KB): at its
    # maxmemory Redis refuses writes, and scoring fails closed.
    Condition("RedisMemoryHigh", "redis_memory_used", ">", 0.8, "warning",
              "Redis uses {value:.0%} of the memory it may use (maxmemory, else the "
              "machine's): lower the streams' retention or give it more",
              "mlsuite_redis_used_memory_bytes / mlsuite_redis_memory_limit_bytes > 0.8", "5m"),
    Condition("DeadLetters", "dead_letters", ">", 0, "warning",
              "{stream}: {value:.0f} entries of group {group} went to the dead-letter stream",
              "increase(mlsuite_stream_dead_letters_total[10m]) > 0", "0m"),
)


def evaluate(readings: Iterable[Reading], conditions: Sequence[Condition] = CONDITIONS,
             now: float | None = None) -> list[Alert]:
    """The alerts ``readings`` set off, in the order of ``conditions``.

    >>> evaluate([Reading("redis_up", {}, 0.0), Reading("stream_backlog",
    ...           {"stream": "s", "group": "g"}, 5.0)])[0].summary
    'Redis does not answer'
    """
    at = time.time() if now is None else now
    by_metric: dict[str, list[Reading]] = {}
    for r in readings:
        by_metric.setdefault(r.metric, []).append(r)
    out = []
    for c in conditions:
        for r in by_metric.get(c.metric, []):
            if r.value is None or not c.fires(r.value):
                continue
            labels = dict(r.labels)
            text = c.summary.format_map(_Defaults(labels, value=r.value, threshold=c.threshold))
            out.append(Alert(c.name, c.severity, labels, r.value, c.threshold, text, at))
    return out


class _Defaults(dict[str, Any]):
    def __init__(self, labels: Mapping[str, str], **extra: Any) -> None:
        super().__init__({**labels, **extra})

    def __missing__(self, key: str) -> str:
        return "?"


def webhook_body(alert: Alert, console_url: str = "") -> dict[str, Any]:
    """An Alertmanager-shaped webhook body for one newly firing alert."""
    return {"version": "4", "status": "firing", "receiver": "mlsuite-console",
            "alerts": [{"status": "firing",
                        "labels": {"alertname": alert.name, "severity": alert.severity,
                                   **alert.labels},
                        "annotations": {"summary": alert.summary},
                        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alert.since)),
                        "generatorURL": console_url, "value": alert.value,
                        "threshold": alert.threshold}]}


class Notifier:
    """Remembers what fires; posts each alert once when it starts firing."""

    KEY = "mlsuite:console:alert:"

    def __init__(self, webhook: str | None, client: redis.Redis | None = None,
                 timeout: float = 3.0, console_url: str = "") -> None:
        self.webhook = webhook
        self.client = client
        self.timeout = timeout
        self.console_url = console_url
        self.firing: dict[str, Alert] = {}
        self.posted = 0
        self.failed = 0

    def update(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Record the currently firing ``alerts``; post and return the new ones."""
        current = {a.key: a for a in alerts}
        new = [a for k, a in current.items() if k not in self.firing]
        for key in set(self.firing) - set(current):
            self._release(key)
        # An alert keeps the time it started firing.
        self.firing = {k: self.firing.get(k, a) for k, a in current.items()}
        for alert in new:
            if self._claim(alert.key):
                self._post(alert)
        return new

    def _claim(self, key: str) -> bool:
        if self.client is None:
            return True
        try:
            return bool(self.client.set(self.KEY + key, str(time.time()), nx=True, ex=86_400))
        except redis.RedisError:
            return True  # better twice than never: Redis down is itself an alert

    def _release(self, key: str) -> None:
        if self.client is not None:
            try:
                self.client.delete(self.KEY + key)
            except redis.RedisError:
                pass

    def _post(self, alert: Alert) -> None:
        if not self.webhook:
            return
        try:
            reply = httpx.post(self.webhook, json=webhook_body(alert, self.console_url),
                               timeout=self.timeout)
            reply.raise_for_status()
            self.posted += 1
            log.info("alert %s posted to the webhook", alert.key)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("alert %s: webhook %s failed: %s", alert.key, self.webhook, exc)
