"""Entity features for serving: item flags for the whole catalogue, users' segments.

- ``ItemState``: in-stock flags, category codes and prices for every item of a model
  version, as arrays aligned with its item indices, so a request filters the whole
  catalogue with one numpy mask. The recommender worker reads them from Feast
  (``read_item_state``: one batched online read) and publishes them as the catalogue
  snapshot (``encode_catalogue``); request workers follow that snapshot and align it to
  the version they serve (``align_catalogue``). No request worker reads the whole
  catalogue from Feast, and no request waits for Feast.
- ``SegmentCache``: users' segments for the cold-start fallback, read from Feast for the
  users a request does not know yet (one batched read), cached with a TTL; recent
  segment changes made through ``PUT /v1/users/<id>`` come first (the overrides the
  worker publishes), so an edit shows before the cache entry expires.

When Feast cannot answer, the state says so (``source != "feast"``) and the service
flags its responses as degraded instead of failing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mlplatform.snapshots import Snapshot, pack_arrays, unpack_arrays

__all__ = [
    "CATALOGUE_KEY",
    "ITEM_FEATURES",
    "USER_FEATURES",
    "Catalogue",
    "FeatureReader",
    "ItemState",
    "SegmentCache",
    "align_catalogue",
    "decode_catalogue",
    "encode_catalogue",
    "model_item_state",
    "read_item_state",
]

log = logging.getLogger(__name__)

CATALOGUE_KEY = "mlsuite:rec:snapshot:catalogue"
ITEM_FEATURES = ["item_catalogue:in_stock", "item_catalogue:category", "item_catalogue:price"]
USER_FEATURES = ["user_profile:segment"]


class FeatureReader(Protocol):
    """The part of ``mlplatform.features.FeatureStoreAdapter`` this module uses."""

    def online_features(self, features: Sequence[str] | str,
                        entity_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ItemState:
    """Serving flags for the items of one model version (index-aligned arrays)."""

    in_stock: np.ndarray  # bool; unknown to Feast -> True (the model knows the item)
    category: np.ndarray  # int16 code into ``categories``; -1 unknown
    categories: list[str]
    # "feast"; "stale" (Feast failed since: the last good flags); "model" (training-time
    # categories, stock unknown). Anything but "feast" marks responses degraded.
    source: str
    loaded_at: float = field(default_factory=time.time)  # when Feast was read
    price: np.ndarray | None = None  # float32, NaN unknown
    code: dict[str, int] = field(init=False, repr=False)
    # Blocked item indices per category filter (None: no filter), filled by the engine.
    masks: dict[str | None, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", {c: i for i, c in enumerate(self.categories)})

    @property
    def degraded(self) -> bool:
        return self.source != "feast"

    def category_mask(self, category: str) -> np.ndarray | None:
        """Items of ``category``; None if the category is unknown."""
        code = self.code.get(category)
        return None if code is None else self.category == code


def model_item_state(n: int, categories: list[str], codes: np.ndarray) -> ItemState:
    """What the model knows without Feast: training-time categories, everything in stock."""
    codes = codes if len(codes) == n else np.full(n, -1, np.int16)
    return ItemState(np.ones(n, bool), codes.astype(np.int16), list(categories), "model")


def read_item_state(reader: FeatureReader | None, item_ids: list[str],
                    fallback_categories: list[str], fallback_codes: np.ndarray) -> ItemState:
    """One batched Feast read for all items; the training-time categories if it fails."""
    n = len(item_ids)
    if reader is not None and n:
        try:
            rows = reader.online_features(ITEM_FEATURES, [{"item_id": i} for i in item_ids])
            stock = np.fromiter((r.get("in_stock") is not False for r in rows), bool, n)
            price = np.fromiter((np.nan if r.get("price") is None else r["price"] for r in rows),
                                np.float32, n)
            names = [r.get("category") for r in rows]
            categories = sorted({c for c in names if c is not None} | set(fallback_categories))
            code = {c: i for i, c in enumerate(categories)}
            cats = np.fromiter((code.get(c, -1) if c is not None else -1 for c in names),
                               np.int16, n)
            # Items Feast does not know keep their training-time category.
            missing = cats < 0
            if missing.any() and len(fallback_codes) == n:
                remap = np.array([code[c] for c in fallback_categories] + [-1], np.int16)
                cats[missing] = remap[fallback_codes[missing]]
            return ItemState(stock, cats, categories, "feast", price=price)
        except Exception as exc:  # noqa: BLE001 - any Feast failure degrades, never fails
            log.warning("item features: feast read failed, using training-time categories "
                        "and no stock filter: %s", exc)
    return model_item_state(n, fallback_categories, fallback_codes)


# -- the catalogue snapshot -------------------------------------------------------------

@dataclass(frozen=True)
class Catalogue:
    """A decoded catalogue snapshot: the flags of the items of the model it was read for."""

    model: str  # the version label the item order belongs to ("recommender:v3")
    item_ids: np.ndarray  # str, in that version's index order
    state: ItemState
    meta: dict[str, Any]


def encode_catalogue(state: ItemState, item_ids: Sequence[str], model: str,
                     **meta: Any) -> tuple[bytes, dict[str, Any]]:
    """The snapshot body (plain arrays) and meta of ``state`` for ``model``'s items."""
    n = len(item_ids)
    price = state.price if state.price is not None else np.full(n, np.nan, np.float32)
    info = {"model": model, "categories": state.categories, "source": state.source,
            "read_at": state.loaded_at, "items": n, **meta}
    body = pack_arrays({"item_ids": np.asarray(list(item_ids), dtype=str),
                        "in_stock": state.in_stock, "category": state.category,
                        "price": price}, info)
    return body, info


