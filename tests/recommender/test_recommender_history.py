"""The live history in Redis: bounded, expiring, newest first, and every event in the stream."""

from __future__ import annotations

import redis

from mlplatform.streams import read_recent
from recommender.history import STREAM_KEY, Event, HistoryStore

from .conftest import Tiny


def events(user: str, n: int, start: float = 1_700_000_000.0) -> list[Event]:
    return [Event(user, f"i{k}", "view", start + k) for k in range(n)]


def test_history_is_bounded_and_newest_first(redis_client: redis.Redis) -> None:
    store = HistoryStore(redis_client, max_events=5)
    store.append(events("u1", 8))
    got = store.read(["u1"])[0]
    assert [item for _, _, item in got] == ["i7", "i6", "i5", "i4", "i3"]
    assert redis_client.llen(store.key("u1")) == 5


def test_history_expires(redis_client: redis.Redis) -> None:
    store = HistoryStore(redis_client, ttl_seconds=60)
    store.append(events("u1", 1))
    assert 0 < redis_client.ttl(store.key("u1")) <= 60


def test_every_event_reaches_the_stream(redis_client: redis.Redis) -> None:
    store = HistoryStore(redis_client, max_events=2)
    ids = store.append(events("u1", 3) + events("u2", 1), request_id="r1")
    assert len(ids) == 4
    # Every partition of the stream (one on a single server). Two partitions' ids can be
    # equal (each master's own clock), so entries are compared as lists, not by id.
    entries = read_recent(redis_client, STREAM_KEY, 1000)
    assert sorted(e.id for e in entries) == sorted(ids)
    assert sorted(e.fields[b"user_id"] for e in entries) == [b"u1"] * 3 + [b"u2"]
    assert all(e.fields[b"request_id"] == b"r1" for e in entries)
    assert store.stream_length() == 4


def test_read_many_users_in_one_call(redis_client: redis.Redis) -> None:
    store = HistoryStore(redis_client)
    store.append(events("u1", 2) + events("u2", 1))
    got = store.read(["u1", "nobody", "u2"])
    assert [len(h) for h in got] == [2, 0, 1]
    assert got[0][0] == (1_700_000_001.0, "view", "i1")


def test_serving_parse_agrees_with_decoding(redis_client: redis.Redis, tiny: Tiny) -> None:
    """The engine sums live events from the raw bytes; same as decoding each one."""
    import random

    import numpy as np

    from recommender.engine import ServingModel, parse_events
    from recommender.history import decode_event
    from recommender.training import TrainConfig, fit_bundle

    bundle = fit_bundle(tiny.interactions, TrainConfig(variants=("popularity",)))
    serving = ServingModel(None, bundle, None)  # type: ignore[arg-type]
    rng = random.Random(5)
    ids = [str(i) for i in bundle.items.ids.tolist()] + ["unknown", "x|y"]
    kinds = ["view", "add_to_cart", "purchase", "other"]
    store = HistoryStore(redis_client, max_events=200)
    store.append([Event("u1", rng.choice(ids), rng.choice(kinds),
                        bundle.cutoff + rng.uniform(-3600, 3600)) for _ in range(150)])
    (raw,) = store.read_raw(["u1"])
    assert [decode_event(r) for r in raw] == store.read(["u1"])[0]
    expected: dict[int, float] = {}
    for ts, kind, item in store.read(["u1"])[0]:
        idx = bundle.items.lookup(item)
        if ts > bundle.cutoff and idx is not None:
            expected[idx] = expected.get(idx, 0.0) + bundle.event_weights.get(kind, 1.0)
    got = parse_events(raw, serving)
    assert got.keys() == expected.keys() and expected
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()))
