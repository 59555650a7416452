"""Prequential replay: how the served model, an online-only and a static model fare.

The file is featurised in time order (the service's feature code, in-memory velocity).
Every model learns the first ``train_fraction`` of the time range. Over the rest, each
transaction is first scored by every model, then every label whose time has come is
revealed to the learning models (``learn_one``) and to the drift monitor. A label
becomes known at ``timestamp + label_delay`` when a delay is given, else at the file's
``labelled_at`` column (else immediately). The models:

- ``served``: what the service serves by default (``hybrid-gbm``): trees fitted on the
  training part and refitted every ``refit_every`` seconds on every label known by then
  (the pipeline's schedule), with the online layer learning each label in between;
- ``online``: the river logistic model alone (``online-lr``), warm-started, then learning;
- ``batch``: a static ``batch-hgb`` fitted once on the training part.

Reported per model: ROC AUC, PR AUC and recall at 2 % FPR over the evaluation part, and
the same before and after the drift start (given, or the first time the pattern that
appears last shows up in ``fraud_pattern``), for each half of the drift period (the
dip, then the recovery), and recall on the drift pattern alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud.drift import DriftMonitor
from fraud.models import BatchGBM, Hybrid, OnlineLinear, feature_names_of
from fraud.thresholds import choose_thresholds, threshold_for_fpr
from fraud.training import Dataset, evaluate

__all__ = ["ReplayResult", "replay", "drift_start_of", "REFIT_EVERY"]

# The pipeline's default schedule in replay: the trees are refitted once a week.
REFIT_EVERY = 7 * 86400.0


@dataclass
class ReplayResult:
    models: dict[str, dict[str, Any]]
    info: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.models, "replay": self.info}


def drift_start_of(data: Dataset) -> float | None:
    """The first time of the fraud pattern that appears last (the drift), if it starts
    after the first tenth of the file."""
    frame = data.frame
    if "fraud_pattern" not in frame.columns:
        return None
    fraud = frame[frame["is_fraud"]]
    if fraud.empty:
        return None
    firsts = fraud.groupby("fraud_pattern")["ts"].min()
    start = float(firsts.max())
    t0, t1 = data.timestamps[0], data.timestamps[-1]
    return start if start > t0 + 0.1 * (t1 - t0) else None


def replay(
    data: Dataset, *, label_delay: float | None = None, train_fraction: float = 0.3,
    drift_start: float | None = None, fpr: float = 0.02, positive_weight: float = 5.0,
    refit_every: float | None = REFIT_EVERY, progress: bool = False,
) -> ReplayResult:
    from tqdm import tqdm

    ts, y, xs = data.timestamps, data.labels, data.vectors
    n = len(xs)
    cut_time = ts[0] + train_fraction * (ts[-1] - ts[0])
    split = int(np.searchsorted(ts, cut_time, side="left"))
    if split < 10 or n - split < 10:
        raise ValueError(f"{n} transactions leave too few on one side of the "
                         f"{train_fraction:.0%} training split")
    if not y[:split].any():
        raise ValueError(f"no fraud in the first {train_fraction:.0%} of the time range; "
                         "nothing to learn from (raise --train-fraction)")
    if label_delay is not None:
        reveal = ts + label_delay
    elif "labelled_ts" in data.frame.columns:
        reveal = data.frame["labelled_ts"].to_numpy(dtype=float)
    else:
        reveal = ts.copy()
    names = feature_names_of(xs[:split])

    batch = BatchGBM(names).fit(xs[:split], y[:split]).predictor()
    batch_scores = batch.predict(batch.matrix(xs[split:]))

    online = OnlineLinear(names, positive_weight=positive_weight)
    served = Hybrid(names).fit(xs[:split], y[:split])
    known = list(range(split))  # rows whose label is known, in reveal order
    refits: list[float] = []
    next_refit = ts[split] + refit_every if refit_every else np.inf
    with tqdm(total=n, desc="replay", unit="tx", disable=not progress) as bar:
        for x, label in zip(xs[:split], y[:split]):
            online.learn_one(x, bool(label))
        bar.update(split)
        warm = served.predictor()
        review = choose_thresholds(warm.predict(warm.matrix(xs[:split])), y[:split], fpr).review
        monitor = DriftMonitor()
        detections: list[float] = []
        pending: list[tuple[float, int]] = []
        online_scores = np.empty(n - split)
        served_scores = np.empty(n - split)
        for i in range(split, n):
            if ts[i] >= next_refit:  # the scheduled pipeline run: refit on what is known
                rows = sorted(known)
                labels = y[rows]
                if labels.any() and not labels.all():
                    served = Hybrid(names).fit([xs[j] for j in rows], labels)
                    refits.append(float(ts[i]))
                next_refit += refit_every  # type: ignore[operator]
            while pending and pending[0][0] <= ts[i]:
                at, j = heapq.heappop(pending)
                online.learn_one(xs[j], bool(y[j]))
                served.learn_one(xs[j], bool(y[j]))
                known.append(j)
                if monitor.update(bool(y[j]), served_scores[j - split], review, at=at):
                    detections.append(at)
            online_scores[i - split] = online.predict_proba_one(xs[i])
            served_scores[i - split] = served.predict_proba_one(xs[i])
            heapq.heappush(pending, (reveal[i], i))
            if (i - split) % 5000 == 0:
                bar.update(min(5000, n - bar.n))
        bar.update(n - bar.n)

    drift = drift_start if drift_start is not None else drift_start_of(data)
    eval_ts, eval_y = ts[split:], y[split:]
    patterns = (data.frame["fraud_pattern"].to_numpy()[split:]
                if "fraud_pattern" in data.frame.columns else None)
    segments = _segments(eval_ts, drift)
    drift_pattern = None
    if drift is not None and patterns is not None:
        frame = data.frame
        first = frame.loc[frame["is_fraud"] & (frame["ts"] >= drift), "fraud_pattern"]
        drift_pattern = str(first.iloc[0]) if len(first) else None

    models: dict[str, dict[str, Any]] = {}
    for name, scores in (("served", served_scores), ("online", online_scores),
                         ("batch", batch_scores)):
        result: dict[str, Any] = dict(evaluate(scores, eval_y, fpr))
        result["segments"] = {}
        for seg, mask in segments.items():
            metrics = dict(evaluate(scores[mask], eval_y[mask], fpr))
            if drift_pattern is not None and patterns is not None:
                metrics[f"{drift_pattern}_recall@{fpr:.0%}fpr"] = _pattern_recall(
                    scores[mask], eval_y[mask], patterns[mask], drift_pattern, fpr)
            result["segments"][seg] = metrics
        models[name] = result
    models["served"]["model"] = (f"{Hybrid.kind}: trees refitted every "
                                 f"{_days(refit_every)}, online layer learning labels")
    models["online"]["model"] = f"{online.kind} (river), warm-started then learning labels"
    models["batch"]["model"] = f"{BatchGBM.kind} (scikit-learn), fitted once on the first part"
    info = {
        "transactions": n, "train_rows": split, "eval_rows": n - split,
        "label_delay_seconds": label_delay,
        "labels_from": "delay" if label_delay is not None else (
            "labelled_at" if "labelled_ts" in data.frame.columns else "immediate"),
        "drift_start": _iso(drift), "drift_pattern": drift_pattern,
        "online_labels_learned": online.n_learned,
        "served_refits": len(refits), "refit_every_seconds": refit_every,
        "drift_detections": len(detections),
        "first_detection_after_drift_hours": _first_after(detections, drift),
    }
    return ReplayResult(models, info)


def _days(seconds: float | None) -> str:
    return "never" if not seconds else f"{seconds / 86400:g} days"


def _segments(ts: np.ndarray, drift: float | None) -> dict[str, np.ndarray]:
    if drift is None:
        return {}
    middle = drift + (ts[-1] - drift) / 2
    return {"before_drift": ts < drift, "after_drift": ts >= drift,
            "after_drift_first_half": (ts >= drift) & (ts < middle),
            "after_drift_second_half": ts >= middle}


def _pattern_recall(scores: np.ndarray, labels: np.ndarray, patterns: np.ndarray, pattern: str,
                    fpr: float) -> float | None:
    mask = patterns == pattern
    if not mask.any() or labels.all():
        return None
    cut = threshold_for_fpr(scores[~labels], fpr)
    return round(float(np.mean(scores[mask] >= cut)), 4)


def _first_after(detections: Sequence[float], drift: float | None) -> float | None:
    if drift is None:
        return None
    after = [d for d in detections if d >= drift]
    return round((after[0] - drift) / 3600.0, 1) if after else None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()
