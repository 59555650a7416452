"""A/B attribution: exposures on the request path, conversions attributed by the worker.

Real Redis, real Feast prices (the catalogue snapshot), the real app; the worker's two
consumer groups either run in the worker (``worker`` fixture) or are drained here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from mlplatform.assignment import Experiment
from mlplatform.config import Settings
from mlplatform.experiments import ExperimentStore
from mlplatform.security.pii import tokeniser
from mlplatform.streams import Consumer, partition_count
from mlplatform.worker import Worker
from recommender.attribution import EXPOSURES_STREAM, Attributor, ExposureCounter, PriceBook
from recommender.contract import ExperimentReport
from recommender.history import STREAM_KEY
from recommender.worker import DEAD_LETTERS

from .conftest import ONLY

NAME = "recommender_model"
SPLIT = Experiment(NAME, "attribution-test", {"als": 0.5, "popularity": 0.5})


def assigned(settings: Settings, user: str) -> str:
    """``user``'s variant: the experiment hashes the user's token (the unit past the edge)."""
    return SPLIT.variant_of(tokeniser(settings).token("user", user))


def recommend(client: FlaskClient, user: str, n: int = 5) -> dict[str, Any]:
    response = client.get(f"/v1/users/{user}/recommendations?n={n}")
    assert response.status_code == 200, response.json
    return response.json  # type: ignore[no-any-return]


def post(client: FlaskClient, user: str, item: str, kind: str, **extra: Any) -> None:
    response = client.post("/v1/events", json={"user_id": user, "item_id": item,
                                                "event_type": kind, **extra})
    assert response.status_code == 201, response.json


def report(client: FlaskClient) -> dict[str, Any]:
    """The experiment's report, checked against the type the OpenAPI document gives it."""
    response = client.get(f"/v1/experiments/{NAME}")
    assert response.status_code == 200, response.json
    msgspec.convert(response.json, ExperimentReport)  # raises naming the field that differs
    return response.json  # type: ignore[no-any-return]


def drain(client: redis.Redis, windows: dict[str, float] | None = None) -> None:
    """Apply every pending exposure and event, as the worker's two groups do."""
    store = ExperimentStore(client)
    Consumer(client, EXPOSURES_STREAM, "experiment-exposures",
             ExposureCounter(store).handle, DEAD_LETTERS).drain()
    Consumer(client, STREAM_KEY, "attribution",
             Attributor(store, PriceBook(client).price, windows).handle, DEAD_LETTERS,
             partitions=partition_count(client)).drain()


def price_of(client: FlaskClient, item: str) -> float:
    serving = client.application.extensions["recommender.engine"].current()
    assert serving.items.price is not None
    return float(serving.items.price[serving.bundle.items.lookup(item)])


