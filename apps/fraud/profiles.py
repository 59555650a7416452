"""Card and merchant profiles: Feast online reads behind a small in-process TTL cache.

Profiles change rarely (daily recomputes, an analyst's merchant risk update), while a
payment flow asks about the same cards and merchants all day; so a request never calls
Feast per transaction: it reads the cache, and the misses of a whole request (or batch)
go to Feast in one call per entity kind. Before serving, the service prefetches the
profiles of the entities it knows of (``known_entities``: the ids of the profile source
files), so the first request for each card does not pay a feature-store read. A profile
changed through the service (``PUT /v1/cards/<id>``) reaches every cache as an override
(``CachedProfiles.override``) instead of after the TTL. ``FrameProfiles`` serves the same
dicts from the parquet files Feast's offline store reads (training and replay).

A profile is a plain dict (``CARD_FIELDS`` / ``MERCHANT_FIELDS``), or ``None`` when the
entity is unknown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from prometheus_client import Counter

from fraud.pii import data_dir_of, folder_tokeniser, tokenise_columns
from mlplatform.errors import Unavailable
from mlplatform.security.pii import Tokeniser

__all__ = [
    "CARD_FIELDS",
    "MERCHANT_FIELDS",
    "ProfileSource",
    "CachedProfiles",
    "FeastProfiles",
    "FrameProfiles",
    "NoProfiles",
    "known_entities",
]

CARD_FIELDS = ("home_country", "card_age_days", "avg_amount")
MERCHANT_FIELDS = ("merchant_category", "merchant_country", "risk_score")
# Feast feature refs (feature_repo/payment_features.py) and join keys per entity kind.
_REFS = {
    "card": ("card_id", [f"card_profile:{f}" for f in CARD_FIELDS]),
    "merchant": ("merchant_id", [f"merchant_profile:{f}" for f in MERCHANT_FIELDS]),
}

CACHE = Counter(
    "mlsuite_fraud_profile_cache_total", "Profile cache lookups by result", ["kind", "result"]
)
ERRORS = Counter(
    "mlsuite_fraud_profile_errors_total",
    "Scores made without profiles because the feature store failed",
)

Profile = dict[str, Any] | None
log = logging.getLogger(__name__)


class ProfileSource(Protocol):
    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Profile]:
        """Profiles of ``kind`` ("card" or "merchant") for ``ids``, unknown ids -> None."""
        ...


class NoProfiles:
    """Every entity unknown (a model trained and served without profiles)."""

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Profile]:
        return dict.fromkeys(ids)


class FrameProfiles:
    """Profiles from data frames (the offline files); the latest row per entity wins."""

    def __init__(self, cards: pd.DataFrame | None, merchants: pd.DataFrame | None) -> None:
        self._tables = {
            "card": _index(cards, "card_id", CARD_FIELDS),
            "merchant": _index(merchants, "merchant_id", MERCHANT_FIELDS),
        }

    @classmethod
    def from_dir(cls, folder: Path, pii: Tokeniser | None = None) -> FrameProfiles:
        """``cards.parquet`` and ``merchants.parquet`` of ``folder`` (missing: no profiles),
        cards keyed by token (``pii``; default: the key of ``folder``'s data folder)."""
        cards, merchants = Path(folder) / "cards.parquet", Path(folder) / "merchants.parquet"
        card_frame = pd.read_parquet(cards) if cards.is_file() else None
        if card_frame is not None:
            tokenise_columns(card_frame, pii or folder_tokeniser(data_dir_of(cards)),
                             {"card_id": "card"})
        return cls(card_frame, pd.read_parquet(merchants) if merchants.is_file() else None)

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Profile]:
        table = self._tables[kind]
        return {i: table.get(i) for i in ids}

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())


def known_entities(folder: Path, pii: Tokeniser | None = None) -> dict[str, list[str]]:
    """Entity ids per kind from the profile source files in ``folder`` (the files Feast
    materialises from), cards as tokens; kinds whose file is missing are left out. Only
    ids are read: the profiles themselves still come from the online store."""
    out: dict[str, list[str]] = {}
    for kind, file in (("card", "cards.parquet"), ("merchant", "merchants.parquet")):
        path = Path(folder) / file
        if path.is_file():
            key = _REFS[kind][0]
            ids = pd.read_parquet(path, columns=[key])[key].astype(str).tolist()
            if kind == "card":
                ids = (pii or folder_tokeniser(data_dir_of(path))).tokens("card", ids)
            out[kind] = ids
    return out


def _index(df: pd.DataFrame | None, key: str, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    if df is None or df.empty:
        return {}
    if "event_timestamp" in df.columns:
        df = df.sort_values("event_timestamp", kind="stable")
    df = df.drop_duplicates(key, keep="last")
    present = [f for f in fields if f in df.columns]
    records = df[[key, *present]].to_dict("records")
    return {r.pop(key): _clean(r) for r in records}


def _clean(profile: dict[str, Any]) -> dict[str, Any]:
    # numpy scalars -> Python, so offline and online profiles compare equal.
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in profile.items()}


