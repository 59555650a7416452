"""Simulated shop: users, items, and a view -> add_to_cart -> purchase stream with real structure.

The hidden world (``mlplatform.simulate.shopworld``: tastes, embeddings, popularity,
relevance) drives the stream: each day, sessions of active users (heavy users more
often) view items drawn from softmax(s(u, i) + popularity) with long-tailed item
popularity, so a collaborative model can learn the tastes and beat a popularity
ranking; relevant, in-stock views turn into carts and purchases. Entity rows are
stamped at the start of the period; interactions are sorted by timestamp.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.simulate._common import (
    DEFAULT_START,
    US_PER_DAY,
    US_PER_SECOND,
    Columns,
    SortedParquetWriter,
    check_sizes,
    generators,
    iso,
    progress_bar,
    segmented_pick,
    time_of_day,
    to_us,
    weekday_factor,
    write_table,
)
from mlplatform.simulate.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from mlplatform.simulate.shopworld import (
    BUY_GIVEN_CART,
    CART_MAX,
    RELEVANCE_SHIFT,
    ShopWorld,
    make_world,
    sigmoid,
)

__all__ = ["EVENT_TYPES", "ShopWorld", "simulate_shop"]

EVENT_TYPES = ("view", "add_to_cart", "purchase")
MEAN_SESSION_VIEWS = 3.5  # 1 + Poisson(2.5)
EVENTS_PER_VIEW = 1.17  # measured: views + carts + purchases per view, to hit n_interactions
_CDF_BLOCK = 4_000_000  # max (users x items) floats per sampling block
_CACHE_CELLS = 16_000_000  # users x items up to which the whole CDF table is kept


class _ItemPicker:
    """Draws items from softmax(s(u, .) + popularity) for rows of users.

    When the users x items table is small enough its CDF is built once; otherwise each
    call builds the rows of the users it needs, block by block, to bound memory.
    """

    def __init__(self, world: ShopWorld) -> None:
        self.world = world
        self.n_items = len(world.item_ids)
        everyone = np.arange(len(world.user_ids))
        small = len(everyone) * self.n_items <= _CACHE_CELLS
        self._table = self._cdf(everyone) if small else None

    def _cdf(self, users: np.ndarray) -> np.ndarray:
        """Flattened CDF rows for ``users``, row k shifted into (k, k + 1]."""
        out = np.empty((len(users), self.n_items))
        block = max(1, _CDF_BLOCK // self.n_items)
        for lo in range(0, len(users), block):
            rows = out[lo:lo + block]
            # In place, block by block. Logits stay below ~20, so exp needs no max shift.
            self.world.view_logits(users[lo:lo + block], out=rows)
            np.exp(rows, out=rows)
            np.cumsum(rows, axis=1, out=rows)
            rows /= rows[:, -1:]
            rows += np.arange(lo, lo + len(rows))[:, None]
        return out.ravel()

    def draw(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        u = rng.random(len(users))
        if self._table is not None:
            return segmented_pick(self._table, users, self.n_items, u)
        uniq, inverse = np.unique(users, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        block = max(1, _CDF_BLOCK // self.n_items)
        edges = np.searchsorted(inverse[order], np.arange(0, len(uniq) + block, block))
        out = np.empty(len(users), dtype=np.int64)
        for k, lo in enumerate(range(0, len(uniq), block)):
            rows = order[edges[k]:edges[k + 1]]
            table = self._cdf(uniq[lo:lo + block])
            out[rows] = segmented_pick(table, inverse[rows] - lo, self.n_items, u[rows])
        return out


def _day_events(
    rng: np.random.Generator, world: ShopWorld, picker: _ItemPicker, activity_cdf: np.ndarray,
    day_start: int, sessions: float,
) -> Columns:
    """One day of sessions: views, then the carts and purchases they lead to."""
    n_sess = rng.poisson(sessions * weekday_factor(day_start))
    sess_user = np.searchsorted(activity_cdf, rng.random(n_sess), side="right")
    sess_user = np.minimum(sess_user, len(activity_cdf) - 1)
    length = 1 + rng.poisson(MEAN_SESSION_VIEWS - 1, n_sess)
    first = np.cumsum(length) - length
    user = np.repeat(sess_user, length)
    gaps = rng.exponential(50 * US_PER_SECOND, len(user)).astype(np.int64) + US_PER_SECOND
    gaps[first] = 0
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], length)
    view_ts = np.repeat(day_start + time_of_day(rng, n_sess), length) + elapsed
    item = picker.draw(rng, user)

    relevance = sigmoid(world.pair_scores(user, item) - RELEVANCE_SHIFT)
    carted = rng.random(len(user)) < CART_MAX * relevance * world.in_stock[item]
    bought = carted & (rng.random(len(user)) < BUY_GIVEN_CART)
    cart_delay = np.minimum(rng.exponential(40 * US_PER_SECOND, len(user)), 900 * US_PER_SECOND)
    cart_ts = view_ts + US_PER_SECOND + cart_delay.astype(np.int64)
    buy_delay = np.minimum(rng.exponential(240 * US_PER_SECOND, len(user)), 3600 * US_PER_SECOND)
    buy_ts = cart_ts + US_PER_SECOND + buy_delay.astype(np.int64)

    kind = np.concatenate([np.zeros(len(user), np.int64), np.full(carted.sum(), 1),
                           np.full(bought.sum(), 2)])
    return {
        "user_id": world.user_ids[np.concatenate([user, user[carted], user[bought]])],
        "item_id": world.item_ids[np.concatenate([item, item[carted], item[bought]])],
        "event_type": np.array(EVENT_TYPES, dtype=object)[kind],
        "timestamp": np.concatenate([view_ts, cart_ts[carted], buy_ts[bought]]),
    }


def simulate_shop(
    data_dir: Path, *, seed: int, n_users: int, n_items: int, n_interactions: int,
    progress: bool = True, n_days: int = 60, start: datetime | None = None,
) -> dict[str, Any]:
    """Write ``<data_dir>/shop/{users,items,interactions}.parquet`` and ``world.npz``.

    ``n_interactions`` is a target: the funnel is random, the summary has the exact count.
    ``start`` (an aware datetime) defaults to 2025-01-01 UTC; the period is ``n_days`` long.
    """
    check_sizes(n_users=n_users, n_items=n_items, n_interactions=n_interactions, n_days=n_days)
    out = Path(data_dir) / "shop"
    out.mkdir(parents=True, exist_ok=True)
    t0 = to_us(start or DEFAULT_START)
    t1 = t0 + n_days * US_PER_DAY
    world_rng, event_rng = generators(seed, 2, "shop")
    world, users, items, activity = make_world(world_rng, n_users, n_items)

    paths = {name: out / f"{name}.parquet" for name in ("users", "items", "interactions")}
    write_table({**users, "event_timestamp": np.full(n_users, t0)}, USERS_SCHEMA, paths["users"])
    write_table({**items, "event_timestamp": np.full(n_items, t0)}, ITEMS_SCHEMA, paths["items"])
    world.save(out)

    picker = _ItemPicker(world)
    activity_cdf = np.cumsum(activity) / activity.sum()
    sessions_per_day = n_interactions / EVENTS_PER_VIEW / MEAN_SESSION_VIEWS / n_days
    counts = dict.fromkeys(EVENT_TYPES, 0)
    with SortedParquetWriter(paths["interactions"], INTERACTIONS_SCHEMA, "timestamp") as writer, \
            progress_bar(n_days, "shop interactions", progress) as bar:
        for day in range(n_days):
            day_start = t0 + day * US_PER_DAY
            events = _day_events(event_rng, world, picker, activity_cdf, day_start,
                                 sessions_per_day)
            keep = events["timestamp"] < t1  # a session late on the last day ends with the period
            events = {k: v[keep] for k, v in events.items()}
            for kind, n in zip(*np.unique(events["event_type"], return_counts=True), strict=True):
                counts[str(kind)] += int(n)
            writer.add(events, flush_before=day_start + US_PER_DAY)
            bar.update()
    return {
        "dir": str(out), "users": n_users, "items": n_items, "interactions": writer.rows,
        "events": counts, "out_of_stock": int((~world.in_stock).sum()),
        "start": iso(t0), "end": iso(t1),
        "paths": {**{k: str(p) for k, p in paths.items()}, "world": str(out / "world.npz")},
    }
