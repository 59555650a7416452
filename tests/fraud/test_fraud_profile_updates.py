"""Profile data services: PUT a card or merchant profile on one replica, every replica
scores with it within 2 seconds (queued -> batched Feast push -> profile overrides)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from fraud.app import get_service
from fraud.profile_push import FeastDown, ProfilePusher
from fraud.worker import FraudJobs
from mlplatform.config import Settings
from mlplatform.features import FeatureStoreAdapter

Tx = Callable[..., dict[str, Any]]

CARD = {"home_country": "BR", "card_age_days": 3, "avg_amount": 2500.0}
MERCHANT = {"merchant_category": "jewelry", "merchant_country": "BR", "risk_score": 0.95}


def _features(app: Flask, client: Any, body: dict[str, Any]) -> dict[str, float]:
    assert client.post("/v1/transactions/score", json=body).status_code == 200
    [record] = get_service(app).decisions.fetch([body["transaction_id"]])
    return json.loads(record or b"{}")["features"]  # type: ignore[no-any-return]


def test_a_profile_put_on_one_replica_shows_in_another_replicas_scores_within_2s(
        make_app: Callable[..., Flask], tx: Tx, worker: FraudJobs) -> None:
    a, b = make_app(), make_app()
    card, merchant = f"c-put-{time.monotonic_ns()}", f"m-put-{time.monotonic_ns()}"
    b_client = b.test_client()
    before = _features(b, b_client, tx("p0", card_id=card, merchant_id=merchant))
    assert before["card_profile_missing"] == 1.0 and before["merchant_profile_missing"] == 1.0

    put = a.test_client().put(f"/v1/cards/{card}", json=CARD)
    posted = time.monotonic()
    assert put.status_code == 202, put.get_json()
    assert put.get_json()["queued"] and put.get_json()["profile"] == CARD
    assert a.test_client().put(f"/v1/merchants/{merchant}", json=MERCHANT).status_code == 202
    i, after = 1, before
    while time.monotonic() - posted < 2.0:
        after = _features(b, b_client, tx(f"p{i}", card_id=card, merchant_id=merchant))
        if after["card_profile_missing"] == 0.0 and after["merchant_profile_missing"] == 0.0:
            break
        i += 1
        time.sleep(0.02)
    elapsed = time.monotonic() - posted
    assert after["card_avg_amount"] == 2500.0 and after["card_age_days"] == 3.0, elapsed
    assert after["merchant_risk_score"] == 0.95 and after["mcat=jewelry"] == 1.0, elapsed
    assert elapsed < 2.0
    # Feast holds them too: a replica started now reads them from the online store.
    assert worker.pusher.pushes >= 1
    fresh = make_app()
    fresh_features = _features(fresh, fresh.test_client(), tx("p-new", card_id=card))
    assert fresh_features["card_avg_amount"] == 2500.0


BAD_PUTS = {
    "unknown field": ("cards", {**CARD, "limit": 5}, "limit", "not a card profile field"),
    "missing field": ("cards", {"home_country": "DE", "avg_amount": 1.0}, "card_age_days",
                      "required"),
    "lower-case country": ("cards", {**CARD, "home_country": "br"}, "home_country",
                           "2 upper-case letters"),
    "negative age": ("cards", {**CARD, "card_age_days": -1}, "card_age_days", "integer >= 0"),
    "fractional age": ("cards", {**CARD, "card_age_days": 2.5}, "card_age_days", "integer"),
    "amount as text": ("cards", {**CARD, "avg_amount": "12,5"}, "avg_amount", "number >= 0"),
    "risk above 1": ("merchants", {**MERCHANT, "risk_score": 1.5}, "risk_score", "[0, 1]"),
    "risk a boolean": ("merchants", {**MERCHANT, "risk_score": True}, "risk_score", "[0, 1]"),
    "category with spaces": ("merchants", {**MERCHANT, "merchant_category": "fine art"},
                             "merchant_category", "snake_case"),
    "not an object": ("merchants", [MERCHANT], "body", "JSON object"),
}


@pytest.mark.parametrize("path,body,field,text", BAD_PUTS.values(), ids=BAD_PUTS.keys())
def test_bad_profile_puts_get_a_4xx_naming_the_field_and_queue_nothing(
        client: Any, app: Flask, path: str, body: Any, field: str, text: str) -> None:
    response = client.put(f"/v1/{path}/x1", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == field and text in error["message"], error
    assert get_service(app).redis.exists("fraud:profile-updates") == 0


def test_a_bad_id_in_the_path_is_named(client: Any) -> None:
    response = client.put("/v1/cards/c%201", json=CARD)
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "card_id"


def test_feast_down_keeps_updates_pending_and_invalid_ones_become_dead_letters(
        app: Flask, fraud_settings: Settings) -> None:
    service = get_service(app)
    feast_up = False

    def adapter() -> Any:
        if not feast_up:
            raise ConnectionError("feature store unreachable")
        return FeatureStoreAdapter.from_settings(fraud_settings)

    pusher = ProfilePusher(service.redis, fraud_settings, service.config,
                           adapter_factory=adapter, name="pusher-1")
    client = app.test_client()
    for i in range(3):
        client.put(f"/v1/cards/c-down-{i}", json={**CARD, "avg_amount": 100.0 + i})
    client.put("/v1/merchants/m-down-0", json=MERCHANT)
    client.put("/v1/cards/c-down-0", json={**CARD, "avg_amount": 7.0})  # the latest wins
    service.redis.xadd("fraud:profile-updates", {"kind": "card", "id": "c-bad", "at": "1",
                                                 "profile": json.dumps({**CARD, "x": 1})})
    with pytest.raises(FeastDown):
        pusher.consumer.poll(wait=False)
    assert pusher.consumer.pending() == 6, "nothing acknowledged while Feast is down"
    assert service.redis.xlen("fraud:dead-letters") == 0

    feast_up = True
    pusher.consumer.poll(wait=False)  # its own pending entries first, then new ones
    assert pusher.consumer.pending() == 0
    assert pusher.pushes == 2, "one push per kind for the whole batch"
    [dead] = service.redis.xrange("fraud:dead-letters")
    assert b"x is not a card profile field" in dead[1][b"reason"]
    overrides = service.overrides
    assert overrides.refresh()
    # Cards are kept by token from the request on (fraud.pii).
    down0, down2 = (service.pii.token("card", f"c-down-{i}") for i in (0, 2))
    assert "c-down-0" not in overrides.get()["card"]  # type: ignore[index]
    assert overrides.get()["card"][down0]["avg_amount"] == 7.0  # type: ignore[index]
    assert service.profiles.get_many("card", [down2])[down2]["avg_amount"] == 102.0  # type: ignore[index]