class FeastProfiles:
    """Profiles read from the Feast online store through the platform adapter."""

    def __init__(self, adapter_factory: Callable[[], Any]) -> None:
        self._factory = adapter_factory
        self._adapter: Any = None
        self._opening = threading.Lock()

    def _store(self) -> Any:
        if self._adapter is None:
            with self._opening:  # one adapter per process, whoever asks first
                if self._adapter is None:
                    self._adapter = self._factory()
        return self._adapter

    def ping(self) -> str:
        return str(self._store().ping())

    def warm_up(self) -> None:
        """Open the store now (importing Feast takes seconds), off the request path."""
        try:
            self._store()
        except Exception as exc:  # the first request will report it properly
            log.warning("could not open the feature store yet: %s", exc)

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Profile]:
        key, refs = _REFS[kind]
        rows = self._store().online_features(refs, [{key: i} for i in ids])
        out: dict[str, Profile] = {}
        for i, row in zip(ids, rows):
            profile = {f: row.get(f) for f in (CARD_FIELDS if kind == "card" else MERCHANT_FIELDS)}
            out[i] = None if all(v is None for v in profile.values()) else _clean(profile)
        return out


class CachedProfiles:
    """A TTL + LRU cache in front of another source; thread-safe; misses batched.

    When the source fails (Feast down), the request is served without the missing
    profiles (the features say so) rather than failing the payment: a fraud check that
    blocks checkout costs more than one scored on less information.
    """

    def __init__(self, source: ProfileSource, ttl_seconds: float, max_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._ttl = ttl_seconds
        self._max = max_size
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[Any, Any]] = {}
        self._entries: dict[str, OrderedDict[str, tuple[float, Profile]]] = {
            "card": OrderedDict(), "merchant": OrderedDict()
        }
        # When each entity of the latest overrides was applied: a Feast read that started
        # before that must not put the old profile back.
        self._overridden: dict[str, dict[str, float]] = {"card": {}, "merchant": {}}

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Profile]:
        now = self._clock()
        entries = self._entries[kind]
        out: dict[str, Profile] = {}
        missing: list[str] = []
        with self._lock:
            for i in ids:
                hit = entries.get(i)
                if hit is not None and hit[0] > now:
                    out[i] = hit[1]
                elif i not in out:
                    missing.append(i)
        counters = self._counters.get(kind)
        if counters is None:  # labelled children looked up once, in the serving process
            counters = self._counters[kind] = (CACHE.labels(kind, "hit"),
                                               CACHE.labels(kind, "miss"))
        if len(ids) > len(missing):
            counters[0].inc(len(ids) - len(missing))
        if not missing:
            return out
        missing = list(dict.fromkeys(missing))
        counters[1].inc(len(missing))
        try:
            fetched = self._source.get_many(kind, missing)
        except Unavailable as exc:
            ERRORS.inc()
            log.warning("scoring without %s profiles: %s", kind, exc.message)
            out.update(dict.fromkeys(missing))
            return out
        expires = now + self._ttl
        overridden = self._overridden[kind]
        with self._lock:
            for i, profile in fetched.items():
                if overridden.get(i, -1.0) >= now:
                    out[i] = entries[i][1] if i in entries else profile
                    continue
                entries[i] = (expires, profile)
                entries.move_to_end(i)
            while len(entries) > self._max:
                entries.popitem(last=False)
        for i, profile in fetched.items():
            out.setdefault(i, profile)
        return out

    def override(self, kind: str, profiles: dict[str, Profile]) -> None:
        """Put changed profiles into the cache now (fresh for a whole TTL): ``profiles``
        are newer than, or as new as, what the feature store holds."""
        now = self._clock()
        with self._lock:
            entries = self._entries[kind]
            for i, profile in profiles.items():
                entries[i] = (now + self._ttl, profile)
                entries.move_to_end(i)
            while len(entries) > self._max:
                entries.popitem(last=False)
            self._overridden[kind] = dict.fromkeys(profiles, now)

    def warm_up(self) -> None:
        warm = getattr(self._source, "warm_up", None)
        if warm is not None:
            warm()

    def prefetch(self, kind: str, ids: Sequence[str], chunk: int = 500) -> int:
        """Load the profiles of ``ids`` into the cache ahead of requests (at startup, off
        the request path: a cold cache costs a feature-store read per new entity); at most
        the cache's size; entries already cached are kept. Returns how many were loaded."""
        wanted = list(dict.fromkeys(ids))[: self._max]
        loaded = 0
        for start in range(0, len(wanted), chunk):
            fetched = self._source.get_many(kind, wanted[start:start + chunk])
            expires = self._clock() + self._ttl
            with self._lock:
                entries = self._entries[kind]
                for i, profile in fetched.items():
                    if i not in entries:
                        entries[i] = (expires, profile)
                        loaded += 1
                while len(entries) > self._max:
                    entries.popitem(last=False)
        return loaded

    def clear(self) -> None:
        with self._lock:
            for entries in self._entries.values():
                entries.clear()