def test_purchase_of_a_shown_item_is_attributed_to_the_variant_that_showed_it(
        make_app: Callable[..., Flask], worker: Worker, known_user: str,
        served_settings: Settings) -> None:
    client = make_app(**{ONLY: SPLIT}).test_client()
    shown = recommend(client, known_user)
    variant = assigned(served_settings, known_user)
    item = shown["items"][0]["item_id"]
    post(client, known_user, item, "add_to_cart")
    post(client, known_user, item, "purchase")
    deadline = time.monotonic() + 5
    while True:
        body = report(client)
        mine = body["variants"][variant]
        if mine["purchases"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    other = body["variants"]["popularity" if variant == "als" else "als"]
    assert (mine["users"], mine["exposures"], mine["conversions"]) == (1, 1, 1)
    assert (mine["conversion_events"], mine["purchases"]) == (2, 1)
    assert mine["revenue"] == pytest.approx(price_of(client, item), abs=0.01)
    assert mine["revenue"] > 0
    assert mine["versions"][shown["model"]]["purchases"] == 1, mine["versions"]
    assert (other["users"], other["conversions"], other["revenue"]) == (0, 0, 0)
    # The same credit feeds a rollout's conversion guard for the version that served.
    from mlplatform.rollouts.measure import read_measurements

    version = int(shown["model"].rsplit(":v", 1)[1])
    now = time.time()
    guard = read_measurements(worker.client, "recommender", version, now - 60, now + 1)
    assert guard.values.get("conversion") == 2.0, guard  # a cart and a purchase, 1 exposure


def test_only_shown_items_within_the_window_count(
        make_app: Callable[..., Flask], redis_client: redis.Redis, known_user: str,
        served_settings: Settings) -> None:
    client = make_app(**{ONLY: SPLIT}).test_client()
    shown = [i["item_id"] for i in recommend(client, known_user, n=10)["items"]]
    catalogue = client.application.extensions["recommender.engine"].current().bundle.items
    unseen = next(str(i) for i in catalogue.ids.tolist() if str(i) not in shown)
    now = time.time()
    post(client, known_user, unseen, "purchase")  # never shown: not attributed
    post(client, known_user, shown[0], "purchase", timestamp=now - 600)  # before the exposure
    post(client, known_user, shown[1], "purchase", timestamp=now + 200)  # 200 s later
    post(client, known_user, shown[2], "view")  # not a conversion
    drain(redis_client, windows={NAME: 60.0})  # a 60 s window: the late purchase is out
    mine = report(client)["variants"][assigned(served_settings, known_user)]
    assert (mine["exposures"], mine["conversions"], mine["purchases"]) == (1, 0, 0)

    post(client, known_user, shown[3], "purchase", timestamp=now + 30)  # within 60 s
    drain(redis_client, windows={NAME: 60.0})
    mine = report(client)["variants"][assigned(served_settings, known_user)]
    assert (mine["conversions"], mine["purchases"]) == (1, 1)
    assert mine["revenue"] == pytest.approx(price_of(client, shown[3]), abs=0.01)


def test_batch_requests_record_each_user_under_its_assigned_variant(
        make_app: Callable[..., Flask], redis_client: redis.Redis,
        served_settings: Settings) -> None:
    client = make_app(**{ONLY: SPLIT}).test_client()
    users = [f"u{k:06d}" for k in range(1, 61)]
    response = client.post("/v1/recommendations/batch", json={"user_ids": users, "n": 3})
    assert response.status_code == 200, response.json
    recommend(client, users[0])  # a second exposure of one user
    drain(redis_client)
    body = report(client)
    expected = {v: sum(assigned(served_settings, u) == v for u in users)
                for v in ("als", "popularity")}
    assert {v: body["variants"][v]["users"] for v in expected} == expected
    assert sum(body["variants"][v]["exposures"] for v in expected) == 61
    # Each user's exposure names the version that served that user (a rollout splits a batch).
    served = {r["model"] for r in response.json["results"]}
    assert set().union(*(body["variants"][v]["versions"] for v in expected)) == served
    g = body["variants"]["als"]["guardrails"]
    assert g["requests"] == body["variants"]["als"]["exposures"] and g["errors"] == 0
    assert g["latency_p99_ms"] is not None and g["ok"], g


def test_report_json_shape_and_unknown_experiment(client: FlaskClient) -> None:
    recommend(client, "u000001")
    body = report(client)
    assert body["experiment"] == NAME and body["control"] in body["variants"]
    for v in body["variants"].values():
        assert {"users", "exposures", "conversions", "conversion_rate", "revenue_per_user",
                "lift", "lift_ci95", "p_value"} <= set(v), sorted(v)
    assert {"p_value", "mismatch"} <= set(body["srm"])
    missing = client.get("/v1/experiments/no_such_experiment")
    assert missing.status_code == 404
    error = missing.json["error"]
    assert error["field"] == "name" and NAME in error["message"], error


def test_failed_requests_count_against_the_variants_guardrail(
        make_app: Callable[..., Flask], redis_client: redis.Redis,
        served_settings: Settings) -> None:
    # No model at this alias: every recommendation is a 503, counted for the user's variant.
    client = make_app(**{ONLY: SPLIT, "RECOMMENDER_MODEL_ALIAS": "nothing-here"}).test_client()
    users = [f"u{k:06d}" for k in range(1, 21)]
    for user in users:
        assert client.get(f"/v1/users/{user}/recommendations").status_code == 503
    drain(redis_client)
    body = report(client)
    for variant in ("als", "popularity"):
        g = body["variants"][variant]["guardrails"]
        expected = sum(assigned(served_settings, u) == variant for u in users)
        assert (g["requests"], g["errors"]) == (expected, expected)
        assert g["ok"] is False and "error rate" in g["reasons"][0]
    assert body["guardrails"]["ok"] is False
