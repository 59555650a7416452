"""The fraud HTTP API: answers, the decision log, labels, bad input, Redis down."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from fraud.app import get_service
from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.redisdb import DirectCommands, free_port

Tx = Callable[..., dict[str, Any]]


def test_score_answers_with_score_decision_reasons_and_version(client: Any, tx: Tx
                                                               ) -> None:
    response = client.post("/v1/transactions/score", json=tx())
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"transaction_id", "score", "decision", "reasons", "model_version",
                         "model_labels"}
    assert 0.0 <= body["score"] <= 1.0
    assert body["decision"] in ("approve", "review", "decline")
    assert body["model_version"] == "fraud-online:v1"
    for reason in body["reasons"]:
        assert set(reason) == {"code", "text", "feature", "value", "contribution"}
        assert reason["contribution"] > 0 and reason["text"] and reason["code"]


def test_a_fraud_like_transaction_scores_higher_than_an_ordinary_one(client: Any, tx: Tx
                                                                      ) -> None:
    ordinary = client.post("/v1/transactions/score",
                           json=tx("a", device_id=..., channel="card_present")).get_json()
    # Account takeover: far from home, many times the usual amount, a new device, in a burst.
    burst = [tx(f"b{i}", card_id="c000002", amount=900.0 + i, country="BR",
                device_id="d-new", timestamp=f"2025-01-20T12:0{i}:00Z") for i in range(5)]
    scored = client.post("/v1/transactions/score/batch", json={"transactions": burst}).get_json()
    assert scored["results"][-1]["score"] > ordinary["score"]
    assert scored["results"][-1]["decision"] in ("review", "decline")
    assert scored["results"][-1]["reasons"], "a flagged transaction must say why"


def test_every_decision_is_logged_with_its_features(app: Flask, client: Any, tx: Tx) -> None:
    client.post("/v1/transactions/score", json=tx(1))
    client.post("/v1/transactions/score/batch", json={"transactions": [tx(2), tx(3)]})
    service = get_service(app)
    # Every partition of the stream (one, in arrival order, on a single server).
    entries = [e for key in service.decisions.stream_keys for e in service.redis.xrange(key)]
    ids = [e[1][b"transaction_id"] for e in entries]
    if service.decisions.partitions > 1:
        ids.sort()
    assert ids == [b"t-test-1", b"t-test-2", b"t-test-3"]
    [record] = [json.loads(e[1][b"record"]) for e in entries
                if e[1][b"transaction_id"] == b"t-test-1"]
    assert record["features"]["amount"] == 42.5 and record["model_version"] == "fraud-online:v1"
    # The key lives as long as its stream entry (retention + a margin), not 30 days.
    ttl = service.redis.ttl(service.decisions.key("t-test-1"))
    retention = service.settings.stream_retention_seconds
    margin = max(3600, 2 * service.settings.archive_interval_seconds)
    assert retention < ttl <= service.decisions.key_ttl_seconds == retention + margin


def test_a_decision_call_sent_twice_appends_once(app: Flask, client: Any, tx: Tx,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection reset after Redis ran the decision script, but before its answer,
    makes the client send the same call again (DirectCommands and redis-py both retry
    once): the records are appended once and the answer is the first run's ids."""
    log = get_service(app).decisions
    once, once_many = log._eval, log._eval_many
    first: list[Any] = []

    def twice(keys: list[str], args: list[Any]) -> Any:
        first.append(once(keys, args))  # the run whose answer the reset lost
        return once(keys, args)

    def twice_many(calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        first.extend(once_many(calls))
        return once_many(calls)

    monkeypatch.setattr(log, "_eval", twice)
    monkeypatch.setattr(log, "_eval_many", twice_many)
    body = client.post("/v1/transactions/score/batch",
                       json={"transactions": [tx(21), tx(22)]}).get_json()
    monkeypatch.undo()
    entries = {e[1][b"transaction_id"].decode(): e[0].decode()
               for key in log.stream_keys for e in get_service(app).redis.xrange(key)}
    assert sorted(entries) == ["t-test-21", "t-test-22"]
    ran = sorted(i.decode() if isinstance(i, bytes) else str(i) for ids in first for i in ids)
    assert ran == sorted(entries.values())
    for r, record in zip(body["results"], log.fetch(["t-test-21", "t-test-22"])):
        assert json.loads(record)["decision"] == r["decision"]


def test_a_retried_transaction_gets_the_same_decision_and_counts_once(
        client: Any, app: Flask, tx: Tx) -> None:
    first = client.post("/v1/transactions/score", json=tx(7)).get_json()
    again = client.post("/v1/transactions/score", json=tx(7)).get_json()
    assert again.pop("duplicate") is True
    assert again == first
    client.post("/v1/transactions/score", json=tx(8))
    [record] = get_service(app).decisions.fetch(["t-test-8"])
    assert json.loads(record)["features"]["card_count_1m"] == 1.0  # t7 counted once


def test_labels_are_accepted_one_or_many(client: Any, app: Flask, tx: Tx, worker: Any) -> None:
    for i in (1, 2, 3):
        client.post("/v1/transactions/score", json=tx(i))
    one = client.post("/v1/labels", json={"transaction_id": "t-test-1", "is_fraud": True})
    many = client.post("/v1/labels", json={"labels": [
        {"transaction_id": "t-test-2", "is_fraud": False, "labelled_at": "2025-01-25T00:00:00Z"},
        {"transaction_id": "t-test-3", "is_fraud": True}]})
    assert one.status_code == many.status_code == 202
    assert one.get_json()["accepted"] == 1 and many.get_json()["accepted"] == 2
    model = client.get("/v1/model?sync=true").get_json()
    assert model["labels_learned"] == 3
    assert model["label_offset"] == many.get_json()["offsets"][-1]


def test_waiting_for_labels_without_a_worker_gives_503_naming_it(
        client: Any, app: Flask, tx: Tx) -> None:
    client.post("/v1/transactions/score", json=tx(1))
    client.post("/v1/labels", json={"transaction_id": "t-test-1", "is_fraud": True})
    with pytest.raises(Unavailable) as caught:
        get_service(app).model.sync(timeout=0.2)
    assert caught.value.dependency == "model"
    assert "fraud-online:v1" in caught.value.message
    assert "mlsuite worker fraud" in caught.value.message


def test_model_endpoint_reports_version_thresholds_metrics_and_drift(client: Any) -> None:
    body = client.get("/v1/model").get_json()
    assert body["model_version"] == "fraud-online:v1" and body["online"] is True
    t = body["thresholds"]
    assert 0 < t["review"] <= t["decline"] < 1 and t["review_fpr"] == 0.02
    assert {"roc_auc", "pr_auc", "recall@2%fpr", "review_fpr"} <= set(body["training_metrics"])
    assert {"labels", "precision", "recall", "roc_auc"} <= set(body["online_metrics"])
    assert {"active", "detections", "last"} <= set(body["drift"])


def test_readiness_reports_model_redis_and_feast(client: Any) -> None:
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready", body
    assert {"redis", "model", "feast"} <= set(body["checks"])


BAD_SCORES = {
    "missing field": ({"amount": ...}, 400, "amount"),
    "amount not a number": ({"amount": "12,5"}, 400, "amount"),
    "negative amount": ({"amount": -1}, 400, "amount"),
    "amount is a boolean": ({"amount": True}, 400, "amount"),
    "lower-case currency": ({"currency": "eur"}, 400, "currency"),
    "currency of 4 letters": ({"currency": "EURO"}, 400, "currency"),
    "country of 3 letters": ({"country": "DEU"}, 400, "country"),
    "unknown channel": ({"channel": "atm"}, 400, "channel"),
    "timestamp without timezone": ({"timestamp": "2025-01-20T12:00:00"}, 400, "timestamp"),
    "timestamp garbage": ({"timestamp": "yesterday"}, 400, "timestamp"),
    "timestamp in 1970": ({"timestamp": 0}, 400, "timestamp"),
    "id with spaces": ({"card_id": "c 1"}, 400, "card_id"),
    "unknown field": ({"is_fraud": True}, 400, "is_fraud"),
    "not an object": (None, 400, "body"),
}


@pytest.mark.parametrize("changes,status,field", BAD_SCORES.values(), ids=BAD_SCORES.keys())
def test_bad_transactions_get_a_4xx_naming_the_field(
        keyed_client: Any, keyed_app: Flask, tx: Tx, changes: Any, status: int, field: str) -> None:
    body = [tx()] if changes is None else tx(**changes)  # None: a list, not an object
    response = keyed_client.post("/v1/transactions/score", json=body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["field"] == field and field in error["message"]
    assert get_service(keyed_app).redis.keys("fraud:*") == [], "a rejected request changed state"


@pytest.mark.parametrize("data,message", [
    (b"{not json", "valid JSON"), (b"", "empty body"),
], ids=["malformed JSON", "empty body"])
def test_bad_json_gets_a_400(keyed_client: Any, data: bytes, message: str) -> None:
    response = keyed_client.post("/v1/transactions/score", data=data,
                           content_type="application/json")
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]


def test_one_bad_item_in_a_batch_applies_nothing(keyed_client: Any, keyed_app: Flask, tx: Tx) -> None:
    batch = [tx(1), tx(2), tx(3, currency="euro"), tx(4)]
    response = keyed_client.post("/v1/transactions/score/batch", json={"transactions": batch})
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "transactions[2].currency"
    assert get_service(keyed_app).redis.keys("fraud:*") == []


def test_duplicate_ids_in_one_batch_are_rejected(keyed_client: Any, tx: Tx) -> None:
    response = keyed_client.post("/v1/transactions/score/batch", json=[tx(1), tx(1)])
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "transactions[1].transaction_id"


BAD_LABELS = {
    "unknown transaction": ({"transaction_id": "t-nope", "is_fraud": True}, 404,
                            "transaction_id", "t-nope"),
    "is_fraud not a boolean": ({"transaction_id": "t-test-1", "is_fraud": "yes"}, 400,
                               "is_fraud", "true or false"),
    "is_fraud missing": ({"transaction_id": "t-test-1"}, 400, "is_fraud", "required"),
    "bad labelled_at": ({"transaction_id": "t-test-1", "is_fraud": True,
                         "labelled_at": "soon"}, 400, "labelled_at", "ISO 8601"),
    "unknown transaction in a batch": (
        {"labels": [{"transaction_id": "t-test-1", "is_fraud": True},
                    {"transaction_id": "t-nope", "is_fraud": False}]},
        404, "labels[1].transaction_id", "t-nope"),
    "bad item in a batch": (
        [{"transaction_id": "t-test-1", "is_fraud": True}, {"is_fraud": True}],
        400, "labels[1].transaction_id", "required"),
}


@pytest.mark.parametrize("body,status,field,text", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_bad_labels_get_a_4xx_and_append_nothing(
        keyed_client: Any, keyed_app: Flask, tx: Tx, body: Any, status: int, field: str, text: str) -> None:
    keyed_client.post("/v1/transactions/score", json=tx(1))
    response = keyed_client.post("/v1/labels", json=body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["field"] == field and text in error["message"]
    assert get_service(keyed_app).redis.xlen("fraud:labels") == 0


def test_redis_down_gives_503_naming_redis(make_app: Callable[..., Flask],
                                           fraud_settings: Settings, tx: Tx) -> None:
    dead = fraud_settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = make_app(dead).test_client()
    response = client.post("/v1/transactions/score", json=tx())
    assert response.status_code == 503
    body = response.get_json()["error"]
    assert body["details"]["dependency"] == "redis" and body["details"]["retryable"] is True
    assert response.headers["Retry-After"] == "1"
    assert client.post("/v1/labels", json={"transaction_id": "t1", "is_fraud": True}
                       ).status_code == 503


def test_no_production_model_gives_503_naming_the_model(
        make_app: Callable[..., Flask], tx: Tx) -> None:
    client = make_app(model_name="fraud-nonexistent").test_client()
    response = client.post("/v1/transactions/score", json=tx())
    assert response.status_code == 503
    assert response.get_json()["error"]["details"]["dependency"] == "model"


@pytest.mark.parametrize("size", [1, 300], ids=["single", "batch of 300"])
def test_a_request_costs_two_redis_round_trips_whatever_its_size(
        app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch, size: int, tx: Tx) -> None:
    """Velocity for every transaction (one pipeline), then the decision log (one MULTI)."""
    if get_service(app).decisions.partitions > 1:
        pytest.skip("a single server's count: on a cluster each pipeline is one round "
                    "trip per master (tests/fraud/test_fraud_cluster.py)")
    client.post("/v1/transactions/score", json=tx(0))  # first request loads the model
    me = threading.current_thread()
    trips: list[str] = []
    service = get_service(app)
    plain = service.redis.execute_command
    piped = redis.client.Pipeline.execute
    direct = DirectCommands.execute_command  # the scoring scripts' own connection

    def command(*args: Any, **kw: Any) -> Any:
        if threading.current_thread() is me:
            trips.append(str(args[0]))
        return plain(*args, **kw)

    def pipeline(self: Any, *args: Any, **kw: Any) -> Any:
        if threading.current_thread() is me:
            trips.append("pipeline")
        return piped(self, *args, **kw)

    def direct_command(self: Any, *args: Any) -> Any:
        if threading.current_thread() is me:
            trips.append(f"direct {args[0]}")
        return direct(self, *args)

    monkeypatch.setattr(service.redis, "execute_command", command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline)
    monkeypatch.setattr(DirectCommands, "execute_command", direct_command)
    batch = [tx(i, card_id=f"c{i % 50 + 1:06d}") for i in range(1, size + 1)]
    if size == 1:
        response = client.post("/v1/transactions/score", json=batch[0])
    else:
        response = client.post("/v1/transactions/score/batch", json=batch)
    assert response.status_code == 200
    assert len(trips) == 2, trips


def test_feast_down_scores_without_profiles_instead_of_failing(
        make_app: Callable[..., Flask], fraud_settings: Settings, tmp_path: Any, tx: Tx) -> None:
    """A payment must not wait on the feature store: profiles missing is a feature."""
    source = (fraud_settings.feast_repo / "feature_store.yaml").read_text()
    broken = tmp_path / "feature_store.yaml"
    broken.write_text(source.replace("${MLSUITE_DATA_DIR}/feast/registry.db",
                                     str(tmp_path / "no-such-registry.db")))
    app = make_app(fraud_settings.with_(feast_online_store=str(broken)))
    response = app.test_client().post("/v1/transactions/score", json=tx())
    assert response.status_code == 200, response.get_json()
    [record] = get_service(app).decisions.fetch(["t-test-1"])
    features = json.loads(record)["features"]
    assert features["card_profile_missing"] == 1.0 and features["merchant_profile_missing"] == 1.0
    assert app.test_client().get("/readyz").get_json()["checks"]["feast"]["ok"] is False


def test_with_keys_on_scopes_guard_each_endpoint_and_thresholds_are_for_admins(
        make_app: Callable[..., Flask], fraud_settings: Settings, redis_client: Any,
        tx: Callable[..., dict[str, Any]]) -> None:
    from mlplatform.security import KeyStore
    from mlplatform.security.keys import bearer

    client = make_app(fraud_settings.with_(auth=True)).test_client()
    store = KeyStore(redis_client)
    scorer, _ = store.create("checkout", ("score",))
    admin, _ = store.create("ops", ("admin",))
    assert client.post("/v1/transactions/score", json=tx(1)).status_code == 401
    assert client.post("/v1/transactions/score", json=tx(1), headers=bearer(scorer)).status_code == 200
    for method, path, scope in [("post", "/v1/labels", "label"), ("get", "/v1/reviews", "review"),
                                ("get", "/v1/lists", "lists"), ("put", "/v1/cards/c1", "admin")]:
        response = getattr(client, method)(path, json={}, headers=bearer(scorer))
        assert response.status_code == 403, path
        assert response.get_json()["error"]["details"]["scope"] == scope
    assert "thresholds" not in client.get("/v1/model", headers=bearer(scorer)).get_json()
    assert "review" in client.get("/v1/model", headers=bearer(admin)).get_json()["thresholds"]
