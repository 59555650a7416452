"""Recommendations while Redis is down, on a real redis-server this test stops and
restarts: they answer from the training history, marked ``degraded: ["redis"]``; events
and updates get a 503 naming redis; everything is back within 5 s of Redis answering,
without restarting the app. And with Feast's online store unreadable, a cold-start user
gets global popularity marked ``degraded: ["feast"]``. (The embedded SQLite store has no
outage to recover from: the Feast adapter keeps its connection to the file; a Redis
online store reconnects as the Redis above does.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from mlplatform.config import Settings
from mlplatform.redisdb import EmbeddedRedis, connect

from .conftest import ONLY, only

RECOVERY_SECONDS = 5.0


@pytest.fixture
def app(served_settings: Settings, outage_redis: EmbeddedRedis) -> Iterator[Flask]:
    from recommender.app import create_app
    from recommender.worker import publish_snapshots

    on = served_settings.with_(redis_url=outage_redis.url)
    publish_snapshots(on, connect(outage_redis.url))
    app = create_app(on, {"TESTING": True, ONLY: only("als")})
    yield app
    app.extensions["recommender.engine"].stop()


def _leaks(text: str, server: EmbeddedRedis) -> list[str]:
    words = [str(server.socket_path), str(server.dir), str(server.port), "127.0.0.1",
             "connecting", "Errno", "Error 2", "Error 111", "ConnectionError"]
    return [w for w in words if w in text]


def _recover(what: str, answered: Callable[[], bool]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_SECONDS:
        if answered():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} did not recover within {RECOVERY_SECONDS}s of redis "
                         "answering again")


def test_redis_down_recommendations_degrade_writes_503_and_all_recover(
        app: Flask, outage_redis: EmbeddedRedis, known_user: str) -> None:
    client = app.test_client()
    path = f"/v1/users/{known_user}/recommendations?n=5"
    event = {"user_id": known_user, "item_id": "i0001", "event_type": "view"}
    normal = client.get(path).get_json()
    assert normal["degraded"] == [] and len(normal["items"]) == 5
    assert client.post("/v1/events", json=event).status_code == 201

    outage_redis.stop()
    down = client.get(path)
    assert down.status_code == 200, down.get_json()
    body = down.get_json()
    assert body["degraded"] == ["redis"] and len(body["items"]) == 5
    assert body["strategy"] == "als" and not body["fallback"]
    batch = client.post("/v1/recommendations/batch", json={"user_ids": [known_user, "nobody"]})
    assert batch.status_code == 200 and batch.get_json()["degraded"] == ["redis"]
    writes: dict[str, Any] = {
        "events": client.post("/v1/events", json=event),
        "item update": client.put("/v1/items/i0001", json={"in_stock": False}),
    }
    for name, resp in writes.items():
        assert resp.status_code == 503, (name, resp.get_json())
        assert resp.headers["Retry-After"] == "1", name
        error = resp.get_json()["error"]
        assert error["details"]["dependency"] == "redis", (name, error)
        assert error["message"] == "redis is unavailable", (name, error)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["degraded"] == ["redis"]
    for resp in (down, *writes.values(), ready):
        assert not _leaks(resp.get_data(as_text=True), outage_redis), resp.get_data(as_text=True)

    outage_redis.start()
    started = time.monotonic()
    _recover("recommendations", lambda: client.get(path).get_json()["degraded"] == [])
    _recover("events", lambda: client.post("/v1/events", json=event).status_code == 201)
    took = time.monotonic() - started
    print(f"recommender: reads and writes normal {took:.3f}s after redis answered")
    assert client.get("/readyz").get_json()["status"] == "ready"


def test_feast_down_cold_start_is_global_popularity_marked_degraded(
        app: Flask, served_settings: Settings, known_user: str) -> None:
    client = app.test_client()
    online = served_settings.data_dir / "feast" / "online.db"
    assert online.is_file(), sorted(p.name for p in online.parent.iterdir())
    # A cold-start user needs their segment from Feast: with the online store gone, the
    # answer is everyone's popular items, and says what it lacked.
    online.rename(online.with_suffix(".away"))
    try:
        resp = client.get("/v1/users/never-seen-1/recommendations?n=5")
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["degraded"] == ["feast"] and body["strategy"] == "global_popularity"
        assert len(body["items"]) == 5
        # A user the model knows needs nothing from Feast: not degraded.
        known = client.get(f"/v1/users/{known_user}/recommendations?n=5").get_json()
        assert known["degraded"] == [], known
    finally:
        online.with_suffix(".away").rename(online)
