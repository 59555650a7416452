"""Entity features for serving, from Feast, kept off the hot path.

- ``ItemState``: in-stock flags and category codes for every item of a model version,
  as arrays aligned with its item indices, so a request filters the whole catalogue
  with one numpy mask. ``ItemFeatures`` reads it from Feast in one batched online read
  when a version is loaded and then every ``ttl`` seconds (stretched for big
  catalogues, see ``ItemFeatures.period``) in a background thread; a request never
  waits for Feast. Inventory pushes (``item_catalogue_push``) therefore reach
  recommendations within one period (``GET /v1/model`` shows it).
- ``SegmentCache``: users' segments for the cold-start fallback, read from Feast for the
  users a request does not know yet (one batched read), cached with a TTL.

When Feast cannot answer, the state says so (``source != "feast"``) and the service
flags its responses as degraded instead of failing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ITEM_FEATURES",
    "USER_FEATURES",
    "FeatureReader",
    "ItemFeatures",
    "ItemState",
    "SegmentCache",
]

log = logging.getLogger(__name__)

ITEM_FEATURES = ["item_catalogue:in_stock", "item_catalogue:category"]
USER_FEATURES = ["user_profile:segment"]
MAX_DUTY = 0.02  # share of a process's time the item refresh may take


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
    source: str  # "feast", or "model" (training-time categories, stock unknown)
    loaded_at: float = field(default_factory=time.time)
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


def read_item_state(reader: FeatureReader | None, item_ids: list[str],
                    fallback_categories: list[str], fallback_codes: np.ndarray) -> ItemState:
    """One batched Feast read for all items; the training-time categories if it fails."""
    n = len(item_ids)
    if reader is not None and n:
        try:
            rows = reader.online_features(ITEM_FEATURES, [{"item_id": i} for i in item_ids])
            stock = np.fromiter((r.get("in_stock") is not False for r in rows), bool, n)
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
            return ItemState(stock, cats, categories, "feast")
        except Exception as exc:  # noqa: BLE001 - any Feast failure degrades, never fails
            log.warning("item features: feast read failed, using training-time categories "
                        "and no stock filter: %s", exc)
    codes = fallback_codes if len(fallback_codes) == n else np.full(n, -1, np.int16)
    return ItemState(np.ones(n, bool), codes.astype(np.int16), list(fallback_categories), "model")


class ItemFeatures:
    """Keeps an ``ItemState`` fresh for whatever model version is being served.

    ``watch(get_items)`` starts one daemon thread per process (lazily, never at import)
    that re-reads the state every ``ttl`` seconds for the items ``get_items()`` returns.
    """

    def __init__(self, reader: FeatureReader | None, ttl: float = 2.0) -> None:
        self.reader = reader
        self.ttl = ttl
        self._last_duration = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def load(self, item_ids: list[str], categories: list[str], codes: np.ndarray) -> ItemState:
        return read_item_state(self.reader, item_ids, categories, codes)

    def watch(self, refresh: Callable[[], None]) -> None:
        if self._thread is not None:  # every request calls this: no lock once started
            return
        with self._lock:
            if self._thread is not None or self.reader is None or self.ttl <= 0:
                return
            self._thread = threading.Thread(target=self._run, args=(refresh,),
                                            name="recommender-item-features", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def period(self) -> float:
        """Seconds between refreshes: ``ttl``, stretched so reads take <= 2% of the time.

        A Feast read of the whole catalogue holds the GIL for tens of milliseconds
        (~70 ms for 1,000 items on SQLite); requests of this process wait meanwhile.
        """
        return max(self.ttl, self._last_duration / MAX_DUTY)

    def _run(self, refresh: Callable[[], None]) -> None:
        while not self._stop.wait(self.period):
            started = time.perf_counter()
            try:
                refresh()
            except Exception:  # keep the last good state; say why
                log.exception("item features: refresh failed")
            self._last_duration = time.perf_counter() - started


class SegmentCache:
    """Users' segments from Feast, for users the model does not know; TTL + LRU bounded."""

    def __init__(self, reader: FeatureReader | None, *, ttl: float = 300.0,
                 max_entries: int = 100_000) -> None:
        self.reader = reader
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def segments(self, user_ids: Sequence[str]) -> tuple[dict[str, str | None], bool]:
        """Segment per user (None: unknown) and whether Feast answered (False: degraded)."""
        now = time.monotonic()
        found: dict[str, str | None] = {}
        missing = []
        with self._lock:
            for u in user_ids:
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
