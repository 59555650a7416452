"""The console's panels as JSON: what each part of the page shows, built from the collector.

Each function reads what the ``Collector`` last saw (and the registry, rollouts and
experiments, which it reads on call) and returns plain data. A store that cannot be
read becomes ``{"available": false, "reason": ...}`` in its panel, never an exception.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from mlplatform.monitoring.collector import Collector
from mlplatform.monitoring.scrape import (
    Scrape,
    bucket_deltas,
    buckets,
    label_is,
    quantile,
    rate,
    total,
)
from mlplatform.registry import ModelRegistry

__all__ = ["now", "services", "models", "rollouts", "experiments", "fraud", "recommender",
           "drift_summary", "alerts", "columns"]

log = logging.getLogger(__name__)

SERIES_KEYS = ("rps", "p50", "p99", "error_rate", "cpu_percent", "memory_bytes")
QUALITY = ("precision", "recall", "roc_auc")
BUSINESS = {"loss_prevented": "mlsuite_fraud_loss_prevented_amount_total",
            "loss": "mlsuite_fraud_loss_amount_total",
            "false_declines": "mlsuite_fraud_false_decline_amount_total"}


def now() -> float:
    return round(time.time(), 3)


def columns(points: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list[Any]]:
    """Points as columns (uPlot's data layout): ``{"t": [...], key: [...]}``.

    >>> columns([{"t": 1, "a": 2}, {"t": 3, "a": None}], ("a",))
    {'t': [1, 3], 'a': [2, None]}
    """
    return {"t": [p["t"] for p in points], **{k: [p.get(k) for p in points] for k in keys}}


def services(c: Collector) -> dict[str, Any]:
    out = {}
    for service, url in c.urls.items():
        latest = c.history.latest(service)
        out[service] = {
            "url": url,
            "up": None if latest is None else latest.up,
            "error": None if latest is None else latest.error,
            "summary": c.history.summary(service),
            "series": columns(c.history.series(service), SERIES_KEYS),
        }
    return out


def _registry(c: Collector) -> ModelRegistry:
    return ModelRegistry(c.settings.data_dir / "models")


def models(c: Collector) -> dict[str, Any]:
    """What each service says it serves, and every registered model's aliases."""
    registry = _registry(c)
    registered = {}
    for name in registry.names():
        versions = registry.versions(name)
        registered[name] = {"aliases": registry.aliases(name),
                            "versions": len(versions),
                            "latest": versions[-1].version if versions else None}
    served = {}
    for service, info in c.models.items():
        keep = ("up", "error", "model", "model_version", "name", "version", "alias", "kind",
                "created_at", "labels_learned", "online_metrics", "variants", "rollout")
        served[service] = {k: info[k] for k in keep if k in info}
    return {"served": served, "registered": registered}


def rollouts(c: Collector) -> dict[str, Any]:
    """Every model's rollout document with its transition history (newest rollout per model)."""
    if c.client is None:
        return {"available": False, "reason": "no Redis configured"}
    from mlplatform.rollouts.store import RolloutStore

    store = RolloutStore(c.client, _registry(c))
    try:
        active = set(store.active())
        docs = {}
        for name in sorted(set(_registry(c).names()) | active):
            rollout = store.get(name)
            if rollout is not None:
                docs[name] = {**rollout.to_dict(), "active": name in active}
    except (redis.RedisError, ValueError, KeyError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "items": docs}


def experiments(c: Collector) -> dict[str, Any]:
    """The recommender's experiments (per-variant exposures, conversion, lift with its
    95% interval) and attributed conversions and revenue per variant."""
    return {**_experiment_reports(c), "attributed": recommender(c)}


def _experiment_reports(c: Collector) -> dict[str, Any]:
    if c.client is None:
        return {"available": False, "reason": "no Redis configured", "items": {}}
    from mlplatform.experiments import report_for
    from mlplatform.experiments.definition import load_definitions
    from mlplatform.experiments.store import ExperimentStore

    try:
        definitions = load_definitions(c.settings.experiments_file)
        store = ExperimentStore(c.client)
        items = {name: report_for(store, d).to_json() for name, d in sorted(definitions.items())}
    except (redis.RedisError, OSError, ValueError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "items": {}}
    return {"available": True, "items": items}


def recommender(c: Collector) -> dict[str, Any]:
    latest = c.history.latest("recommender")
    if latest is None or not latest.up:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key, metric in (("conversions", "mlsuite_recommender_attributed_conversions_total"),
                        ("revenue", "mlsuite_recommender_attributed_revenue_total")):
        for (name, labels), value in latest.samples.items():
            if name == metric:
                variant = dict(labels).get("variant", "?")
                out.setdefault(variant, {})[key] = out.get(variant, {}).get(key, 0.0) + value
    return out


def fraud(c: Collector) -> dict[str, Any]:
    """Score distribution, decisions per minute, online quality, label lag, review queue and
    the business amounts, from the fraud service's last scrapes."""
    ring = c.history.scrapes("fraud")
    latest = ring[-1] if ring else None
    if latest is None or not latest.up:
        return {"up": False if latest else None}
    s = latest.samples
    window = [x for x in ring if x.up and x.at >= latest.at - 60.0]
    first = window[0] if window else latest
    per_min = {}
    for (name, labels), _ in s.items():
        if name == "mlsuite_fraud_decisions_total":
            d = dict(labels)["decision"]
            r = rate(first, latest, name, label_is("decision", d))
            per_min[d] = None if r is None else round(r * 60, 2)
    lag = buckets(s, "mlsuite_fraud_label_lag_seconds")
    info = c.models.get("fraud", {})
    business: dict[str, dict[str, float]] = {}
    for key, metric in BUSINESS.items():
        for (name, labels), value in s.items():
            if name == metric:
                version = dict(labels).get("model_version", "?")
                business.setdefault(version, {})[key] = value
    return {
        "up": True,
        "scores": _score_histogram(ring, latest),
        "decisions_per_minute": per_min,
        "decisions_total": {dict(lab)["decision"]: v for (n, lab), v in s.items()
                            if n == "mlsuite_fraud_decisions_total"},
        "decisions_series": _decision_series(ring),
        "online": {m: total(s, "mlsuite_fraud_online_quality", label_is("metric", m))
                   for m in QUALITY},
        "labels_learned": info.get("labels_learned"),
        "label_lag_seconds": {"p50": quantile(0.5, lag), "p90": quantile(0.9, lag),
                              "count": lag[-1][1] if lag else 0},
        "reviews": {"open": total(s, "mlsuite_fraud_reviews_open"),
                    "overdue": total(s, "mlsuite_fraud_reviews_overdue")},
        "business": business,
    }


def _score_histogram(ring: list[Scrape], latest: Scrape) -> dict[str, Any]:
    """Scores per bucket (not cumulative): over the ring's span when scores were served in
    it, else since the service started."""
    first = next((x for x in ring if x.up), latest)
    cumulative = bucket_deltas(first, latest, "mlsuite_fraud_score") if first is not latest else []
    span = "recent"
    if not cumulative or cumulative[-1][1] <= 0:
        cumulative, span = buckets(latest.samples, "mlsuite_fraud_score"), "since start"
    edges, counts, below = [], [], 0.0
    for le, count in cumulative:
        edges.append(le if le != float("inf") else None)
        counts.append(count - below)
        below = count
    return {"le": edges, "counts": counts, "span": span}


def _decision_series(ring: list[Scrape]) -> dict[str, list[Any]]:
    points = []
    for a, b in zip(ring, ring[1:]):
        r = rate(a, b, "mlsuite_fraud_decisions_total")
        points.append({"t": b.at, "per_minute": None if r is None else round(r * 60, 2)})
    return columns(points, ("per_minute",))


def drift_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    """A drift report as the page's table needs it (features sorted, drifted first)."""
    if report is None:
        return {"available": False, "reason": "drift: not computed yet"}
    if not report.get("available"):
        return report
    features = sorted(report.get("features", {}).items(),
                      key=lambda kv: (not kv[1].get("drifted"), kv[0]))
    keep = ("model", "window", "rows", "enough_data", "drift_share", "drifted",
            "dataset_drift", "at")
    return {"available": True, **{k: report.get(k) for k in keep},
            "features": [{"name": n, **{k: f.get(k) for k in (
                "kind", "statistic", "value", "threshold", "drifted", "not_judged")}}
                         for n, f in features]}


def alerts(c: Collector) -> dict[str, Any]:
    firing = sorted(c.firing(), key=lambda a: (a.severity != "critical", a.name))
    return {"firing": [a.to_dict() for a in firing], "webhook": bool(c.notifier.webhook),
            "posted": c.notifier.posted, "failed": c.notifier.failed}
