"""The fraud scorer's retraining pipeline: transaction file + archived labels -> a candidate.

Plugged into ``mlplatform.pipeline`` through the ``mlsuite.pipelines`` entry point
(``pipeline()``). Each archived entry of the label stream (``<prefix>labels``) is a
training row by itself: it carries the decision record logged at scoring time, so its
features are exactly what the model saw (no leakage, no training/serving skew). The
original transaction file is featurised offline by the same feature code
(``fraud.training.load_dataset``).

The candidate is the same kind of model as production (``hybrid-gbm`` by default),
trained the way ``mlsuite fraud train`` trains: thresholds chosen on the newest fifth of
its training rows. It is compared with the production artifact of the registry on the
labels newer than production's data cutoff, which neither model trained on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud.config import FraudConfig
from fraud.models import Artifact, OnlineLinear, feature_names_of, fit_model, make_model
from fraud.thresholds import choose_thresholds
from fraud.training import drift_reference, load_dataset
from fraud.training import evaluate as score_metrics
from mlplatform.monitoring.reference import with_reference
from mlplatform.pipeline import (
    Candidate,
    ColumnRule,
    Comparison,
    RunContext,
    Source,
    Split,
    file_lineage,
    production_cutoff,
    read_lake,
    time_holdout,
)
from mlplatform.registry import ModelVersion, fingerprint
from mlplatform.security.pii import tokeniser

__all__ = ["FraudPipeline", "LABEL_RULES", "TRANSACTION_RULES", "parse_label_entries",
           "pipeline"]

log = logging.getLogger(__name__)

LABELS = ("0", "1")
TRANSACTION_RULES = (
    ColumnRule("transaction_id", "id"), ColumnRule("card_id", "id"),
    ColumnRule("merchant_id", "id"), ColumnRule("is_fraud", "category", LABELS),
    ColumnRule("timestamp", "timestamp"))
# ``decision`` is "ok" when the logged record parses, names this transaction and holds a
# feature vector and the transaction's time; otherwise it says what is wrong (counted by
# invalid_decision_rate). The time comes from the record, so a broken record's missing
# time is that one problem, counted once there rather than again as a null timestamp.
LABEL_RULES = (
    ColumnRule("transaction_id", "id"), ColumnRule("is_fraud", "category", LABELS),
    ColumnRule("timestamp", "timestamp", nullable=True), ColumnRule("labelled_at", "timestamp"),
    ColumnRule("decision", "category", ("ok",)))
COLUMNS = ["transaction_id", "timestamp", "is_fraud", "features"]
VALIDATION_FRACTION = 0.2


def _seconds_to_utc(values: pd.Series) -> pd.Series:
    """Epoch seconds (numbers or text; ISO 8601 accepted too) -> UTC; unparseable -> NaT."""
    numbers = pd.to_numeric(values, errors="coerce")
    out = pd.to_datetime((numbers * 1e6).round(), unit="us", utc=True)
    text = values[numbers.isna() & values.notna()]
    if len(text):
        out[text.index] = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    return out.astype("datetime64[ns, UTC]")


def _flag(value: Any) -> str | None:
    """A label as "1"/"0" ("true"/"false" accepted); anything else is kept to be counted."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    return {"true": "1", "false": "0", "1.0": "1", "0.0": "0"}.get(text, text)


def _decision(transaction_id: Any, record: Any) -> tuple[str, dict[str, float] | None, Any]:
    """(status, features, transaction time) of one logged decision record."""
    if not isinstance(record, str) or not record:
        return "missing", None, None
    try:
        d = json.loads(record)
    except json.JSONDecodeError:
        return "unparseable", None, None
    if not isinstance(d, dict):
        return "unparseable", None, None
    # A null label id is counted once, by its own check, not again as a mismatch here.
    if isinstance(transaction_id, str) and d.get("transaction_id") != transaction_id:
        return "other_transaction", None, d.get("timestamp")
    features = d.get("features")
    if not isinstance(features, dict) or not features:
        return "no_features", None, d.get("timestamp")
    try:
        vector = {str(k): float(v) for k, v in features.items()}
    except (TypeError, ValueError):
        return "bad_features", None, d.get("timestamp")
    try:
        when = float(d["timestamp"])
    except (KeyError, TypeError, ValueError):
        return "no_timestamp", None, None
    return "ok", vector, when


