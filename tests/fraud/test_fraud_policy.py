"""Scoring end to end with rules, lists, reason codes and review cases (real Redis, real
models, the app's own endpoints)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from prometheus_client import REGISTRY

from fraud.app import get_service
from fraud.reasons import CODES
from fraud.worker import FraudJobs

Tx = Callable[..., dict[str, Any]]


def _record(app: Flask, transaction_id: str) -> dict[str, Any]:
    [raw] = get_service(app).decisions.fetch([transaction_id])
    assert raw is not None, f"no decision record for {transaction_id}"
    return json.loads(raw)  # type: ignore[no-any-return]


def test_every_decision_carries_reason_codes_and_sentences(
        client: Any, payments_data: Any, as_bodies: Any) -> None:
    bodies = as_bodies(payments_data.frame.iloc[-400:])
    results = client.post("/v1/transactions/score/batch", json=bodies).get_json()["results"]
    known = set(CODES)
    with_reasons = 0
    for result in results:
        with_reasons += bool(result["reasons"])
        for reason in result["reasons"]:
            assert reason["code"] in known or reason["code"].startswith("rule:"), reason
            assert reason["text"] and reason["text"] != reason["feature"], reason
    assert with_reasons >= 0.9 * len(results), "most decisions explain themselves"


def test_a_blocked_card_is_declined_by_rule_on_every_replica(wait_for: Callable[..., Any],
        make_app: Callable[..., Flask], tx: Tx) -> None:
    first, second = make_app(), make_app()
    put = first.test_client().put("/v1/lists/blocked_cards/c-stolen",
                                  json={"reason": "reported stolen"})
    assert put.status_code in (200, 201), put.get_json()

    def declined() -> Any:
        body = second.test_client().post(
            "/v1/transactions/score",
            json=tx(f"blk-{time.monotonic_ns()}", card_id="c-stolen")).get_json()
        codes = [r["code"] for r in body["reasons"]]
        return body if body["decision"] == "decline" and "rule:blocked_card" in codes else None

    body = wait_for("the block to reach the other replica", declined, timeout=1.5)
    codes = [r["code"] for r in body["reasons"]]
    assert "rule:blocked_card" in codes, body["reasons"]
    record = _record(second, body["transaction_id"])
    assert record["decision"] == "decline"
    assert "rule:blocked_card" in [r["code"] for r in record["reasons"]]
    hits = REGISTRY.get_sample_value("mlsuite_fraud_rule_hits_total",
                                     {"rule": "blocked_card", "action": "decline"})
    assert hits is not None and hits >= 1


def test_a_review_decision_opens_a_case_that_closes_into_a_learned_label(
        make_app: Callable[..., Flask], worker: FraudJobs, tx: Tx) -> None:
    app = make_app()
    client = app.test_client()
    # The shipped hard limit sends an amount of 100,000 or more to an analyst.
    body = client.post("/v1/transactions/score",
                       json=tx("rv-1", card_id="c-review", amount=200_000.0)).get_json()
    assert body["decision"] == "review", body
    assert "rule:amount_limit" in [r["code"] for r in body["reasons"]]
    cases = client.get("/v1/reviews?status=open&limit=10").get_json()
    ids = [c["transaction_id"] for c in cases["cases"]] if isinstance(cases, dict) else \
        [c["transaction_id"] for c in cases]
    assert "t-test-rv-1" in ids, cases
    closed = client.post("/v1/reviews/t-test-rv-1",
                         json={"outcome": "fraud", "analyst": "ana"})
    assert closed.status_code in (200, 201, 202), closed.get_json()
    learned = client.get("/v1/model?sync=true").get_json()
    assert learned["labels_learned"] >= 1
    again = client.post("/v1/reviews/t-test-rv-1", json={"outcome": "legit", "analyst": "bo"})
    assert again.status_code == 409, again.get_json()


def test_scores_never_fall_as_amounts_rise_on_a_fresh_card(client: Any, tx: Tx) -> None:
    amounts = [5.0, 50.0, 500.0, 5_000.0, 50_000.0, 500_000.0, 999_999.0]
    scores = []
    for i, amount in enumerate(amounts):  # a fresh card, device and merchant per amount
        body = client.post("/v1/transactions/score", json=tx(
            f"mono-{i}", card_id=f"c-fresh-{i}", device_id=f"d-fresh-{i}",
            merchant_id=f"m-fresh-{i}", amount=amount)).get_json()
        scores.append(body["score"])
    assert all(b >= a - 1e-9 for a, b in zip(scores, scores[1:])), list(zip(amounts, scores))
