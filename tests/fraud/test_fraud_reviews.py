"""The review queue: cases opened by review decisions, listed, closed into labels the
worker's model learns; double closes, unknown cases and bad verdicts get clear 4xx."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from fraud.app import get_service
from fraud.reviews import ReviewQueue
from fraud.worker import FraudJobs

Tx = Callable[..., dict[str, Any]]


def _open(app: Flask, transaction_id: str) -> str:
    """The open-cases set of the transaction's partition (the plain name on one server)."""
    decisions = get_service(app).decisions
    return decisions.reviews_open_key(decisions.partition_of(transaction_id))


def _closed(app: Flask, transaction_id: str) -> str:
    return get_service(app).decisions.tag(transaction_id) + ReviewQueue.closed_key("fraud:")


def _review(app: Flask, tx: Tx, i: int | str, redis_client: Any, age: float = 0.0,
            **changes: Any) -> dict[str, Any]:
    """Score a transaction and open its case as the scorer's decision script does (a
    ZADD of the transaction id at its scored_at); its decision record."""
    body = tx(f"rv{i}", **changes)
    assert app.test_client().post("/v1/transactions/score", json=body).status_code == 200
    [record] = get_service(app).decisions.fetch([body["transaction_id"]])
    decision: dict[str, Any] = json.loads(record or b"{}")
    redis_client.zadd(_open(app, body["transaction_id"]),
                      {body["transaction_id"]: decision["scored_at"] - age})
    return decision


def test_open_cases_list_oldest_first_with_score_reasons_and_age(
        app: Flask, tx: Tx, redis_client: Any) -> None:
    old = _review(app, tx, 1, redis_client, age=600.0, amount=900.0)
    new = _review(app, tx, 2, redis_client)
    body = app.test_client().get("/v1/reviews?status=open&limit=10").get_json()
    assert body["count"] == 2 and body["open"] == 2 and body["status"] == "open"
    first, second = body["cases"]
    assert [first["transaction_id"], second["transaction_id"]] == ["t-test-rv1", "t-test-rv2"]
    assert first["score"] == round(old["score"], 6) and first["reasons"] == old["reasons"]
    assert first["amount"] == 900.0 and first["model_version"] == old["model_version"]
    assert 600.0 <= first["age_seconds"] < 660.0
    assert first["opened_at"] == round(old["scored_at"] - 600.0, 3)
    assert second["age_seconds"] < 60.0 and second["score"] == round(new["score"], 6)
    limited = app.test_client().get("/v1/reviews?limit=1").get_json()
    assert [c["transaction_id"] for c in limited["cases"]] == ["t-test-rv1"]
    assert limited["count"] == 2


def test_closing_a_case_appends_a_label_the_worker_learns(
        make_app: Callable[..., Flask], tx: Tx, redis_client: Any, worker: FraudJobs) -> None:
    app, other = make_app(), make_app()
    _review(app, tx, 1, redis_client)
    client = app.test_client()
    assert client.get("/v1/model?sync=true").get_json()["labels_learned"] == 0

    # The analyst works on another replica than the one that scored.
    closed = other.test_client().post("/v1/reviews/t-test-rv1",
                                      json={"outcome": "fraud", "analyst": "ana.k"})
    assert closed.status_code == 200, closed.get_json()
    body = closed.get_json()
    assert body["outcome"] == "fraud" and body["analyst"] == "ana.k"
    assert body["status"] == "closed"

    [(offset, fields)] = redis_client.xrange("fraud:labels")
    assert offset.decode() == body["label_offset"]
    assert fields[b"transaction_id"] == b"t-test-rv1" and fields[b"is_fraud"] == b"1"
    assert json.loads(fields[b"decision"])["transaction_id"] == "t-test-rv1"

    learned = client.get("/v1/model?sync=true").get_json()
    assert learned["labels_learned"] == 1, "the worker learned the analyst's verdict"

    assert client.get("/v1/reviews").get_json()["cases"] == []
    done = client.get("/v1/reviews?status=closed").get_json()
    [case] = done["cases"]
    assert case["transaction_id"] == "t-test-rv1" and case["outcome"] == "fraud"
    assert case["analyst"] == "ana.k" and case["closed_at"] >= case["opened_at"]
    assert case["score"] is not None and case["status"] == "closed"


def test_a_legit_verdict_is_a_negative_label(app: Flask, tx: Tx, redis_client: Any) -> None:
    _review(app, tx, 1, redis_client)
    response = app.test_client().post("/v1/reviews/t-test-rv1",
                                      json={"outcome": "legit", "analyst": "bo"})
    assert response.status_code == 200
    [(_, fields)] = redis_client.xrange("fraud:labels")
    assert fields[b"is_fraud"] == b"0"


