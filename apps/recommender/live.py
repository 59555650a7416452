"""What a request worker follows: the worker's snapshots, swapped into the served model.

Three ``mlplatform.snapshots.Follower`` s (a daemon thread each, polling one small key
every 0.25 s, decoding off the request path) keep this process's view of:

- the catalogue (``catalogue.CATALOGUE_KEY``): item flags -> ``ServingModel.items``;
- live popularity (``trending.POPULARITY_KEY``): blended with the version's trained
  shares -> ``ServingModel.popularity`` (cold start and the popularity variant);
- users' recent segment changes (``updates.OVERRIDES_KEY``), which ``SegmentCache``
  consults before its cache.

Each swap aligns the snapshot to the version being served (by item id when the worker
published it for another version, e.g. during a promotion) and replaces one reference
on the ``ServingModel``, so a request sees the old state or the new, never half of one.
A newly loaded version starts from the latest snapshots (``items_for``,
``popularity_for``). Without Redis (or with ``RECOMMENDER_FEAST`` off) the model's own
categories and popularity serve, marked degraded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from prometheus_client import Gauge

from mlplatform.snapshots import Follower, Snapshot, SnapshotStore
from recommender.bundle import ModelBundle
from recommender.catalogue import (
    CATALOGUE_KEY,
    Catalogue,
    ItemState,
    align_catalogue,
    decode_catalogue,
    model_item_state,
)
from recommender.popularity import PopularityRecommender
from recommender.trending import POPULARITY_KEY, LivePopularity, decode_popularity
from recommender.updates import OVERRIDES_KEY, decode_overrides

if TYPE_CHECKING:
    from recommender.engine import ServingModel

__all__ = ["ITEM_FEATURES_REFRESHED", "LiveState"]

log = logging.getLogger(__name__)

ITEM_FEATURES_REFRESHED = Gauge(
    "mlsuite_recommender_item_features_refreshed_timestamp_seconds",
    "When the item stock/category state served was read from Feast (alert on its age)",
    multiprocess_mode="min",
)


class LiveState:
    """This process's followers of the worker's snapshots; see the module docstring."""

    def __init__(self, client: redis.Redis | None, *, catalogue: bool = True,
                 poll_seconds: float = 0.25) -> None:
        self.serving: ServingModel | None = None
        self.catalogue: Follower[Catalogue] | None = None
        self.popularity: Follower[LivePopularity] | None = None
        self.overrides: Follower[dict[str, str | None]] | None = None
        if client is None:
            return
        if catalogue:
            self.catalogue = Follower(SnapshotStore(client, CATALOGUE_KEY), decode_catalogue,
                                      poll_seconds=poll_seconds, name="catalogue",
                                      on_swap=self._catalogue_swapped)
        self.popularity = Follower(SnapshotStore(client, POPULARITY_KEY), decode_popularity,
                                   poll_seconds=poll_seconds, name="popularity",
                                   on_swap=self._popularity_swapped)
        self.overrides = Follower(SnapshotStore(client, OVERRIDES_KEY), decode_overrides,
                                  poll_seconds=poll_seconds, name="user-overrides")

    @property
    def followers(self) -> list[Follower[Any]]:
        return [f for f in (self.catalogue, self.popularity, self.overrides) if f is not None]

    def start(self) -> None:
        """Load what is published now and follow it (before the server takes traffic)."""
        for follower in self.followers:
            follower.start()

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()

    # -- state for a version -------------------------------------------------------------

    def items_for(self, bundle: ModelBundle, model: str) -> ItemState:
        """The latest catalogue in ``bundle``'s item order; the model's own without one."""
        catalogue = self.catalogue.get() if self.catalogue is not None else None
        if catalogue is None:
            return model_item_state(len(bundle.items), bundle.categories, bundle.item_category)
        state = align_catalogue(catalogue, model, bundle.items.ids, bundle.categories,
                                bundle.item_category)
        if not state.degraded:
            ITEM_FEATURES_REFRESHED.set(state.loaded_at)
        return state

    def popularity_for(self, bundle: ModelBundle, model: str) -> PopularityRecommender:
        """The trained popularity blended with the latest live counts."""
        live = self.popularity.get() if self.popularity is not None else None
        if live is None or live.alpha <= 0:
            return bundle.popularity
        return bundle.popularity.blended(live.aligned(model, bundle.items.ids), live.alpha)

    def segment_overrides(self) -> Mapping[str, str | None]:
        edited = self.overrides.get() if self.overrides is not None else None
        return edited if edited is not None else {}

    def describe(self, serving: ServingModel) -> dict[str, Any]:
        """The live parts of ``GET /v1/model``: catalogue and popularity state, and ages."""
        now = time.time()
        state = serving.items
        out: dict[str, Any] = {"item_features": {
            "source": state.source, "in_stock": int(state.in_stock.sum()),
            "age_seconds": round(now - state.loaded_at, 3),
            "snapshot": self.catalogue.seq if self.catalogue is not None else None,
            "refresh_seconds": (self.catalogue.snapshot.meta.get("refresh_seconds")
                                if self.catalogue is not None and self.catalogue.snapshot
                                else None)}}
        live = self.popularity.get() if self.popularity is not None else None
        if live is None:
            out["popularity"] = {"source": "trained", "events": 0}
            return out
        b = serving.bundle
        trending = live.trending if live.model == serving.version.label else np.zeros(0)
        top = np.argsort(-trending)[:5] if len(trending) else np.zeros(0, np.int64)
        out["popularity"] = {
            "source": "live" if live.alpha > 0 else "trained",
            "events": live.meta.get("events", 0),
            "live_weight": round(live.alpha, 4),
            "age_seconds": round(now - float(live.meta["computed_at"]), 3),
            "last_counted_seconds_ago": (round(now - float(live.meta["updated_at"]), 3)
                                         if live.meta.get("updated_at") else None),
            "trending": [{"item_id": b.items.external(int(i)), "lift": round(float(trending[i]), 3)}
                         for i in top if trending[i] > 1.0],
        }
        return out

    # -- swaps (follower threads) ----------------------------------------------------------

    def _catalogue_swapped(self, snapshot: Snapshot, catalogue: Catalogue) -> None:
        serving = self.serving
        if serving is not None:
            serving.items = self.items_for(serving.bundle, serving.version.label)

    def _popularity_swapped(self, snapshot: Snapshot, live: LivePopularity) -> None:
        serving = self.serving
        if serving is not None:
            serving.popularity = self.popularity_for(serving.bundle, serving.version.label)
