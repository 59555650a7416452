"""Drift and live quality: what the labels say about the decisions already made.

Each label is compared with the decision made at scoring time (the score and the review
threshold logged with it), in label-stream order, so every replica computes the same
state. Two ADWIN detectors (river) watch:

- ``error``: 1 when the decision (flagged or not) disagreed with the label;
- ``miss``: over frauds only, 1 when a fraud was not flagged — a new fraud pattern shows
  up here first, as recall drops.

Rolling precision, recall and ROC AUC cover the last ``window`` labels. A detection calls
``on_drift`` (the service logs a warning and sets Prometheus metrics) and keeps the state
``active`` for the next ``window`` labels.

>>> m = DriftMonitor(window=500)
>>> for i in range(3000):
...     _ = m.update(y=i % 50 == 0, score=0.9 if i % 50 == 0 else 0.1, review_threshold=0.5)
>>> m.snapshot()["drift"]["active"], m.snapshot()["recall"]
(False, 1.0)
>>> for i in range(3000):  # a new pattern: frauds now score low
...     _ = m.update(y=i % 50 == 0, score=0.1, review_threshold=0.5)
>>> m.snapshot()["drift"]["detections"] >= 1, m.snapshot()["recall"]
(True, 0.0)
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from river import drift, metrics

__all__ = ["DriftMonitor"]


class DriftMonitor:
    """ADWIN on the decision error streams plus rolling precision / recall / ROC AUC."""

    def __init__(self, window: int = 2000, delta: float = 0.002) -> None:
        self.window = window
        self.delta = delta
        self.detectors = {"error": drift.ADWIN(delta=delta), "miss": drift.ADWIN(delta=delta)}
        self.recent: collections.deque[tuple[bool, bool]] = collections.deque(maxlen=window)
        self.auc = metrics.RollingROCAUC(window_size=window)
        self.labels = 0
        self.positives = 0
        self.detections = 0
        self.last_detection: dict[str, Any] | None = None
        self._active_until = 0
        # Not pickled with the state: set by the owner after loading a snapshot.
        self.on_drift: Callable[[str, dict[str, Any]], None] | None = None

    def update(self, y: bool, score: float, review_threshold: float,
               at: float | None = None) -> bool:
        """Account one label; True when it triggered a drift detection."""
        flagged = score >= review_threshold
        self.labels += 1
        self.positives += bool(y)
        self.recent.append((bool(y), flagged))
        self.auc.update(bool(y), score)
        fired = []
        detector = self.detectors["error"]
        detector.update(float(flagged != bool(y)))
        if detector.drift_detected:
            fired.append("error")
        if y:
            detector = self.detectors["miss"]
            detector.update(0.0 if flagged else 1.0)
            if detector.drift_detected:
                fired.append("miss")
        for stream in fired:
            self.detections += 1
            self._active_until = self.labels + self.window
            self.last_detection = {
                "stream": stream,
                "label_index": self.labels,
                "at": at,
                "estimate": round(self.detectors[stream].estimation, 4),
            }
            if self.on_drift is not None:
                self.on_drift(stream, dict(self.last_detection))
        return bool(fired)

    @property
    def active(self) -> bool:
        return self.labels < self._active_until

    def precision_recall(self) -> tuple[float | None, float | None]:
        tp = sum(1 for y, f in self.recent if y and f)
        fp = sum(1 for y, f in self.recent if f and not y)
        fn = sum(1 for y, f in self.recent if y and not f)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        return precision, recall

    def snapshot(self) -> dict[str, Any]:
        """Plain-JSON state for ``GET /v1/model``."""
        precision, recall = self.precision_recall()
        positives = sum(1 for y, _ in self.recent if y)
        auc = self.auc.get() if 0 < positives < len(self.recent) else None
        return {
            "labels": self.labels,
            "fraud_labels": self.positives,
            "window": len(self.recent),
            "precision": None if precision is None else round(precision, 4),
            "recall": None if recall is None else round(recall, 4),
            "roc_auc": None if auc is None else round(auc, 4),
            "drift": {
                "active": self.active,
                "detections": self.detections,
                "last": self.last_detection,
                "error_rate": round(self.detectors["error"].estimation, 4),
                "miss_rate": round(self.detectors["miss"].estimation, 4),
            },
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_drift"] = None
        return state
