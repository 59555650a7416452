"""Training: interactions in, a ``ModelBundle`` out; and the offline comparison of variants.

``fit_bundle`` trains the chosen variants (plus the popularity baseline, always) on one
interactions table; ``evaluate_variants`` fits on one table and scores every variant on
another (or on a time split of one). Both are deterministic for a seed. A fitted bundle
saves the drift reference of its inputs beside it (``drift_reference``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mlplatform.monitoring.reference import build_profile, featurise, with_reference
from recommender.bundle import ModelBundle
from recommender.data import DEFAULT_EVENT_WEIGHTS, IdMap, user_item_matrix
from recommender.evaluation import evaluate_model
from recommender.history import STREAM_KEY
from recommender.variants import make_recommender

__all__ = ["Progress", "TrainConfig", "drift_reference", "evaluate_variants", "fit_bundle",
           "fold_in_items"]

# The defaults live on the model classes (tuned on the simulated shop, see models.py).

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; ``params`` override ``DEFAULT_PARAMS`` per variant."""

    variants: tuple[str, ...] = ("als", "bpr")
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 42

    def __post_init__(self) -> None:
        for v in self.variants:
            make_recommender(v)  # unknown names fail here, naming the choices

    @property
    def all_variants(self) -> list[str]:
        return [*dict.fromkeys([*self.variants, "popularity"])]

    def params_of(self, variant: str) -> dict[str, Any]:
        merged = dict(self.params.get(variant, {}))
        if variant != "popularity":
            merged.setdefault("seed", self.seed)
        return merged

    def as_dict(self) -> dict[str, Any]:
        return {"variants": self.all_variants, "event_weights": dict(self.event_weights),
                "seed": self.seed,
                **{v: make_recommender(v, **self.params_of(v)).params for v in self.all_variants}}


def _codes(values: pd.Series, ids: IdMap, id_col: pd.Series) -> tuple[list[str], np.ndarray]:
    """Category codes per id of ``ids`` from a (id, value) table; -1 where unknown."""
    names = sorted(str(v) for v in values.dropna().unique())
    lookup = {n: i for i, n in enumerate(names)}
    rows = ids.indices(id_col)
    codes = np.full(len(ids), -1, dtype=np.int16)
    keep = rows >= 0
    codes[rows[keep]] = values[keep].map(lookup).fillna(-1).astype(np.int16).to_numpy()
    return names, codes


def fit_bundle(interactions: pd.DataFrame, config: TrainConfig, *,
               users: pd.DataFrame | None = None, items: pd.DataFrame | None = None,
               progress: Progress | None = None) -> ModelBundle:
    """Train every variant of ``config`` on ``interactions`` (normalised, see data.py).

    ``users`` (user_id, segment) and ``items`` (item_id, category) are optional entity
    tables: segments give the per-segment popularity, categories the offline fallbacks.
    """
    step = progress or (lambda _label: None)
    user_ids = IdMap.from_ids(interactions["user_id"])
    item_ids = IdMap.from_ids(interactions["item_id"])
    history = user_item_matrix(interactions, user_ids, item_ids, config.event_weights)
    segments: list[str] = []
    user_segment: np.ndarray | None = None
    if users is not None and "segment" in users.columns:
        segments, user_segment = _codes(users["segment"].reset_index(drop=True), user_ids,
                                        users["user_id"].reset_index(drop=True))
    categories: list[str] = []
    item_category: np.ndarray | None = None
    if items is not None and "category" in items.columns:
        categories, item_category = _codes(items["category"].reset_index(drop=True), item_ids,
                                           items["item_id"].reset_index(drop=True))
    step("matrix")
    models = {}
    for variant in config.all_variants:
        model = make_recommender(variant, **config.params_of(variant))
        model.fit(history, groups=user_segment)
        models[variant] = model
        step(variant)
    cutoff = interactions["timestamp"].max().timestamp() if len(interactions) else 0.0
    bundle = ModelBundle(users=user_ids, items=item_ids, history=history, cutoff=cutoff,
                         event_weights=dict(config.event_weights), models=models,
                         segments=segments, categories=categories)
    if user_segment is not None:
        bundle.user_segment = user_segment
    if item_category is not None:
        bundle.item_category = item_category
    # Every registration (`recommender train`, the pipeline) saves through bundle.save:
    # the reference travels with the version whichever path registers it.
    bundle.save = with_reference(bundle.save, drift_reference(interactions, items))  # type: ignore[method-assign,assignment]
    return bundle


