"""Decision thresholds: review and decline cut-offs chosen to meet false-positive targets.

A score at or above ``decline`` is declined, at or above ``review`` goes to an analyst,
anything lower is approved. Each cut-off is the lowest score at which the share of
legitimate validation transactions flagged stays within its target rate, so the
targets hold on the validation data by construction (ties are never split).

>>> import numpy as np
>>> negatives = np.linspace(0.0, 0.5, 1000)
>>> t = choose_thresholds(np.r_[negatives, [0.9, 0.95]], np.r_[np.zeros(1000), [1, 1]])
>>> fpr = lambda cut: false_positive_rate(negatives, cut)
>>> fpr(t.review) <= 0.02, fpr(t.decline) <= 0.005
(True, True)
>>> t.decide(0.99), t.decide(0.495), t.decide(0.1)
('decline', 'review', 'approve')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Thresholds",
    "choose_thresholds",
    "threshold_for_fpr",
    "false_positive_rate",
    "recall_at_fpr",
    "DECISIONS",
    "Recalibrator",
]

DECISIONS = ("approve", "review", "decline")


@dataclass(frozen=True)
class Thresholds:
    """Score cut-offs; ``decline >= review``."""

    review: float
    decline: float
    review_fpr: float = 0.02
    decline_fpr: float = 0.005

    def decide(self, score: float) -> str:
        if score >= self.decline:
            return "decline"
        if score >= self.review:
            return "review"
        return "approve"

    def decide_many(self, scores: np.ndarray) -> list[str]:
        codes = (scores >= self.review).astype(np.int8) + (scores >= self.decline).astype(np.int8)
        return [DECISIONS[c] for c in codes.tolist()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        return cls(**{k: float(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def threshold_for_fpr(negative_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest cut-off flagging at most ``target_fpr`` of ``negative_scores``.

    Just above the (k+1)-th highest negative score, k = floor(target * n): at most k
    negatives score strictly higher, and any lower cut-off would flag k+1.

    >>> t = threshold_for_fpr(np.array([0.1, 0.2, 0.3, 0.4]), 0.25)
    >>> 0.3 < t < 0.3000001
    True
    """
    neg = np.sort(np.asarray(negative_scores, dtype=float))[::-1]
    if neg.size == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * neg.size + 1e-9))
    if allowed >= neg.size:
        return float(neg[-1])
    return float(np.nextafter(neg[allowed], np.inf))


def choose_thresholds(
    scores: np.ndarray, labels: np.ndarray, review_fpr: float = 0.02, decline_fpr: float = 0.005
) -> Thresholds:
    """Thresholds meeting the target false-positive rates on validation ``scores``."""
    scores = np.asarray(scores, dtype=float)
    negatives = scores[np.asarray(labels).astype(bool) == 0]
    review = threshold_for_fpr(negatives, review_fpr)
    decline = max(threshold_for_fpr(negatives, decline_fpr), review)
    return Thresholds(review=review, decline=decline, review_fpr=review_fpr,
                      decline_fpr=decline_fpr)


def false_positive_rate(negative_scores: np.ndarray, threshold: float) -> float:
    neg = np.asarray(negative_scores, dtype=float)
    return float(np.mean(neg >= threshold)) if neg.size else 0.0


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float = 0.02) -> float:
    """Share of frauds caught at the cut-off that flags ``target_fpr`` of the legitimate ones.

    >>> recall_at_fpr(np.array([0.1, 0.2, 0.3, 0.9, 0.25]), np.array([0, 0, 0, 1, 1]), 0.0)
    0.5
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    cut = threshold_for_fpr(scores[~labels], target_fpr)
    return float(np.mean(scores[labels] >= cut))


class Recalibrator:
    """Keeps the realised false-positive rate at its targets as the model learns.

    The learner feeds it the current model's score of each transaction labelled
    legitimate (before learning that label); once ``min_count`` are in the window, the
    served cut-offs are the ones that flag ``review_fpr`` / ``decline_fpr`` of the latest
    ``window`` legitimate transactions, instead of the cut-offs chosen at training time
    (which drift as the online layer moves the scores).

    >>> r = Recalibrator(window=1000, min_count=100)
    >>> for i in range(1000):
    ...     r.update(i / 1000)
    >>> t = r.thresholds(Thresholds(0.5, 0.9))
    >>> round(t.review, 3), round(t.decline, 3)
    (0.979, 0.994)
    """

    def __init__(self, window: int = 5000, min_count: int = 500) -> None:
        from collections import deque

        self.scores: Any = deque(maxlen=window)
        self.min_count = min_count

    def update(self, legit_score: float) -> None:
        self.scores.append(float(legit_score))

    def thresholds(self, trained: Thresholds) -> Thresholds:
        """``trained``'s cut-offs recalibrated on the window (unchanged until it fills)."""
        if len(self.scores) < self.min_count:
            return trained
        negatives = np.fromiter(self.scores, dtype=float, count=len(self.scores))
        review = threshold_for_fpr(negatives, trained.review_fpr)
        decline = max(threshold_for_fpr(negatives, trained.decline_fpr), review)
        return Thresholds(review=review, decline=decline, review_fpr=trained.review_fpr,
                          decline_fpr=trained.decline_fpr)
