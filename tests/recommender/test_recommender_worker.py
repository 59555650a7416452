"""The recommender worker and the data services: PUTs, live popularity, exactly-once counting.

Real Redis, real Feast, the worker running in this process (the ``worker`` fixture) or
its consumers driven one round at a time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.streams import Consumer, Retry, stream_keys
from mlplatform.worker import Worker
from recommender.history import STREAM_KEY
from recommender.pusher import FeastPusher
from recommender.trending import BASELINE, RECENT, PopularityCounter
from recommender.updates import UPDATES_STREAM, UpdateQueue
from recommender.worker import DEAD_LETTERS

from .conftest import ONLY, only
from .test_recommender_app import item_ids, recs

NOW = 1_800_000_000.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 2.0) -> float:
    """Seconds until ``check()`` holds; fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not seen within {timeout:.1f}s"
        time.sleep(0.02)
    return time.monotonic() - started


def put(client: FlaskClient, path: str, body: Any) -> dict[str, Any]:
    response = client.put(path, json=body)
    assert response.status_code == 202, response.json
    return response.json  # type: ignore[no-any-return]


# -- data services -------------------------------------------------------------------------

def test_out_of_stock_put_reaches_another_instance_within_2s(
        make_app: Callable[..., Flask], worker: Worker, known_user: str) -> None:
    writer = make_app(**{ONLY: only("als")}).test_client()
    reader = make_app(**{ONLY: only("als")}).test_client()
    top = item_ids(recs(reader, known_user))[0]
    queued = put(writer, f"/v1/items/{top}", {"in_stock": False})["queued"]
    assert "-" in queued, "202 should name the stream id the update was queued under"
    took = wait_for(lambda: top not in item_ids(recs(reader, known_user, n=50)),
                    f"{top} out of stock on the other instance")
    print(f"PUT out of stock -> hidden on another instance in {took * 1000:.0f} ms")
    put(writer, f"/v1/items/{top}", {"in_stock": True})
    wait_for(lambda: item_ids(recs(reader, known_user))[0] == top, f"{top} back in stock")
    # A partial update keeps the fields it leaves out: the category filter still knows it.
    assert top in item_ids(recs(reader, known_user, n=100, category=_category(reader, top)))


def _category(client: FlaskClient, item: str) -> str:
    engine = client.application.extensions["recommender.engine"]
    serving = engine.current()
    state = serving.items
    return state.categories[state.category[serving.bundle.items.lookup(item)]]


def test_user_put_changes_the_cold_start_segment(make_app: Callable[..., Flask],
                                                 worker: Worker) -> None:
    writer = make_app(**{ONLY: only("als")}).test_client()
    reader = make_app(**{ONLY: only("als")}).test_client()
    assert recs(reader, "newcomer")["strategy"] == "global_popularity"
    put(writer, "/v1/users/newcomer", {"segment": "tech", "country": "DE"})
    wait_for(lambda: recs(reader, "newcomer")["strategy"] == "segment_popularity",
             "the new segment")
    tech = item_ids(recs(reader, "newcomer"))
    # The reader has "tech" cached now: the override must win over the cache.
    put(writer, "/v1/users/newcomer", {"segment": "bookworm"})
    wait_for(lambda: item_ids(recs(reader, "newcomer")) != tech, "the second segment change")


BAD_PUTS = [
    ("/v1/items/i00001", {"in_stock": "no"}, "in_stock"),
    ("/v1/items/i00001", {"price": -1}, "price"),
    ("/v1/items/i00001", {"price": "12.5"}, "price"),
    ("/v1/items/i00001", {"category": ""}, "category"),
    ("/v1/items/i00001", {"colour": "red"}, "colour"),
    ("/v1/items/i00001", {}, "body"),
    ("/v1/items/i00001", ["in_stock"], "body"),
    ("/v1/items/bad$id", {"in_stock": True}, "item_id"),
    ("/v1/users/u1", {"country": "Germany"}, "country"),
    ("/v1/users/u1", {"segment": None}, "segment"),
    ("/v1/users/u1", {"segment": "tech", "age": 3}, "age"),
]