def decode_catalogue(snapshot: Snapshot) -> Catalogue:
    arrays, meta = unpack_arrays(snapshot.body)
    state = ItemState(arrays["in_stock"].astype(bool), arrays["category"].astype(np.int16),
                      list(meta["categories"]), str(meta["source"]),
                      float(meta["read_at"]), arrays["price"].astype(np.float32))
    return Catalogue(str(meta["model"]), arrays["item_ids"], state, meta)


def align_catalogue(catalogue: Catalogue, model: str, item_ids: np.ndarray,
                    categories: list[str], codes: np.ndarray) -> ItemState:
    """``catalogue``'s flags in the item order of ``model`` (another version: by item id;
    items it does not cover keep their training-time category and count as in stock)."""
    state = catalogue.state
    if catalogue.model == model and len(catalogue.item_ids) == len(item_ids):
        return ItemState(state.in_stock, state.category, state.categories, state.source,
                         state.loaded_at, state.price)  # its own (empty) mask cache
    n = len(item_ids)
    position = {k: i for i, k in enumerate(catalogue.item_ids.tolist())}
    idx = np.fromiter((position.get(str(k), -1) for k in item_ids.tolist()), np.int64, n)
    found = idx >= 0
    names = sorted(set(state.categories) | set(categories))
    code = {c: i for i, c in enumerate(names)}
    theirs = np.array([code[c] for c in state.categories] + [-1], np.int16)
    ours = np.array([code[c] for c in categories] + [-1], np.int16)
    fallback = codes if len(codes) == n else np.full(n, -1, np.int16)
    category = ours[fallback]
    category[found] = theirs[state.category[idx[found]]]
    in_stock = np.ones(n, bool)
    in_stock[found] = state.in_stock[idx[found]]
    price = np.full(n, np.nan, np.float32)
    if state.price is not None:
        price[found] = state.price[idx[found]]
    return ItemState(in_stock, category, names, state.source, state.loaded_at, price)


# -- users' segments ----------------------------------------------------------------------

class SegmentCache:
    """Users' segments from Feast, for users the model does not know; TTL + LRU bounded.

    ``overrides()`` (user -> segment) is consulted first: the segments changed recently
    through the API, published by the worker, so an edit does not wait for the TTL.
    """

    def __init__(self, reader: FeatureReader | None, *, ttl: float = 300.0,
                 max_entries: int = 100_000,
                 overrides: Callable[[], Mapping[str, str | None]] | None = None) -> None:
        self.reader = reader
        self.ttl = ttl
        self.max_entries = max_entries
        self.overrides = overrides
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def segments(self, user_ids: Sequence[str]) -> tuple[dict[str, str | None], bool]:
        """Segment per user (None: unknown) and whether Feast answered (False: degraded)."""
        now = time.monotonic()
        found: dict[str, str | None] = {}
        missing = []
        edited = self.overrides() if self.overrides is not None else {}
        with self._lock:
            for u in user_ids:
                if u in edited:
                    found[u] = edited[u]
                    continue
                hit = self._cache.get(u)
                if hit is not None and now - hit[0] < self.ttl:
                    found[u] = hit[1]
                    self._cache.move_to_end(u)
                else:
                    missing.append(u)
        if not missing:
            return found, True
        if self.reader is None:
            return {**found, **dict.fromkeys(missing)}, False
        try:
            rows = self.reader.online_features(USER_FEATURES, [{"user_id": u} for u in missing])
        except Exception as exc:  # noqa: BLE001 - a failed read degrades to global popularity
            log.warning("user features: feast read failed: %s", exc)
            return {**found, **dict.fromkeys(missing)}, False
        with self._lock:
            for u, row in zip(missing, rows, strict=True):
                found[u] = row.get("segment")
                self._cache[u] = (now, found[u])
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return found, True
