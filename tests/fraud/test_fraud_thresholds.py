"""Thresholds meet their target false-positive rates on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from fraud.thresholds import choose_thresholds, false_positive_rate, recall_at_fpr
from fraud.training import Dataset


@pytest.mark.parametrize("review,decline", [(0.02, 0.005), (0.05, 0.01), (0.001, 0.001)])
def test_thresholds_meet_target_fpr_on_synthetic_scores(review: float, decline: float) -> None:
    rng = np.random.default_rng(0)
    scores = np.r_[rng.beta(1, 8, 20_000), rng.beta(5, 2, 300)]
    labels = np.r_[np.zeros(20_000), np.ones(300)]
    t = choose_thresholds(scores, labels, review, decline)
    negatives = scores[labels == 0]
    assert false_positive_rate(negatives, t.review) <= review
    assert false_positive_rate(negatives, t.decline) <= decline
    # ... and as close to the target as the data allows (one more negative would break it).
    assert false_positive_rate(negatives, np.nextafter(t.review, -1)) > review - 1 / 20_000
    assert t.review <= t.decline


def test_ties_are_never_split() -> None:
    scores = np.r_[np.full(100, 0.5), np.linspace(0, 0.4, 900)]
    t = choose_thresholds(scores, np.zeros(1000), 0.05, 0.01)
    assert false_positive_rate(scores, t.review) == 0.0  # flagging the tie would be 10 %


def test_trained_thresholds_meet_targets_on_the_simulated_validation_data(
        fraud_data_dir, payments_data: Dataset) -> None:  # type: ignore[no-untyped-def]
    """The registered model's thresholds, re-checked on its validation part."""
    from fraud.models import Artifact
    from mlplatform.registry import ModelRegistry

    registry = ModelRegistry(fraud_data_dir / "models")
    version = registry.resolve("fraud-online", "production")
    artifact = Artifact.load(version.path)
    n_train = version.metadata["params"]["train_rows"]
    metrics = version.metadata["metrics"]
    assert metrics["review_fpr"] <= 0.02 and metrics["decline_fpr"] <= 0.005
    assert metrics["review_recall"] >= 0.15, metrics
    # Recompute from the artifact: the stored model learned validation too, so rebuild the
    # validation-time model by replaying the training part only.
    from fraud.models import fit_model, make_model

    model = fit_model(make_model(artifact.model.kind, artifact.model.feature_names),
                      payments_data.vectors[:n_train], payments_data.labels[:n_train])
    p = model.predictor()
    scores = p.predict(p.matrix(payments_data.vectors[n_train:]))
    negatives = scores[~payments_data.labels[n_train:]]
    assert false_positive_rate(negatives, artifact.thresholds.review) <= 0.02
    assert false_positive_rate(negatives, artifact.thresholds.decline) <= 0.005
    assert round(recall_at_fpr(scores, payments_data.labels[n_train:], 0.02), 4) == \
        metrics["recall@2%fpr"]
