"""Prometheus metrics of the fraud service (``mlsuite_fraud_*``); definitions only.

Gauges that every worker computes identically from the label stream (model state,
online quality, drift) aggregate as "mostrecent"/"max" across processes, not as sums.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "SCORES",
    "observe_scores",
    "DECISIONS",
    "LABELS_RECEIVED",
    "LABEL_CORRECTIONS",
    "MODEL_LABELS",
    "ONLINE_QUALITY",
    "DRIFT_ACTIVE",
    "DRIFT_DETECTIONS",
    "SNAPSHOTS",
    "RULE_HITS",
    "RULE_RELOADS",
    "LIST_CHANGES",
    "REVIEWS_OPEN",
    "REVIEWS_OVERDUE",
    "REVIEWS_CLOSED",
    "LOSS_PREVENTED",
    "LOSS",
    "FALSE_DECLINES",
    "LABEL_LAG",
]

SCORES = Histogram(
    "mlsuite_fraud_score", "Fraud scores served",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0),
)
DECISIONS = Counter("mlsuite_fraud_decisions_total", "Decisions served", ["decision"])
LABELS_RECEIVED = Counter(
    "mlsuite_fraud_labels_received_total", "Labels appended to the label stream", ["is_fraud"]
)
LABEL_CORRECTIONS = Counter(
    "mlsuite_fraud_label_corrections_total",
    "Labels appended that change a transaction's earlier label (fraud.labels)",
)
MODEL_LABELS = Gauge(
    "mlsuite_fraud_model_labels", "Labels learned by the served model since its base version",
    multiprocess_mode="mostrecent",
)
ONLINE_QUALITY = Gauge(
    "mlsuite_fraud_online_quality",
    "Rolling quality of past decisions as labels arrive (precision, recall, roc_auc)",
    ["metric"], multiprocess_mode="mostrecent",
)
DRIFT_ACTIVE = Gauge(
    "mlsuite_fraud_drift_active", "1 while a recent drift detection is in effect",
    multiprocess_mode="max",
)
DRIFT_DETECTIONS = Gauge(
    "mlsuite_fraud_drift_detections", "Drift detections since the model's base version",
    ["stream"], multiprocess_mode="max",
)
SNAPSHOTS = Counter("mlsuite_fraud_model_snapshots_total", "Model snapshots written to Redis")

# Rules, lists and the review queue (fraud.rules, fraud.lists, fraud.reviews).
RULE_HITS = Counter(
    "mlsuite_fraud_rule_hits_total", "Rules that fired, by rule and action", ["rule", "action"]
)
RULE_RELOADS = Counter(
    "mlsuite_fraud_rule_reloads_total", "Rules file (re)loads by result (ok, error)", ["result"]
)
LIST_CHANGES = Counter(
    "mlsuite_fraud_list_changes_total", "Values put on or deleted from a list", ["list", "op"]
)
# Read from Redis when /metrics is scraped: every process sees the same queue.
REVIEWS_OPEN = Gauge(
    "mlsuite_fraud_reviews_open", "Open review cases", multiprocess_mode="mostrecent"
)
REVIEWS_OVERDUE = Gauge(
    "mlsuite_fraud_reviews_overdue",
    "Open review cases older than MLSUITE_FRAUD_REVIEW_MAX_AGE_SECONDS",
    multiprocess_mode="mostrecent",
)
REVIEWS_CLOSED = Counter(
    "mlsuite_fraud_reviews_closed_total", "Review cases closed, by outcome", ["outcome"]
)

# Business outcomes, counted by the worker as labels meet their decisions (fraud.business).
_AMOUNT = " per deciding model version; amounts in the transaction's currency units as recorded"
LOSS_PREVENTED = Counter(
    "mlsuite_fraud_loss_prevented_amount",
    "Amount declined or held for review that later proved fraud" + _AMOUNT, ["model_version"],
)
LOSS = Counter(
    "mlsuite_fraud_loss_amount", "Amount approved that later proved fraud" + _AMOUNT,
    ["model_version"],
)
FALSE_DECLINES = Counter(
    "mlsuite_fraud_false_decline_amount",
    "Amount declined that later proved legitimate" + _AMOUNT, ["model_version"],
)
# Chargebacks take days to weeks; analyst verdicts minutes to hours.
LABEL_LAG = Histogram(
    "mlsuite_fraud_label_lag_seconds", "Time from a decision to its first label",
    buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400,
             14 * 86400, 30 * 86400, 60 * 86400, 90 * 86400),
)


def observe_scores(scores: Sequence[float]) -> None:
    """``SCORES.observe`` of each score, a batch's in one write per bucket it hits and one
    to the sum. prometheus_client writes every observation's bucket and the sum on their
    own, each a locked write into the multiprocess file: at 100 scores a request, 4% of
    a batch's CPU. (Its histogram has no batch observe; this uses its bucket bounds and
    values, as ``observe`` does.) NaN is observed as ``observe`` would: in the sum only."""
    if len(scores) < 4:
        for s in scores:
            SCORES.observe(s)
        return
    bounds = SCORES._upper_bounds  # ends with +Inf: every number lands in a bucket
    buckets = SCORES._buckets
    for i, n in Tally(bisect.bisect_left(bounds, s) for s in scores if s == s).items():
        buckets[i].inc(n)
    SCORES._sum.inc(math.fsum(scores))
