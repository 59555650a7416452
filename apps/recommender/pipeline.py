"""The recommender's retraining pipeline: shop file + archived events -> a candidate bundle.

Plugged into ``mlplatform.pipeline`` through the ``mlsuite.pipelines`` entry point
(``pipeline()``). The training set is the original interactions file plus every event
the service appended to ``mlsuite:rec:events`` and the worker archived to the lake.

The comparison with production is made fair three ways: the held-out slice is the
newest events after production's data cutoff (``bundle.cutoff``), which neither model
trained on; both models fold in the same history for each user (every interaction
before the slice, as serving folds in the live history from Redis); and hits are counted
against the same relevant items for both, so an item production never saw counts as a
miss for production rather than vanishing from its denominator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

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
from mlplatform.registry import ModelVersion
from mlplatform.security.pii import tokeniser
from recommender.bundle import ModelBundle
from recommender.cli import MODEL_NAME
from recommender.data import EVENT_TYPES, IdMap, load_table, user_item_matrix
from recommender.evaluation import ranking_metrics
from recommender.models import single_threaded_blas
from recommender.pii import tokenise_users
from recommender.ranking import exclude, top_n
from recommender.training import TrainConfig, fit_bundle

__all__ = ["EVENTS_STREAM", "RULES", "RecommenderPipeline", "compare_bundles", "pipeline"]

EVENTS_STREAM = "mlsuite:rec:events"
COLUMNS = ["user_id", "item_id", "event_type", "timestamp"]
RULES = (ColumnRule("user_id", "id"), ColumnRule("item_id", "id"),
         ColumnRule("event_type", "category", EVENT_TYPES), ColumnRule("timestamp", "timestamp"))
K = 10
BATCH_USERS = 2048


def _text(col: pd.Series) -> pd.Series:
    """Ids as text, nulls kept (the checks count them)."""
    return col.astype(object).where(col.notna(), None).map(lambda v: v if v is None else str(v))


def _utc(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col, utc=True, errors="coerce").astype("datetime64[ns, UTC]")


class RecommenderPipeline:
    """ETL, training and evaluation of the recommender for ``mlplatform.pipeline``."""

    name = "recommender"
    model_name = MODEL_NAME
    primary_metric = f"ndcg@{K}"
    intended_use = (
        "Personalised item recommendations for the shop's known users (home page, product "
        "pages, e-mail batches). Each request folds the user's live history from Redis "
        "into the trained item factors; the bundle serves every A/B variant (ALS, BPR, "
        "popularity). The primary metric is ndcg@10 of the ALS variant.")
    known_limits = (
        "- Items absent from the training data have no vector until the next run (or "
        "`mlsuite recommender add-items`); users without history get popularity fallbacks.\n"
        "- Trained on logged events, which reflect what the previous model showed "
        "(feedback loop): offline ranking metrics, not revenue or click-through.\n"
        "- Metrics come from one held-out slice of recent events; small slices are noisy.")

    def shop_dir(self, ctx: RunContext) -> Path:
        return Path(ctx.settings.data_dir) / "shop"

    def extract(self, ctx: RunContext) -> list[Source]:
        path = self.shop_dir(ctx) / "interactions.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"no interactions file at {path}: run `mlsuite simulate`")
        raw = load_table(path)
        base = pd.DataFrame({
            "user_id": _text(raw["user_id"]), "item_id": _text(raw["item_id"]),
            "event_type": _text(raw["event_type"]) if "event_type" in raw else "view",
            "timestamp": _utc(raw["timestamp"])})
        events, lineage = read_lake(ctx.lake, EVENTS_STREAM,
                                    columns=["user_id", "item_id", "event_type", "ts"])
        lake = pd.DataFrame({c: _text(events[c]) if c in events else pd.Series(
            [None] * len(events), dtype=object) for c in COLUMNS[:3]})
        # ts is the event's own time (epoch seconds, as text): unparseable -> NaT, a null.
        seconds = pd.to_numeric(events.get("ts", pd.Series(dtype=object)), errors="coerce")
        # Whole microseconds: float seconds would carry spurious nanoseconds.
        lake["timestamp"] = pd.to_datetime((seconds * 1e6).round(), unit="us", utc=True).astype(
            "datetime64[ns, UTC]")
        return [Source(f"file {path.relative_to(ctx.settings.data_dir)}", base, RULES,
                       [file_lineage(path, len(base))]),
                Source(f"lake {EVENTS_STREAM}", lake, RULES, lineage)]

    def split(self, ctx: RunContext, clean: Mapping[str, pd.DataFrame],
              production: ModelVersion) -> Split:
        frame = pd.concat([f[COLUMNS] for f in clean.values()], ignore_index=True)
        # After the checks (a bad id must fail them, not become a good-looking token): the
        # file's user ids become the tokens the service keys users by; the lake's events
        # hold tokens already and pass unchanged.
        frame = tokenise_users(frame, tokeniser(ctx.settings))
        return time_holdout(frame, "timestamp", self.cutoff_of(production), ctx.config)

    @staticmethod
    def cutoff_of(production: ModelVersion) -> datetime | None:
        """Production's data cutoff: from its lineage, else the bundle's own ``cutoff``."""
        found = production_cutoff(production)
        if found is not None:
            return found
        meta = json.loads((production.path / "bundle.json").read_text())
        # Whole microseconds: the float epoch would otherwise make the newest training
        # row look a hair newer than the cutoff.
        return pd.Timestamp(round(float(meta["cutoff"]) * 1e6), unit="us",
                            tz=UTC).to_pydatetime()

    def train(self, ctx: RunContext, split: Split) -> Candidate:
        config = TrainConfig(seed=ctx.settings.seed)
        tables = {n: load_table(p) for n in ("users", "items")
                  if (p := self.shop_dir(ctx) / f"{n}.parquet").is_file()}
        if "users" in tables:
            tables["users"] = tokenise_users(tables["users"], tokeniser(ctx.settings))
        with single_threaded_blas():
            bundle = fit_bundle(split.train, config, users=tables.get("users"),
                                items=tables.get("items"))
        return Candidate(bundle, bundle.save, {**config.as_dict(), "k": K,
                                               "rows": len(split.train)})

    def evaluate(self, ctx: RunContext, split: Split, candidate: Candidate,
                 production: ModelVersion) -> Comparison:
        bundles = {"candidate": candidate.model, "production": ModelBundle.load(production.path)}
        with single_threaded_blas():
            metrics, users = compare_bundles(bundles, split.train, split.held_out, k=K)
        # The bundle carries its own held-out figures, as `recommender train` writes them.
        candidate.model.metrics = dict(metrics["candidate"])
        return Comparison(metrics["candidate"], metrics["production"], held_out={
            "rows": len(split.held_out), "users": users,
            "from": split.info.get("held_out_from"), "until": split.info.get("held_out_until")})


def compare_bundles(bundles: Mapping[str, ModelBundle], history: pd.DataFrame,
                    held_out: pd.DataFrame, *, k: int = K
                    ) -> tuple[dict[str, dict[str, float | None]], int]:
    """Ranking metrics of every variant of each bundle on the same users and relevant items.

    Users: those with a held-out item they had not interacted with before, and some
    history to fold in. Relevant items live in one shared catalogue (every bundle's items
    and the held-out ones), so each bundle is scored against the same targets.
    Returns ({bundle: {"<variant>.<metric>": x, "ndcg@k": <als or first variant>}}, users).
    """
    warm = set(history["user_id"]) & set(held_out["user_id"])
    users = IdMap.from_ids(sorted(warm))
    catalogue = IdMap.from_ids(pd.concat(
        [held_out["item_id"], *(pd.Series(b.items.ids.astype(str)) for b in bundles.values())]))
    seen = user_item_matrix(history, users, catalogue, {}) > 0
    relevant = (user_item_matrix(held_out, users, catalogue, {}) > 0).astype(np.float32)
    relevant = relevant - relevant.multiply(seen)
    relevant.eliminate_zeros()
    keep = np.flatnonzero(np.diff(relevant.indptr) > 0)
    users = IdMap.of_array(users.ids[keep])
    relevant = relevant[keep]
    out: dict[str, dict[str, float | None]] = {}
    for name, bundle in bundles.items():
        hist = user_item_matrix(history, users, bundle.items, bundle.event_weights)
        to_catalogue = catalogue.indices(pd.Series(bundle.items.ids.astype(str)))
        metrics: dict[str, float | None] = {}
        for variant in bundle.variants:
            model = bundle.models[variant]
            recs = np.full((len(users), k), -1, dtype=np.int64)
            for lo in range(0, len(users), BATCH_USERS):
                rows = hist[lo:lo + BATCH_USERS]
                scores = model.scores(rows, None)
                exclude(scores, rows)
                top = top_n(scores, k)[0]
                recs[lo:lo + len(top)] = np.where(top >= 0, to_catalogue[np.maximum(top, 0)], -1)
            found = ranking_metrics(recs, relevant, k=k, n_items=len(catalogue))
            metrics.update({f"{variant}.{m}": round(v, 6) for m, v in found.items()})
        primary = "als" if "als" in bundle.variants else bundle.variants[0]
        metrics[f"ndcg@{k}"] = metrics.get(f"{primary}.ndcg@{k}")
        out[name] = metrics
    return out, len(users)


def pipeline() -> RecommenderPipeline:
    """The ``mlsuite.pipelines`` entry point."""
    return RecommenderPipeline()
