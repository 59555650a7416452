"""The monitoring console's JSON API: what each ``/api`` view answers (msgspec Structs), as
``/openapi.json`` publishes them.

The views build plain dicts (``mlplatform.monitoring.panels``), which the page's script
reads; these types describe that JSON without changing it, and
tests/mlplatform/test_console_contract.py converts every answer to its type. Where a part
is another component's document (a rollout, an experiment report, a served model's
``/v1/model``, Redis' state) it is typed ``dict[str, Any]`` and described, not restated:
its owner's contract may grow without this one going stale. The structs whose every key
the views write forbid unknown fields, so a key added to a view fails the test until it
is documented here.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from mlplatform.monitoring.collector import SERVICES
from mlplatform.openapi import Param

__all__ = [
    "AlertCondition", "Alerts", "Attributed", "DecisionSeries", "DriftFeature", "DriftReport",
    "DriftSummary", "DRIFT_PARAMS", "Experiments", "FiringAlert", "Fraud", "LabelLag", "Models",
    "Overview", "Registered", "Reviews", "Rollouts", "ScoreHistogram", "ServicePanel",
    "Series", "Services", "Summary",
]

Seconds = Annotated[float, msgspec.Meta(description="epoch seconds")]
Free = Annotated[dict[str, Any], msgspec.Meta(
    description="free-form: another component's document, passed through as it is")]


class Summary(msgspec.Struct, forbid_unknown_fields=True):
    """A service's headline figures over about the last 30 seconds (null where not
    measurable: the service is down, or no traffic)."""

    t: Seconds
    up: bool
    rps: float | None
    p50: Annotated[float | None, msgspec.Meta(description="seconds")]
    p99: Annotated[float | None, msgspec.Meta(description="seconds")]
    error_rate: Annotated[float | None, msgspec.Meta(description="5xx answers / answers")]
    cpu_percent: float | None
    memory_bytes: float | None
    since: Annotated[Seconds | None, msgspec.Meta(
        description="start of the window (absent on a down service)")] = None


class Series(msgspec.Struct, forbid_unknown_fields=True):
    """One point per pair of consecutive scrapes, as columns (uPlot's layout): ``t`` and
    each figure share an index; null where not measurable."""

    t: list[float]
    rps: list[float | None]
    p50: list[float | None]
    p99: list[float | None]
    error_rate: list[float | None]
    cpu_percent: list[float | None]
    memory_bytes: list[float | None]


class ServicePanel(msgspec.Struct, forbid_unknown_fields=True):
    """One model service as the console last scraped it (``up`` is null before a scrape)."""

    url: str
    up: bool | None
    error: str | None
    summary: Summary | None
    series: Series


RedisState = Annotated[dict[str, Any], msgspec.Meta(
    description="Redis as the collector last read it: up (true, false, or null when no "
                "Redis is configured), used_memory_bytes and memory_limit_bytes (maxmemory, "
                "else the machine's memory) when up, detail otherwise")]


class Services(msgspec.Struct, forbid_unknown_fields=True):
    """Every model service (by name) and Redis."""

    services: dict[str, ServicePanel]
    redis: RedisState


class Registered(msgspec.Struct, forbid_unknown_fields=True):
    """A registered model: its aliases (alias -> version), how many versions, the newest."""

    aliases: dict[str, int]
    versions: int
    latest: int | None


class Models(msgspec.Struct, forbid_unknown_fields=True):
    """What each service says it serves, and every registered model."""

    served: Annotated[dict[str, dict[str, Any]], msgspec.Meta(
        description="per service: up, and error or the fields of its /v1/model (model, "
                    "model_version, alias, kind, created_at, labels_learned, "
                    "online_metrics, variants, rollout) it reported")]
    registered: dict[str, Registered]


class ModelsAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """The served and registered models."""

    models: Models


class Rollouts(msgspec.Struct, forbid_unknown_fields=True):
    """The newest rollout of every model, or why they cannot be read."""

    available: bool
    reason: str | None = None
    items: Annotated[dict[str, dict[str, Any]] | None, msgspec.Meta(
        description="per model: the rollout document (state, version, share, steps, "
                    "checks, guards, history, ...) and active")] = None


class RolloutsAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """Every model's newest rollout."""

    rollouts: Rollouts


Attributed = Annotated[dict[str, dict[str, float]], msgspec.Meta(
    description="per recommender variant: attributed conversions and revenue (empty when "
                "the recommender is down)")]


class Experiments(msgspec.Struct, forbid_unknown_fields=True):
    """The recommender's experiments and attributed conversions per variant."""

    available: bool
    items: Annotated[dict[str, dict[str, Any]], msgspec.Meta(
        description="per experiment: its report (per-variant exposures, conversion, lift "
                    "with its 95% interval)")]
    attributed: Attributed
    reason: str | None = None


class ScoreHistogram(msgspec.Struct, forbid_unknown_fields=True):
    """Scores per bucket (not cumulative); ``le`` is the upper edge, null for +Inf."""

    le: list[float | None]
    counts: list[float]
    span: Annotated[str, msgspec.Meta(description="'recent' or 'since start'")]


class DecisionSeries(msgspec.Struct, forbid_unknown_fields=True):
    """Decisions per minute between consecutive scrapes, as columns."""

    t: list[float]
    per_minute: list[float | None]


class LabelLag(msgspec.Struct, forbid_unknown_fields=True):
    """Seconds from a transaction to its label."""

    p50: float | None
    p90: float | None
    count: float


class Reviews(msgspec.Struct, forbid_unknown_fields=True):
    """The review queue."""

    open: float | None
    overdue: float | None


class Fraud(msgspec.Struct, forbid_unknown_fields=True):
    """The fraud service's panel; every field but ``up`` is absent when it is not up
    (``up`` null before the first scrape)."""

    up: bool | None
    scores: ScoreHistogram | None = None
    decisions_per_minute: dict[str, float | None] | None = None
    decisions_total: dict[str, float] | None = None
    decisions_series: DecisionSeries | None = None
    online: Annotated[dict[str, float | None] | None, msgspec.Meta(
        description="online precision, recall and roc_auc")] = None
    labels_learned: Annotated[Any, msgspec.Meta(
        description="as the fraud service's /v1/model reports it")] = None
    label_lag_seconds: LabelLag | None = None
    reviews: Reviews | None = None
    business: Annotated[dict[str, dict[str, float]] | None, msgspec.Meta(
        description="per model version: loss_prevented, loss, false_declines amounts")] = None


class DriftFeature(msgspec.Struct, forbid_unknown_fields=True):
    """One feature's drift test."""

    name: str
    kind: str | None
    statistic: str | None
    value: float | None
    threshold: float | None
    drifted: bool | None
    # Why it was not judged (a time-of-day feature on a window shorter than a day).
    not_judged: str | None = None


class DriftSummary(msgspec.Struct, forbid_unknown_fields=True):
    """A service's latest drift report as the page's table needs it (features drifted
    first), or why there is none."""

    available: bool
    reason: str | None = None
    model: Annotated[str | None, msgspec.Meta(description="the served model's label")] = None
    window: Annotated[str | None, msgspec.Meta(description="the window, e.g. '1h'")] = None
    rows: int | None = None
    enough_data: bool | None = None
    drift_share: float | None = None
    drifted: Annotated[Any, msgspec.Meta(
        description="kept for the page; the report counts drifted features in "
                    "n_drifted (see /api/drift)")] = None
    dataset_drift: bool | None = None
    at: Seconds | None = None
    features: list[DriftFeature] | None = None


class DriftReport(msgspec.Struct):
    """A service's latest drift report in full (see mlplatform.monitoring.driftreport),
    or ``available: false`` and why."""

    service: str
    available: bool
    reason: str | None = None
    features: Annotated[dict[str, dict[str, Any]] | None, msgspec.Meta(
        description="per feature: kind, statistic, value, threshold, drifted and the "
                    "distributions compared")] = None


class FiringAlert(msgspec.Struct, forbid_unknown_fields=True):
    """An alert firing now."""

    name: str
    severity: str
    labels: dict[str, str]
    value: float
    threshold: float
    summary: str
    since: Seconds


class Alerts(msgspec.Struct, forbid_unknown_fields=True):
    """What fires now (critical first) and the webhook's counters."""

    firing: list[FiringAlert]
    webhook: Annotated[bool, msgspec.Meta(description="whether a webhook is configured")]
    posted: int
    failed: int


class AlertCondition(msgspec.Struct, forbid_unknown_fields=True):
    """A condition the console evaluates (mlplatform.monitoring.alerts.CONDITIONS)."""

    name: str
    metric: str
    op: str
    threshold: float
    severity: str
    expr: Annotated[str, msgspec.Meta(description="the same rule as a PromQL expression")]


class AlertsAnswer(Alerts, forbid_unknown_fields=True):
    """What fires now, and every condition evaluated."""

    conditions: list[AlertCondition] = []


class Overview(msgspec.Struct, forbid_unknown_fields=True):
    """Everything the page shows, in one document."""

    at: Seconds
    interval: Annotated[float, msgspec.Meta(description="seconds between scrapes")]
    ticks: int
    services: dict[str, ServicePanel]
    redis: RedisState
    models: Models
    rollouts: Rollouts
    experiments: Experiments
    fraud: Fraud
    drift: dict[str, DriftSummary]
    alerts: Alerts


DRIFT_PARAMS = (Param("service", {"type": "string", "enum": list(SERVICES)},
                      "the model service", where="path", required=True),)