def parse_label_entries(entries: pd.DataFrame) -> pd.DataFrame:
    """Archived label-stream entries as typed training rows (bad values kept as nulls or
    as a non-"ok" ``decision`` status, for the checks to count).

    >>> rec = json.dumps({"transaction_id": "t1", "timestamp": 1735732800.0,
    ...                   "features": {"amount": 12.0}})
    >>> rows = parse_label_entries(pd.DataFrame({"transaction_id": ["t1", "t2"],
    ...     "is_fraud": ["1", "maybe"], "labelled_at": ["1735800000.5", None],
    ...     "decision": [rec, "{not json"]}))
    >>> rows[["is_fraud", "decision"]].values.tolist()
    [['1', 'ok'], ['maybe', 'unparseable']]
    >>> rows["features"][0], str(rows["timestamp"][0])
    ({'amount': 12.0}, '2025-01-01 12:00:00+00:00')
    """
    def col(name: str) -> pd.Series:
        if name in entries:
            return entries[name].reset_index(drop=True)
        return pd.Series([None] * len(entries), dtype=object)

    ids = col("transaction_id")
    parsed = [_decision(t, r) for t, r in zip(ids, col("decision"))]
    return pd.DataFrame({
        "transaction_id": ids.astype(object),
        "is_fraud": col("is_fraud").map(_flag).astype(object),
        "timestamp": _seconds_to_utc(pd.Series([p[2] for p in parsed], dtype=object)),
        "labelled_at": _seconds_to_utc(col("labelled_at")),
        "decision": pd.Series([p[0] for p in parsed], dtype=object),
        "features": pd.Series([p[1] for p in parsed], dtype=object),
    })


