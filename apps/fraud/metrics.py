"""Prometheus metrics of the fraud service (``mlsuite_fraud_*``); definitions only.

Gauges that every worker computes identically from the label stream (model state,
online quality, drift) aggregate as "mostrecent"/"max" across processes, not as sums.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "SCORES",
    "DECISIONS",
    "LABELS_RECEIVED",
    "MODEL_LABELS",
    "ONLINE_QUALITY",
    "DRIFT_ACTIVE",
    "DRIFT_DETECTIONS",
    "SNAPSHOTS",
]

SCORES = Histogram(
    "mlsuite_fraud_score", "Fraud scores served",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0),
)
DECISIONS = Counter("mlsuite_fraud_decisions_total", "Decisions served", ["decision"])
LABELS_RECEIVED = Counter(
    "mlsuite_fraud_labels_received_total", "Labels appended to the label stream", ["is_fraud"]
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
