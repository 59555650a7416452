"""Fraud scoring while Redis is down, on a real redis-server this test stops and restarts:
fail-closed answers 503 naming redis, fail-open scores with the model and says it is
degraded and unrecorded; labels get 503; all recover within 5 s of Redis answering again,
without restarting the app."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from flask import Flask

from fraud.app import create_app, get_service
from fraud.contract import Score
from fraud.service import UNRECORDED
from mlplatform.config import Settings
from mlplatform.redisdb import EmbeddedRedis

from .conftest import TEST_FRAUD_CONFIG

RECOVERY_SECONDS = 5.0


@pytest.fixture
def make_app(settings: Settings, fraud_data_dir: Path, outage_redis: EmbeddedRedis
             ) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        on = settings.with_(data_dir=fraud_data_dir, redis_url=outage_redis.url,
                            model_poll_seconds=0.2)
        app = create_app(on, {"TESTING": True, "FRAUD": {**TEST_FRAUD_CONFIG, **overrides}})
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_service(app).close()


def _leaks(text: str, server: EmbeddedRedis) -> list[str]:
    """What of the server's address or the driver's wording a client-facing text shows."""
    words = [str(server.socket_path), str(server.dir), str(server.port), "127.0.0.1",
             "connecting", "Errno", "Error 2", "Error 111", "ConnectionError"]
    return [w for w in words if w in text]


def _recover(what: str, answered: Callable[[], bool]) -> float:
    """Seconds until ``answered()`` first holds, polled every 20 ms (fails after
    RECOVERY_SECONDS)."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_SECONDS:
        if answered():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} did not recover within {RECOVERY_SECONDS}s of redis "
                         "answering again")


def test_fail_closed_is_a_503_naming_redis_then_recovers(
        make_app: Callable[..., Flask], outage_redis: EmbeddedRedis,
        tx: Callable[..., dict[str, Any]]) -> None:
    client = make_app().test_client()  # fail_mode defaults to closed
    ids = itertools.count()
    assert client.post("/v1/transactions/score", json=tx(next(ids))).status_code == 200

    outage_redis.stop()
    down = client.post("/v1/transactions/score", json=tx(next(ids)))
    assert down.status_code == 503, down.get_json()
    assert down.headers["Retry-After"] == "1"
    error = down.get_json()["error"]
    assert error["details"] == {"dependency": "redis", "retryable": True,
                                "policy": "fail-closed"}
    assert "fails closed" in error["message"]
    label = client.post("/v1/labels", json={"transaction_id": "t-test-0", "is_fraud": True})
    assert label.status_code == 503 and label.headers["Retry-After"] == "1"
    assert label.get_json()["error"]["details"]["dependency"] == "redis"
    ready = client.get("/readyz")
    body = ready.get_json()
    assert (ready.status_code, body["status"], body["degraded"]) == (200, "degraded", ["redis"])
    assert body["checks"]["redis"] == {"ok": False, "detail": "redis is unavailable"}
    for resp in (down, label, ready):
        assert not _leaks(resp.get_data(as_text=True), outage_redis), resp.get_data(as_text=True)

    outage_redis.start()
    scored = _recover("scoring", lambda: client.post(
        "/v1/transactions/score", json=tx(next(ids))).status_code == 200)
    labelled = _recover("labels", lambda: client.post(
        "/v1/labels", json={"transaction_id": "t-test-0", "is_fraud": True}).status_code == 202)
    print(f"recovered after redis answered: scoring {scored:.3f}s, labels +{labelled:.3f}s")
    assert client.get("/readyz").get_json()["status"] == "ready"


def test_fail_open_scores_with_the_model_and_says_it_is_not_recorded(
        make_app: Callable[..., Flask], outage_redis: EmbeddedRedis,
        tx: Callable[..., dict[str, Any]]) -> None:
    app = make_app(fail_mode="open")
    client, service = app.test_client(), get_service(app)
    normal = client.post("/v1/transactions/score", json=tx(1)).get_json()
    assert "degraded" not in normal

    outage_redis.stop()
    before = {d: UNRECORDED.labels(d)._value.get() for d in ("approve", "review", "decline")}
    one = client.post("/v1/transactions/score", json=tx(2))
    assert one.status_code == 200, one.get_json()
    body = one.get_json()
    assert msgspec.convert(body, Score).degraded is not None, "as the document states it"
    assert body["degraded"]["dependency"] == "redis"
    assert body["degraded"]["policy"] == "fail-open"
    assert body["degraded"]["recorded"] is False
    assert body["decision"] in ("approve", "review", "decline")
    assert body["model_version"] == normal["model_version"]
    batch = client.post("/v1/transactions/score/batch",
                        json={"transactions": [tx(3), tx(4, card_id="c000002")]})
    assert batch.status_code == 200, batch.get_json()
    assert [r["degraded"]["policy"] for r in batch.get_json()["results"]] == ["fail-open"] * 2
    after = {d: UNRECORDED.labels(d)._value.get() for d in before}
    assert sum(after.values()) - sum(before.values()) == 3
    # Labels have no fail-open: a label that cannot be stored is refused, retryable.
    label = client.post("/v1/labels", json={"transaction_id": "t-test-1", "is_fraud": True})
    assert label.status_code == 503
    assert label.get_json()["error"]["details"]["dependency"] == "redis"
    assert not _leaks(one.get_data(as_text=True) + label.get_data(as_text=True), outage_redis)

    outage_redis.start()

    def recorded_again() -> bool:
        tid = f"t-recovered-{time.monotonic_ns()}"
        got = client.post("/v1/transactions/score", json=tx(transaction_id=tid)).get_json()
        return "degraded" not in got and service.decisions.fetch([tid])[0] is not None

    took = _recover("recorded scoring", recorded_again)
    print(f"fail-open: decisions recorded again {took:.3f}s after redis answered")
    # What was decided during the outage left no trace: a retry is scored afresh.
    assert service.decisions.fetch(["t-test-2"]) == [None]