class FraudPipeline:
    """ETL, training and evaluation of the fraud model for ``mlplatform.pipeline``."""

    name = "fraud"
    primary_metric = "roc_auc"
    intended_use = (
        "Scores card transactions at payment time: a fraud probability, a decision "
        "(approve, review, decline) from thresholds chosen for target false-positive rates, "
        "and the top reasons. Serving keeps learning online from late labels; this version "
        "is the starting point a rollout would serve.")
    known_limits = (
        "- Labels arrive late and are biased: frauds are reported more often than legitimate "
        "payments, so the label rate of the lake is not the fraud rate.\n"
        "- New fraud patterns, merchants or countries absent from training score like the "
        "nearest known ones; drift detection (ADWIN) flags the shift, it does not fix it.\n"
        "- Thresholds were set on the candidate's own newest training rows; the held-out "
        "slice measures ranking (ROC AUC), not the realised false-positive rate.")

    def __init__(self, config: FraudConfig | None = None) -> None:
        self.config = config or FraudConfig.from_env()
        self.model_name = self.config.model_name

    @property
    def stream(self) -> str:
        return f"{self.config.key_prefix}labels"

    def transactions_path(self, ctx: RunContext) -> Path:
        return Path(ctx.settings.data_dir) / "payments" / "transactions.parquet"

    def extract(self, ctx: RunContext) -> list[Source]:
        path = self.transactions_path(ctx)
        if not path.is_file():
            raise FileNotFoundError(f"no transactions at {path}: run `mlsuite simulate`")
        ctx.progress(f"extract: featurising {path.name} (same feature code as serving)")
        data = load_dataset(path, extra_fields=self.config.extra_fields,
                            progress=sys.stderr.isatty(), pii=tokeniser(ctx.settings))
        frame = data.frame.reset_index(drop=True)
        base = pd.DataFrame({
            "transaction_id": frame["transaction_id"].astype(object),
            "card_id": frame["card_id"].astype(object),
            "merchant_id": frame["merchant_id"].astype(object),
            "is_fraud": pd.Series(np.where(data.labels, "1", "0"), dtype=object),
            "timestamp": _seconds_to_utc(pd.Series(data.timestamps)),
            "features": pd.Series(data.vectors, dtype=object)})
        entries, lineage = read_lake(ctx.lake, self.stream, columns=[
            "transaction_id", "is_fraud", "labelled_at", "decision"])
        labels = parse_label_entries(entries)
        return [Source(f"file {path.relative_to(ctx.settings.data_dir)}", base,
                       TRANSACTION_RULES, [file_lineage(path, len(base))],
                       label_column="is_fraud"),
                Source(f"lake {self.stream}", labels, LABEL_RULES, lineage,
                       label_column="is_fraud")]

    def split(self, ctx: RunContext, clean: Mapping[str, pd.DataFrame],
              production: ModelVersion) -> Split:
        frames = [f[COLUMNS] for f in clean.values()]
        # A transaction labelled twice (a verdict revised) keeps its latest label: the lake
        # comes after the file and is in stream order.
        frame = pd.concat(frames, ignore_index=True).drop_duplicates("transaction_id",
                                                                     keep="last")
        return time_holdout(frame, "timestamp", self.cutoff_of(ctx, production), ctx.config)

    def cutoff_of(self, ctx: RunContext, production: ModelVersion) -> datetime | None:
        """Production's data cutoff: its lineage; else, for a version `mlsuite fraud
        train` made, the newest transaction of the file it was trained on."""
        found = production_cutoff(production)
        if found is not None:
            return found
        params = production.metadata.get("params", {})
        path = self.transactions_path(ctx)
        if production.metadata.get("data_fingerprint") != fingerprint(path):
            path = Path(params.get("transactions", ""))
        if not path.is_file():
            return None
        column = (pd.read_csv(path, usecols=["timestamp"]) if path.suffix == ".csv"
                  else pd.read_parquet(path, columns=["timestamp"]))["timestamp"]
        times = pd.to_datetime(column, utc=True) if column.dtype.kind == "M" else \
            _seconds_to_utc(column.astype(object))
        newest = times.max()
        return pd.Timestamp(newest).ceil("us").to_pydatetime() if pd.notna(newest) else None

    def train(self, ctx: RunContext, split: Split) -> Candidate:
        rows = split.train
        xs: list[dict[str, float]] = list(rows["features"])
        ys = rows["is_fraud"].astype(int).to_numpy(dtype=bool)
        cut = int(len(rows) * (1 - VALIDATION_FRACTION))
        if not ys[:cut].any():
            raise ValueError(f"no fraud among the first {cut} training rows; cannot learn")
        names = feature_names_of(xs, self.config.extra_fields)
        kind = self._production_kind(ctx)
        model: Any = OnlineLinear(names, positive_weight=self.config.positive_weight) \
            if kind == "online-lr" else make_model(kind, names)
        fit_model(model, xs[:cut], ys[:cut])
        predictor = model.predictor()
        thresholds = choose_thresholds(predictor.predict(predictor.matrix(xs[cut:])), ys[cut:],
                                       self.config.review_fpr, self.config.decline_fpr)
        if model.online:  # serve having learned every training row, as `fraud train` does
            for x, y in zip(xs[cut:], ys[cut:]):
                model.learn_one(x, bool(y))
        artifact = Artifact(model, thresholds)
        # The candidate carries its drift reference, as `fraud train` writes it: once
        # promoted, live traffic is compared with what this version learned from.
        reference = drift_reference(xs, self.config, served=True)
        return Candidate(artifact, with_reference(artifact.save, reference), {
            "kind": model.kind, **model.params, "rows": len(rows), "train_rows": cut,
            "validation_rows": len(rows) - cut, "features": list(names),
            "thresholds": thresholds.to_dict(), "learned": model.n_learned})

    def _production_kind(self, ctx: RunContext) -> str:
        version = ctx.registry.resolve(self.model_name, "production")
        return str(version.metadata.get("params", {}).get("kind", "online-lr"))

    def evaluate(self, ctx: RunContext, split: Split, candidate: Candidate,
                 production: ModelVersion) -> Comparison:
        xs = list(split.held_out["features"])
        ys = split.held_out["is_fraud"].astype(int).to_numpy(dtype=bool)
        out = {}
        for who, artifact in (("candidate", candidate.model),
                              ("production", Artifact.load(production.path))):
            predictor = artifact.model.predictor()
            found = score_metrics(predictor.predict(predictor.matrix(xs)), ys)
            out[who] = {k: v for k, v in found.items() if k not in ("n", "frauds")}
        return Comparison(out["candidate"], out["production"], held_out={
            "rows": len(xs), "frauds": int(ys.sum()),
            "from": split.info.get("held_out_from"), "until": split.info.get("held_out_until")})


def pipeline() -> FraudPipeline:
    """The ``mlsuite.pipelines`` entry point (fraud settings from ``MLSUITE_FRAUD_*``)."""
    return FraudPipeline()

