"""Live popularity and trending: time-decayed event counts per item, from the event stream.

The worker's "popularity" consumer group reads ``mlsuite:rec:events`` and keeps, per
item, two exponentially decayed sums of event weights (the training event weights: a
purchase counts 8 views):

- ``baseline`` (half-life 6 h): live popularity, what the shop does today;
- ``recent`` (half-life 15 min): what is hot right now. Trending is the lift of the
  recent rate over the baseline rate, shrunk towards 1 for items with few events.

Forward decay keeps the counters plain additions, so the handler only queues
``HINCRBYFLOAT`` in the consumer's transaction (effect and ack in one MULTI: an event
counts exactly once, whichever consumer applies it and in whatever order): an event at
``t`` adds ``w * exp((t - E) / tau)`` to the hash of its landmark epoch ``E`` (a UTC
day); reading at ``now`` scales each epoch's hash by ``exp(-(now - E) / tau)``. A day
keeps exponents below 67 (no overflow), and a hash expires once its epoch no longer
counts (8 half-lives: < 0.4%), so the counters stay bounded without any trimming job.

Cold start blends this with the trained shares (``blend_weight``,
``PopularityRecommender.blended``): the trained shares act as ``PRIOR_WEIGHT``
pseudo-events, so a handful of live events moves nothing and a busy shop's live
counts weigh at most ``MAX_LIVE_WEIGHT``.

>>> round(blend_weight(0.0), 3), round(blend_weight(1000.0), 3), blend_weight(1e9)
(0.0, 0.5, 0.75)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from mlplatform.snapshots import Snapshot, pack_arrays, unpack_arrays
from mlplatform.streams import Entry
from recommender.data import DEFAULT_EVENT_WEIGHTS, EVENT_TYPES

__all__ = [
    "COUNTERS",
    "POPULARITY_KEY",
    "LiveCounts",
    "LivePopularity",
    "PopularityCounter",
    "blend_weight",
    "decode_popularity",
    "encode_popularity",
    "parse_event",
]

POPULARITY_KEY = "mlsuite:rec:snapshot:popularity"
KEY_PREFIX = "mlsuite:rec:pop:"
META_KEY = KEY_PREFIX + "meta"
EPOCH_SECONDS = 86_400
PRIOR_WEIGHT = 1000.0  # pseudo-events the trained shares count for (purchase = 8)
MAX_LIVE_WEIGHT = 0.75  # the trained shares always keep a quarter of the say


@dataclass(frozen=True)
class Decay:
    """One decayed counter: its name and half-life (seconds)."""

    name: str
    half_life: float

    @property
    def tau(self) -> float:
        return self.half_life / math.log(2)

    @property
    def horizon(self) -> float:
        """Age past which an event adds nothing that matters (8 half-lives: < 0.4%)."""
        return 8 * self.half_life

    def key(self, epoch: int) -> str:
        return f"{KEY_PREFIX}{self.name}:{epoch}"

    def epochs(self, now: float) -> list[int]:
        """The epochs whose hashes still count at ``now``."""
        first = int((now - self.horizon) // EPOCH_SECONDS)
        return list(range(first, int(now // EPOCH_SECONDS) + 1))


BASELINE = Decay("baseline", 6 * 3600.0)
RECENT = Decay("recent", 15 * 60.0)
COUNTERS = (BASELINE, RECENT)


def blend_weight(total: float) -> float:
    """How much live counts weigh against the trained shares, given their decayed total."""
    return min(MAX_LIVE_WEIGHT, total / (total + PRIOR_WEIGHT)) if total > 0 else 0.0


def parse_event(entry: Entry) -> tuple[str, str, float]:
    """(item id, event type, epoch seconds) of an event entry; ValueError says what is wrong."""
    item, kind, ts = entry.get("item_id"), entry.get("event_type"), entry.get("ts")
    if not item:
        raise ValueError("item_id is missing")
    if kind not in EVENT_TYPES:
        raise ValueError(f"event_type must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")
    try:
        moment = float(ts or "")
    except ValueError:
        raise ValueError(f"ts must be epoch seconds, got {ts!r}") from None
    if not math.isfinite(moment) or moment < 0:
        raise ValueError(f"ts must be epoch seconds, got {ts!r}")
    return item, kind, moment


@dataclass(frozen=True)
class LiveCounts:
    """Decayed counts per item id at one moment, and how many events made them."""

    at: float
    baseline: dict[str, float]
    recent: dict[str, float]
    events: int
    updated_at: float | None  # when the consumer last counted events


class PopularityCounter:
    """The "popularity" consumer's handler, and the reader of what it counted."""

    def __init__(self, client: redis.Redis,
                 weights: Callable[[], Mapping[str, float]] = lambda: DEFAULT_EVENT_WEIGHTS,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.weights = weights
        self.clock = clock

    def handle(self, entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        """Queue the batch's counter increments in ``tx``; invalid events are rejected."""
        now = self.clock()
        weights = self.weights()
        rejected: dict[str, str] = {}
        adds: dict[str, dict[str, float]] = {}
        expiry: dict[str, int] = {}
        counted = 0
        for entry in entries:
            try:
                item, kind, ts = parse_event(entry)
            except ValueError as exc:
                rejected[entry.id] = str(exc)
                continue
            counted += 1
            ts = min(ts, now)  # a client clock ahead of ours must not outweigh the present
            epoch = int(ts // EPOCH_SECONDS)
            start = epoch * EPOCH_SECONDS
            for decay in COUNTERS:
                if now - ts > decay.horizon:
                    continue
                key = decay.key(epoch)
                per_item = adds.setdefault(key, {})
                per_item[item] = per_item.get(item, 0.0) + weights.get(kind, 1.0) * math.exp(
                    (ts - start) / decay.tau)
                expiry[key] = int(start + EPOCH_SECONDS + decay.horizon) + 60
        for key, per_item in adds.items():
            for item, value in per_item.items():
                tx.hincrbyfloat(key, item, value)
            tx.expireat(key, expiry[key])
        if counted:
            tx.hincrby(META_KEY, "events", counted)
            tx.hset(META_KEY, "updated_at", f"{now:.3f}")
        return rejected

    def read(self, now: float | None = None) -> LiveCounts:
        """Every item's decayed counts at ``now`` (one pipelined round trip)."""
        now = self.clock() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        plan = [(decay, epoch) for decay in COUNTERS for epoch in decay.epochs(now)]
        for decay, epoch in plan:
            pipe.hgetall(decay.key(epoch))
        pipe.hgetall(META_KEY)
        *hashes, meta = pipe.execute()
        sums: dict[str, dict[str, float]] = {d.name: {} for d in COUNTERS}
        for (decay, epoch), values in zip(plan, hashes, strict=True):
            scale = math.exp(-(now - epoch * EPOCH_SECONDS) / decay.tau)
            into = sums[decay.name]
            for item, value in values.items():
                name = item.decode()
                into[name] = into.get(name, 0.0) + float(value) * scale
        updated = meta.get(b"updated_at")
        return LiveCounts(now, sums[BASELINE.name], sums[RECENT.name],
                          int(meta.get(b"events", 0)), float(updated) if updated else None)


# -- the popularity snapshot ------------------------------------------------------------

@dataclass(frozen=True)
class LivePopularity:
    """A decoded popularity snapshot: live counts in one model version's item order."""

    model: str
    item_ids: np.ndarray
    live: np.ndarray  # baseline decayed weight per item
    trending: np.ndarray  # lift of the recent rate over the baseline rate
    alpha: float  # the blend weight of ``live`` against the trained shares
    meta: dict[str, Any]

    def aligned(self, model: str, item_ids: np.ndarray) -> np.ndarray:
        """``live`` in the item order of ``model`` (another version: by item id)."""
        if model == self.model and len(item_ids) == len(self.item_ids):
            return self.live
        position = {k: i for i, k in enumerate(self.item_ids.tolist())}
        idx = np.fromiter((position.get(str(k), -1) for k in item_ids.tolist()), np.int64,
                          len(item_ids))
        return np.where(idx >= 0, self.live[np.maximum(idx, 0)], 0.0).astype(np.float32)


def encode_popularity(counts: LiveCounts, item_ids: Sequence[str], model: str
                      ) -> tuple[bytes, dict[str, Any]]:
    """The snapshot body and meta of ``counts`` for ``model``'s items."""
    live = np.fromiter((counts.baseline.get(i, 0.0) for i in item_ids), np.float64, len(item_ids))
    recent = np.fromiter((counts.recent.get(i, 0.0) for i in item_ids), np.float64, len(item_ids))
    base_rate, recent_rate = live / BASELINE.tau, recent / RECENT.tau
    # Shrink towards no lift with the average item's rate: one event is not a trend.
    prior = max(float(base_rate.mean()) if len(base_rate) else 0.0, 1e-9)
    trending = (recent_rate + prior) / (base_rate + prior)
    total = float(sum(counts.baseline.values()))
    meta = {"model": model, "events": counts.events, "computed_at": counts.at,
            "updated_at": counts.updated_at, "weight_total": round(total, 3),
            "alpha": blend_weight(float(live.sum())),
            "half_lives": {d.name: d.half_life for d in COUNTERS}}
    body = pack_arrays({"item_ids": np.asarray(list(item_ids), dtype=str),
                        "live": live.astype(np.float32), "trending": trending.astype(np.float32)},
                       meta)
    return body, meta


def decode_popularity(snapshot: Snapshot) -> LivePopularity:
    arrays, meta = unpack_arrays(snapshot.body)
    return LivePopularity(str(meta["model"]), arrays["item_ids"], arrays["live"],
                          arrays["trending"], float(meta["alpha"]), meta)
