"""Training: features from a transaction file, the online and batch models, registration.

The file is replayed in time order through the same feature code the service runs
(``offline_vectors`` with an in-memory velocity store; profiles from the parquet files
Feast serves, next to the transactions). The first ``1 - validation_fraction`` of the
time range trains; the rest is validation, where the thresholds are chosen and the
reported metrics measured. Then:

- ``fraud-online`` (the served model, ``model_kind``, by default ``hybrid-gbm``): fitted
  on the training part, thresholds from its validation scores, then its online layer
  also learns the validation part (it has seen all history when it starts serving; the
  label stream continues from there);
- ``fraud-batch``: the scikit-learn model fitted on the training part (static).

Both are registered (params, metrics, data fingerprint) and, with ``promote``, become
``production`` of their name. Each version stores the drift reference profile of its
training inputs (``drift_reference``), the vectors the decision records log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud.config import FraudConfig
from fraud.features import CATEGORY_PREFIX, CLOCK_FEATURES, offline_vectors
from fraud.keys import Keys
from fraud.models import Artifact, BatchGBM, feature_names_of, fit_model, make_model
from fraud.pii import data_dir_of, folder_tokeniser
from fraud.profiles import FrameProfiles, NoProfiles, ProfileSource
from fraud.schema import read_transactions, transactions_from_frame
from fraud.thresholds import Thresholds, choose_thresholds, false_positive_rate, recall_at_fpr
from fraud.velocity import MemoryVelocityStore
from mlplatform.monitoring.reference import build_profile, featurise, with_reference
from mlplatform.registry import ModelRegistry, ModelVersion, fingerprint
from mlplatform.security.pii import Tokeniser

__all__ = ["Dataset", "load_dataset", "train", "evaluate", "drift_reference", "BATCH_MODEL_NAME"]

log = logging.getLogger(__name__)
BATCH_MODEL_NAME = "fraud-batch"


@dataclass
class Dataset:
    """A transaction file as time-ordered feature vectors and labels."""

    path: Path
    frame: pd.DataFrame
    vectors: list[dict[str, float]]
    labels: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)


def load_dataset(path: Path, *, extra_fields: Sequence[str] = (),
                 profiles: ProfileSource | None = None, progress: bool = False,
                 pii: Tokeniser | None = None) -> Dataset:
    """Read, validate and featurise ``path``; profiles default to its sibling files.
    Card and device ids become tokens (``pii``; default: the key of ``path``'s data
    folder), in the transactions and the profiles alike."""
    from tqdm import tqdm

    pii = pii or folder_tokeniser(data_dir_of(path))
    frame = read_transactions(path, extra_fields=extra_fields, pii=pii)
    if profiles is None:
        found = FrameProfiles.from_dir(Path(path).parent, pii)
        profiles = found if len(found) else NoProfiles()
    txs = transactions_from_frame(frame, extra_fields)
    with tqdm(total=len(txs), desc="fraud features", unit="tx", disable=not progress) as bar:
        vectors = offline_vectors(txs, profiles, MemoryVelocityStore(), progress=bar)
    return Dataset(path=Path(path), frame=frame, vectors=vectors,
                   labels=frame["is_fraud"].to_numpy(dtype=bool),
                   timestamps=frame["ts"].to_numpy(dtype=float))


def evaluate(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.02) -> dict[str, float | None]:
    """ROC AUC, PR AUC (average precision) and recall at ``fpr`` false-positive rate."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return {"roc_auc": None, "pr_auc": None, f"recall@{fpr:.0%}fpr": None,
                "n": int(len(labels)), "frauds": int(labels.sum())}
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "pr_auc": round(float(average_precision_score(labels, scores)), 4),
        f"recall@{fpr:.0%}fpr": round(recall_at_fpr(scores, labels, fpr), 4),
        "n": int(len(labels)),
        "frauds": int(labels.sum()),
    }