def test_closing_a_closed_case_is_a_conflict_and_adds_no_label(
        app: Flask, tx: Tx, redis_client: Any) -> None:
    _review(app, tx, 1, redis_client)
    client = app.test_client()
    assert client.post("/v1/reviews/t-test-rv1",
                       json={"outcome": "fraud", "analyst": "ana"}).status_code == 200
    again = client.post("/v1/reviews/t-test-rv1", json={"outcome": "legit", "analyst": "bo"})
    assert again.status_code == 409
    error = again.get_json()["error"]
    assert error["field"] == "transaction_id" and "already closed (fraud by ana)" in \
        error["message"]
    assert error["details"]["outcome"] == "fraud"
    assert redis_client.xlen("fraud:labels") == 1


def test_two_analysts_closing_at_once_close_it_once(
        app: Flask, tx: Tx, redis_client: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _review(app, tx, 1, redis_client)

    def close(analyst: str) -> int:
        with app.test_client() as c:
            return int(c.post("/v1/reviews/t-test-rv1",
                              json={"outcome": "fraud", "analyst": analyst}).status_code)

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(close, ["a1", "a2", "a3", "a4"]))
    assert statuses == [200, 409, 409, 409]
    assert redis_client.xlen("fraud:labels") == 1


def test_an_unknown_case_is_not_found(app: Flask, tx: Tx, redis_client: Any) -> None:
    client = app.test_client()
    response = client.post("/v1/reviews/t-nobody", json={"outcome": "fraud", "analyst": "ana"})
    assert response.status_code == 404
    assert response.get_json()["error"]["field"] == "transaction_id"
    # Scored, but approved: no case either.
    assert client.post("/v1/transactions/score", json=tx("plain")).status_code == 200
    assert client.post("/v1/reviews/t-test-plain",
                       json={"outcome": "fraud", "analyst": "ana"}).status_code == 404


def test_a_case_whose_label_cannot_be_appended_stays_open(
        app: Flask, redis_client: Any) -> None:
    # A case without a decision record (e.g. older than the decision retention).
    redis_client.zadd(_open(app, "t-lost"), {"t-lost": time.time()})
    response = app.test_client().post("/v1/reviews/t-lost",
                                      json={"outcome": "fraud", "analyst": "ana"})
    assert response.status_code == 404
    assert "no decision to label" in response.get_json()["error"]["message"]
    assert redis_client.zscore(_open(app, "t-lost"), "t-lost") is not None, "the case is open again"
    assert redis_client.zcard(_closed(app, "t-lost")) == 0


@pytest.mark.parametrize(("body", "field", "says"), [
    ({"outcome": "maybe", "analyst": "ana"}, "outcome", "fraud, legit"),
    ({"analyst": "ana"}, "outcome", "fraud, legit"),
    ({"outcome": "fraud"}, "analyst", "required"),
    ({"outcome": "fraud", "analyst": ""}, "analyst", "letters, digits"),
    ({"outcome": "fraud", "analyst": ["ana"]}, "analyst", "string id"),
    ({"outcome": "fraud", "analyst": "ana", "verdict": 1}, "verdict", "outcome, analyst"),
    (["fraud"], "body", "JSON object"),
], ids=["bad outcome", "no outcome", "no analyst", "empty analyst", "analyst not a string",
        "unknown field", "not an object"])
def test_a_bad_verdict_names_the_field(app: Flask, tx: Tx, redis_client: Any, body: Any,
                                       field: str, says: str) -> None:
    _review(app, tx, 1, redis_client)
    response = app.test_client().post("/v1/reviews/t-test-rv1", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == field and says in error["message"]
    assert redis_client.zscore(_open(app, "t-test-rv1"), "t-test-rv1") is not None, "the case is still open"


@pytest.mark.parametrize(("query", "field"), [
    ("status=pending", "status"), ("limit=0", "limit"), ("limit=abc", "limit"),
    ("limit=100000", "limit")])
def test_bad_list_queries_name_the_parameter(client: Any, query: str, field: str) -> None:
    response = client.get(f"/v1/reviews?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field


def _scraped(app: Flask, name: str) -> float | None:
    """Scrape /metrics (which refreshes the review gauges), then read ``name`` from this
    process's registry (Feast may set PROMETHEUS_MULTIPROC_DIR in the test process, so
    the exposition text cannot be relied on here)."""
    assert app.test_client().get("/metrics").status_code == 200
    return REGISTRY.get_sample_value(name)


def test_overdue_cases_are_counted_in_a_metric_on_scrape(
        make_app: Callable[..., Flask], tx: Tx, redis_client: Any) -> None:
    app = make_app(review_max_age_seconds=3600)
    _review(app, tx, 1, redis_client, age=7200.0)
    _review(app, tx, 2, redis_client, age=5000.0)
    _review(app, tx, 3, redis_client, age=10.0)
    assert _scraped(app, "mlsuite_fraud_reviews_open") == 3
    assert _scraped(app, "mlsuite_fraud_reviews_overdue") == 2
    body = app.test_client().get("/v1/reviews").get_json()
    assert body["overdue"] == 2 and body["max_age_seconds"] == 3600
    assert app.test_client().post("/v1/reviews/t-test-rv1", json={
        "outcome": "legit", "analyst": "ana"}).status_code == 200
    assert _scraped(app, "mlsuite_fraud_reviews_overdue") == 1