@pytest.mark.parametrize(("url", "body", "field"), BAD_PUTS,
                         ids=[f"{u[4:]} {json.dumps(b)[:30]} -> {f}" for u, b, f in BAD_PUTS])
def test_bad_put_is_a_400_naming_the_field(client: FlaskClient, redis_client: redis.Redis,
                                           url: str, body: Any, field: str) -> None:
    response = client.put(url, json=body)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert (error["code"], error["field"]) == ("invalid_field", field), error["message"]
    assert redis_client.xlen(UPDATES_STREAM) == 0, "a rejected update was queued"


# -- live popularity -----------------------------------------------------------------------

def test_events_move_the_cold_start_list_on_another_instance(
        make_app: Callable[..., Flask], worker: Worker) -> None:
    writer = make_app(**{ONLY: only("als")}).test_client()
    reader = make_app(**{ONLY: only("als")}).test_client()
    before = item_ids(recs(reader, "nobody-new", n=10))
    ranked = item_ids(recs(reader, "nobody-new", n=100))
    # One view of a middling item moves nothing: live data with few events is a whisper.
    writer.post("/v1/events", json={"user_id": "v1", "item_id": ranked[40], "event_type": "view"})
    wait_for(lambda: reader.get("/v1/model").json["popularity"]["events"] == 1,
             "the event counted")
    assert item_ids(recs(reader, "nobody-new", n=10)) == before
    # A rush of purchases of it does.
    rush = [{"user_id": f"buyer{k}", "item_id": ranked[40], "event_type": "purchase"}
            for k in range(150)]
    assert writer.post("/v1/events", json=rush).status_code == 201
    # Every event counted (on a cluster the partitions' batches land one by one), and the
    # rushed item at the top of the cold-start list.
    wait_for(lambda: reader.get("/v1/model").json["popularity"]["events"] == 151
             and item_ids(recs(reader, "nobody-new", n=10))[0] == ranked[40],
             "the rushed item at the top of the cold-start list")
    live = reader.get("/v1/model").json["popularity"]
    assert live["source"] == "live" and live["events"] == 151 and 0 < live["live_weight"] < 1
    assert live["trending"][0]["item_id"] == ranked[40]


def event(item: str, kind: str = "purchase", ts: float = NOW) -> dict[str, str]:
    return {"user_id": "u1", "item_id": item, "event_type": kind, "ts": f"{ts:.3f}"}


class Crash(BaseException):
    """The process dying between applying a batch and committing it."""


def test_an_event_counts_once_across_a_crash_before_the_ack(redis_client: redis.Redis) -> None:
    counter = PopularityCounter(redis_client, clock=lambda: NOW)
    for k in range(10):
        redis_client.xadd(STREAM_KEY, event(f"i{k % 2}"))

    def crashing(entries: Any, tx: Any) -> None:
        counter.handle(entries, tx)
        raise Crash

    first = Consumer(redis_client, STREAM_KEY, "popularity", crashing, DEAD_LETTERS, name="a")
    with pytest.raises(Crash):
        first.poll(wait=False)
    assert counter.read().events == 0 and first.pending() == 10
    other = Consumer(redis_client, STREAM_KEY, "popularity", counter.handle, DEAD_LETTERS,
                     name="b", claim_idle_ms=0)
    assert other.drain() == 10
    assert other.drain() == 0
    counts = counter.read()
    assert counts.events == 10 and other.pending() == 0
    assert counts.baseline == pytest.approx({"i0": 40.0, "i1": 40.0})