def train(
    data: Dataset, registry: ModelRegistry, config: FraudConfig, *,
    validation_fraction: float = 0.2, promote: bool = True, batch: bool = True,
    progress: bool = False,
) -> dict[str, ModelVersion]:
    """Train, choose thresholds, register (and promote) the online and batch models."""
    from tqdm import tqdm

    n = len(data)
    if n < 50:
        raise ValueError(f"{data.path.name} holds {n} transactions; training needs at least 50")
    split = _time_split(data.timestamps, 1.0 - validation_fraction)
    train_x, val_x = data.vectors[:split], data.vectors[split:]
    train_y, val_y = data.labels[:split], data.labels[split:]
    if not train_y.any():
        raise ValueError(f"{data.path.name}: no fraud in the training part; cannot learn")
    names = feature_names_of(train_x, config.extra_fields)
    digest = fingerprint(data.path)
    common = {"transactions": str(data.path), "rows": n, "train_rows": split,
              "validation_rows": n - split, "features": list(names)}
    out: dict[str, ModelVersion] = {}

    started = time.perf_counter()
    kind = config.model_kind
    online: Any = make_model(kind, names, **({"positive_weight": config.positive_weight}
                                             if kind == "online-lr" else {}))
    with tqdm(total=n, desc=f"fraud {kind} model", unit="tx", disable=not progress) as bar:
        fit_model(online, train_x, train_y)
        bar.update(split)
        predictor = online.predictor()
        val_scores = predictor.predict(predictor.matrix(val_x))
        thresholds = _thresholds(val_scores, val_y, config)
        metrics = _metrics(val_scores, val_y, thresholds)
        if online.online:  # serve with all history learned
            for x, y in zip(val_x, val_y):
                online.learn_one(x, bool(y))
        bar.update(n - bar.n)
    out["online"] = registry.register(
        config.model_name,
        writer=with_reference(Artifact(online, thresholds).save,
                              drift_reference(data.vectors, config, served=True)),
        params={"kind": online.kind, **online.params, **common,
                "thresholds": thresholds.to_dict(), "learned": online.n_learned},
        metrics=metrics, data_fingerprint=digest,
        alias=config.model_alias if promote else None,
    )
    log.info("fraud: %s in %.1fs, validation %s", out["online"].label,
             time.perf_counter() - started, metrics)

    if batch:
        started = time.perf_counter()
        gbm = BatchGBM(names).fit(train_x, train_y)
        p = gbm.predictor()
        val_scores = p.predict(p.matrix(val_x))
        thresholds = _thresholds(val_scores, val_y, config)
        metrics = _metrics(val_scores, val_y, thresholds)
        out["batch"] = registry.register(
            BATCH_MODEL_NAME,
            writer=with_reference(Artifact(gbm, thresholds).save,
                                  drift_reference(train_x, config, served=False)),
            params={"kind": gbm.kind, **gbm.params, **common, "thresholds": thresholds.to_dict()},
            metrics=metrics, data_fingerprint=digest,
            alias=config.model_alias if promote else None,
        )
        log.info("fraud: %s in %.1fs, validation %s", out["batch"].label,
                 time.perf_counter() - started, metrics)
    return out


def drift_reference(vectors: Sequence[dict[str, float]], config: FraudConfig, *,
                    served: bool) -> dict[str, Any]:
    """The drift reference of a model trained on ``vectors``: the features the decision
    records log (``mlplatform.monitoring``); the one-hot merchant category folds back
    into one categorical feature, so a new category mix reads as one drifted feature. The
    hour features follow the clock: judged on windows of a day or more only."""
    source = {"stream": Keys(config.key_prefix, config.model_name).decisions,
              "json_field": "record", "vector": "features",
              "onehot": {CATEGORY_PREFIX: "merchant_category"},
              "clock": list(CLOCK_FEATURES)}
    rows = featurise([{"features": x} for x in vectors], source)
    return build_profile(rows, source=source, service="fraud", served=served)


def _time_split(timestamps: np.ndarray, fraction: float) -> int:
    cut = timestamps[0] + fraction * (timestamps[-1] - timestamps[0])
    return int(np.searchsorted(timestamps, cut, side="left"))


def _thresholds(scores: np.ndarray, labels: np.ndarray, config: FraudConfig) -> Thresholds:
    return choose_thresholds(scores, labels, config.review_fpr, config.decline_fpr)


def _metrics(scores: np.ndarray, labels: np.ndarray, t: Thresholds) -> dict[str, Any]:
    negatives = scores[~labels]
    positives = scores[labels]

    def recall(cut: float) -> float | None:
        return round(float(np.mean(positives >= cut)), 4) if len(positives) else None

    return {
        **evaluate(scores, labels),
        "review_fpr": round(false_positive_rate(negatives, t.review), 5),
        "decline_fpr": round(false_positive_rate(negatives, t.decline), 5),
        "review_recall": recall(t.review),
        "decline_recall": recall(t.decline),
    }