def drift_reference(interactions: pd.DataFrame, items: pd.DataFrame | None = None
                    ) -> dict[str, Any]:
    """The drift reference of a model trained on ``interactions`` (mlplatform.monitoring).

    The recommender's inputs are the events it is sent, so drift is read off the event
    stream: the event type mix (a funnel change: fewer purchases per view), the category
    and price of the items touched (the catalogue or demand moved; items the model never
    saw show as category "(unknown)"), and events per user in the last hour (bots,
    crawlers or a broken client inflate it; a lost tracking call deflates it).
    """
    stamps = pd.to_datetime(interactions["timestamp"], utc=True)
    ts = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    rows = pd.DataFrame({"user_id": interactions["user_id"].astype(str),
                         "item_id": interactions["item_id"].astype(str), "ts": ts})
    source: dict[str, Any] = {
        "stream": STREAM_KEY,
        "counts": {"user_events_1h": {"by": "user_id", "time": "ts", "seconds": 3600.0}}}
    if "event_type" in interactions.columns:
        rows["event_type"] = interactions["event_type"].astype(str)
        source["fields"] = ["event_type"]
    if items is not None:
        ids = items["item_id"].astype(str)
        lookups: dict[str, dict[str, Any]] = {}
        if "category" in items.columns:
            lookups["item_category"] = {"field": "item_id", "missing": "(unknown)",
                                        "table": dict(zip(ids, items["category"].astype(str)))}
        if "price" in items.columns:
            # An unknown item has no price: it is left out of the price feature.
            lookups["item_price"] = {"field": "item_id", "missing": None,
                                     "table": dict(zip(ids, items["price"].astype(float)))}
        source["lookups"] = lookups
    featurised = featurise(rows.to_dict("records"), source)
    return build_profile(featurised, source=source, service="recommender")


def evaluate_variants(train: pd.DataFrame, test: pd.DataFrame, config: TrainConfig, *,
                      k: int = 10, users: pd.DataFrame | None = None,
                      items: pd.DataFrame | None = None,
                      progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Fit on ``train``, score each variant on ``test``: {variant: {"ndcg@10": ..., ...}}."""
    bundle = fit_bundle(train, config, users=users, items=items, progress=progress)
    held_out = user_item_matrix(test, bundle.users, bundle.items, config.event_weights)
    groups = bundle.user_segment.astype(np.int64)
    results = {}
    for variant in config.all_variants:
        results[variant] = evaluate_model(bundle.models[variant], bundle.history, held_out, k=k)
        if progress:
            progress(f"evaluate {variant}")
    if bundle.segments:
        # The classic baseline above ranks by global popularity; this is what the service
        # serves a cold-start user whose segment Feast knows.
        results["popularity_segment"] = evaluate_model(
            bundle.models["popularity"], bundle.history, held_out, k=k, groups=groups)
    return results


def fold_in_items(bundle: ModelBundle, interactions: pd.DataFrame, *,
                  items: pd.DataFrame | None = None) -> list[Any]:
    """Add the items of ``interactions`` that ``bundle`` does not know, without retraining.

    Each new item is placed from the interactions of users the bundle knows (ALS:
    implicit's ``partial_fit_items``; BPR cannot place items, so they stay unscorable
    there until the next training run; popularity counts them). An item nobody known
    touched gets no vector and is never recommended. Users' histories and the cutoff do
    not change: live events keep feeding user vectors as before. Mutates ``bundle``;
    returns the new item ids.
    """
    cast: Callable[[Any], Any] = int if bundle.items.kind == "int" else str
    known = bundle.items.indices(interactions["item_id"]) >= 0
    new_ids = sorted({cast(v) for v in interactions.loc[~known, "item_id"]})
    if not new_ids:
        return []
    old_n = len(bundle.items)
    bundle.items = IdMap.of_array(np.concatenate([bundle.items.ids, np.array(new_ids)]))
    rows = interactions[~known]
    item_users = user_item_matrix(rows, bundle.users, IdMap.of_array(np.array(new_ids)),
                                  bundle.event_weights).T.tocsr()
    for model in bundle.models.values():
        model.add_items(item_users)
    bundle.history = sp.csr_matrix(
        (bundle.history.data, bundle.history.indices, bundle.history.indptr),
        shape=(len(bundle.users), len(bundle.items)))
    codes = np.full(len(new_ids), -1, np.int16)
    if items is not None and "category" in items.columns:
        table = items.assign(item_id=items["item_id"].map(cast)).set_index("item_id")["category"]
        for k, item in enumerate(new_ids):
            category = table.get(item)
            if isinstance(category, str):
                if category not in bundle.categories:
                    bundle.categories.append(category)
                codes[k] = bundle.categories.index(category)
    bundle.item_category = np.concatenate([bundle.item_category[:old_n], codes])
    bundle.rebuild_lookups()
    return new_ids