def test_poison_events_go_to_dead_letters_and_counting_goes_on(
        redis_client: redis.Redis) -> None:
    counter = PopularityCounter(redis_client, clock=lambda: NOW)
    redis_client.xadd(STREAM_KEY, event("i1"))
    redis_client.xadd(STREAM_KEY, event("i1", kind="like"))
    redis_client.xadd(STREAM_KEY, {"user_id": "u1", "event_type": "view", "ts": "soon"})
    redis_client.xadd(STREAM_KEY, event("i2", kind="view"))
    consumer = Consumer(redis_client, STREAM_KEY, "popularity", counter.handle, DEAD_LETTERS)
    assert consumer.drain() == 4
    reasons = [f[b"reason"].decode() for _, f in redis_client.xrange(DEAD_LETTERS)]
    assert len(reasons) == 2 and "event_type" in reasons[0] and "item_id" in reasons[1]
    counts = counter.read()
    assert counts.events == 2 and counts.baseline == pytest.approx({"i1": 8.0, "i2": 1.0})
    assert consumer.pending() == 0


@pytest.mark.parametrize("age", [0.0, 900.0, 6 * 3600.0, 30 * 3600.0],
                         ids=lambda a: f"age={a / 3600:g}h")
def test_counts_decay_by_their_half_lives(redis_client: redis.Redis, age: float) -> None:
    counter = PopularityCounter(redis_client, clock=lambda: NOW)
    redis_client.xadd(STREAM_KEY, event("i1", ts=NOW - age))
    Consumer(redis_client, STREAM_KEY, "popularity", counter.handle, DEAD_LETTERS).drain()
    counts = counter.read(NOW)
    expected = {d.name: 8.0 * 0.5 ** (age / d.half_life) if age <= d.horizon else 0.0
                for d in (BASELINE, RECENT)}
    assert counts.baseline.get("i1", 0.0) == pytest.approx(expected["baseline"], rel=1e-6)
    assert counts.recent.get("i1", 0.0) == pytest.approx(expected["recent"], rel=1e-6)
    # Read an hour later, everything has decayed by the same factor.
    later = counter.read(NOW + 3600)
    assert later.baseline["i1"] == pytest.approx(
        counts.baseline["i1"] * math.exp(-3600 / BASELINE.tau), rel=1e-6)


# -- the feast-push consumer -----------------------------------------------------------------

def test_feast_down_keeps_updates_pending_then_pushes_them(
        served_settings: Settings, redis_client: redis.Redis) -> None:
    from mlplatform.features import FeatureStoreAdapter

    adapter = FeatureStoreAdapter.from_settings(served_settings)
    feast_up = False

    def store() -> FeatureStoreAdapter:
        if not feast_up:
            raise Unavailable("feast online store failed", dependency="feast")
        return adapter

    queue = UpdateQueue(redis_client)
    queue.put("item", "i00001", {"in_stock": False, "price": 3.5})
    queue.put("item", "i00001", {"price": 4.0})  # the last update wins, field by field
    queue.put("user", "someone", {"segment": "tech"})
    pusher = FeastPusher(redis_client, store)
    consumer = Consumer(redis_client, UPDATES_STREAM, "feast-push", pusher.handle,
                        DEAD_LETTERS, claim_idle_ms=60_000)
    with pytest.raises(Retry):
        consumer.poll(wait=False)
    assert redis_client.xlen(DEAD_LETTERS) == 0 and consumer.pending() == 3
    feast_up = True
    assert consumer.drain() == 3
    assert consumer.pending() == 0 and redis_client.xlen(DEAD_LETTERS) == 0
    item = adapter.online_feature(["item_catalogue:in_stock", "item_catalogue:price",
                                   "item_catalogue:category"], {"item_id": "i00001"})
    assert (item["in_stock"], item["price"]) == (False, 4.0) and item["category"], item
    assert adapter.online_feature(["user_profile:segment"],
                                  {"user_id": "someone"})["segment"] == "tech"


def test_model_loads_before_the_first_request(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    assert app.extensions["recommender.engine"].current().version.label == "recommender:v1"
    ready = app.test_client().get("/readyz").json
    assert ready["checks"]["model"]["detail"] == "recommender:v1"
    assert ready["checks"]["item_features"]["detail"].startswith("feast")


def test_worker_bounds_its_streams(worker: Worker) -> None:
    assert set(worker.streams) >= {*stream_keys(worker.client, STREAM_KEY), UPDATES_STREAM,
                                   DEAD_LETTERS}
