"""Correctness of the scorer under abuse: concurrent duplicate ids, extreme amounts, a
score that fails half-way, and label floods (issue 9, item 7). Real Redis, real app."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from fraud import metrics
from fraud.app import get_service
from fraud.schema import TransactionFileError, parse_transaction, read_transactions

from .conftest import make_tx


def _features(app: Flask, transaction_id: str) -> dict[str, float]:
    [record] = get_service(app).decisions.fetch([transaction_id])
    assert record is not None, f"no decision logged for {transaction_id}"
    return json.loads(record)["features"]  # type: ignore[no-any-return]


def _velocity_state(client: redis.Redis) -> dict[bytes, Any]:
    """Every velocity and per-transaction key with its DUMP (members, fields, values)."""
    keys = sorted([*client.scan_iter("*fraud:v:*"), *client.scan_iter("*fraud:tx:*")])
    return {k: client.dump(k) for k in keys}


# ------------------------------------------------------------------- concurrent duplicates


def test_concurrent_identical_requests_count_once_and_get_one_decision(app: Flask) -> None:
    pairs = 20
    bodies = [make_tx(f"dup-{p}", card_id=f"c-dup-{p}", device_id=f"d-dup-{p}")
              for p in range(pairs)]
    responses: list[list[Any]] = [[None, None] for _ in range(pairs)]
    barriers = [threading.Barrier(2) for _ in range(pairs)]

    def send(p: int, side: int) -> None:
        client = app.test_client()
        barriers[p].wait()
        responses[p][side] = client.post("/v1/transactions/score", json=bodies[p])

    threads = [threading.Thread(target=send, args=(p, s)) for p in range(pairs) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for p, (a, b) in enumerate(responses):
        assert a.status_code == b.status_code == 200, (p, a.get_json(), b.get_json())
        ja, jb = a.get_json(), b.get_json()
        assert (ja["score"], ja["decision"]) == (jb["score"], jb["decision"]), (p, ja, jb)
        assert [ja.get("duplicate", False), jb.get("duplicate", False)].count(True) == 1, \
            f"pair {p}: exactly one request scores it, the other is its duplicate"
    # A follow-up on each card sees exactly one earlier transaction.
    client = app.test_client()
    for p in range(pairs):
        body = make_tx(f"dup-next-{p}", card_id=f"c-dup-{p}", device_id=f"d-dup-{p}",
                       timestamp="2025-01-20T12:05:00Z")
        assert client.post("/v1/transactions/score", json=body).status_code == 200
        features = _features(app, f"t-test-dup-next-{p}")
        assert features["card_history_count"] == 1.0, (p, features)
        assert features["card_count_24h"] == 1.0, (p, features)
    assert redis.Redis.xlen(get_service(app).redis, "fraud:decisions") == 2 * pairs


def test_a_reused_transaction_id_with_another_payload_is_a_409(app: Flask) -> None:
    client = app.test_client()
    body = make_tx("reuse", card_id="c-reuse")
    assert client.post("/v1/transactions/score", json=body).status_code == 200
    same = client.post("/v1/transactions/score", json=body)
    assert same.status_code == 200 and same.get_json()["duplicate"] is True
    other = client.post("/v1/transactions/score", json={**body, "amount": 43.5})
    assert other.status_code == 409, other.get_json()
    error = other.get_json()["error"] if "error" in other.get_json() else other.get_json()
    assert error["field"] == "transaction_id"
    assert "reused with a different payload" in error["message"]
    # While another request holds the id (pending), a different payload is refused at once.
    service = get_service(app)
    service.redis.set(service.decisions.key("t-test-held"), "?not-this-payload")
    held = client.post("/v1/transactions/score", json=make_tx("held"))
    assert held.status_code == 409 and "reused" in json.dumps(held.get_json())


# -------------------------------------------------------------------------- extreme amounts


@pytest.mark.parametrize("amount", [1e16, 1e7, 1_000_000.01])
def test_an_amount_above_the_maximum_is_a_400_naming_amount(app: Flask, amount: float) -> None:
    client = app.test_client()
    response = client.post("/v1/transactions/score",
                           json=make_tx("huge", card_id="c-huge", amount=amount))
    assert response.status_code == 400, response.get_json()
    assert "amount" in json.dumps(response.get_json())
    assert get_service(app).redis.exists(get_service(app).velocity.card_stats_key("c-huge")) == 0, "nothing was counted"


def test_an_amount_at_the_maximum_is_scored(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/v1/transactions/score",
                           json=make_tx("max", card_id="c-max", amount=1_000_000.0))
    assert response.status_code == 200, response.get_json()


def test_the_maximum_is_per_currency_and_a_batch_names_the_item(
        make_app: Callable[..., Flask]) -> None:
    app = make_app(max_amount=5000.0, max_amounts={"JPY": 800_000.0})
    client = app.test_client()
    ok = client.post("/v1/transactions/score/batch", json={"transactions": [
        make_tx("jpy", amount=700_000.0, currency="JPY"), make_tx("eur", amount=4999.0)]})
    assert ok.status_code == 200, ok.get_json()
    bad = client.post("/v1/transactions/score/batch", json={"transactions": [
        make_tx("jpy2", amount=700_000.0, currency="JPY"), make_tx("eur2", amount=5001.0)]})
    assert bad.status_code == 400
    assert "transactions[1].amount" in json.dumps(bad.get_json())


def test_the_file_reader_refuses_a_row_above_the_maximum(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{**make_tx(i), "is_fraud": False} for i in range(3)]
    rows[2]["amount"] = 1e16
    path = tmp_path / "tx.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(TransactionFileError, match="row 2: amount must be at most"):
        read_transactions(path)
    assert len(read_transactions(path, max_amount=1e17)) == 3


def test_a_card_total_near_the_cap_keeps_scoring(app: Flask) -> None:
    # The card's stored total is already close to int64 (history from before the cap).
    service = get_service(app)
    stats = service.velocity.card_stats_key(service.pii.token("card", "c-full"))  # by token
    service.redis.hset(stats, mapping={"n": 3, "amt": 2**63 - 1000})
    client = app.test_client()
    for i in range(3):
        body = make_tx(f"full-{i}", card_id="c-full", amount=1_000_000.0,
                       timestamp=f"2025-01-20T12:0{i}:00Z")
        response = client.post("/v1/transactions/score", json=body)
        assert response.status_code == 200, response.get_json()
    assert int(service.redis.hget(stats, "amt")) <= 2**63 - 1
    assert int(service.redis.hget(stats, "n")) == 6


# ------------------------------------------------------------ a score that fails half-way


def test_a_score_failing_after_the_velocity_update_leaves_no_state(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    service = get_service(app)
    client = app.test_client()
    # Some history on the card, device and merchant first.
    for i in range(2):
        assert client.post("/v1/transactions/score", json=make_tx(
            f"pre-{i}", card_id="c-fail", timestamp=f"2025-01-20T11:5{i}:00Z")).status_code == 200
    before = _velocity_state(service.redis)
    predictor = type(service.model.state().predictor)

    def broken(self: Any, xs: Any, k: int) -> Any:
        raise RuntimeError("model failure injected by the test")

    body = make_tx("fail", card_id="c-fail", device_id="d-new", country="US")
    tx = parse_transaction(body)
    with monkeypatch.context() as patch:
        patch.setattr(predictor, "score", broken)
        with pytest.raises(RuntimeError, match="injected"):
            service.score([tx])
    assert _velocity_state(service.redis) == before, "the failed score left velocity state"
    # The id is free again, and the retry is counted once.
    response = client.post("/v1/transactions/score", json=body)
    assert response.status_code == 200 and "duplicate" not in response.get_json()
    assert _features(app, "t-test-fail")["card_history_count"] == 2.0


def _evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_batch_counted_in_two_parts_fails_as_one(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of at least 2 * PART_MIN transactions is counted by two script calls sent
    at once, its first half scored while Redis counts the second (velocity
    ``observe_in_parts``). The model failing on the second half takes back both halves:
    the state is as before, and the retry scores every transaction once, the repeated
    card's history counting its earlier transactions once each."""
    from fraud.velocity import PART_MIN

    service = get_service(app)
    client = app.test_client()
    # A first score loads the scripts (a fresh Redis answers NOSCRIPT: the next test).
    assert client.post("/v1/transactions/score", json=make_tx("warm")).status_code == 200
    n = 2 * PART_MIN + 3
    bodies = [make_tx(f"part-{i}", card_id="c-parts" if i % 4 == 0 else f"c-part-{i}",
                      timestamp=f"2025-01-20T12:{i:02d}:00Z") for i in range(n)]
    before = _velocity_state(service.redis)
    predictor = type(service.model.state().predictor)
    real = predictor.score
    parts: list[int] = []

    def second_half_fails(self: Any, xs: Any, k: int) -> Any:
        parts.append(len(xs))
        if len(parts) == 2:
            raise RuntimeError("model failure injected by the test")
        return real(self, xs, k)

    txs = [parse_transaction(b) for b in bodies]
    calls = _evalsha_calls(service.redis)
    with monkeypatch.context() as patch:
        patch.setattr(predictor, "score", second_half_fails)
        with pytest.raises(RuntimeError, match="injected"):
            service.score(txs)
    assert parts == [(n + 1) // 2, n // 2], "the batch was not scored in two parts"
    assert _evalsha_calls(service.redis) - calls >= 3  # two counts, then the take-back
    assert _velocity_state(service.redis) == before, "the failed batch left velocity state"
    response = client.post("/v1/transactions/score/batch", json={"transactions": bodies})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert len(results) == n and not any(r.get("duplicate") for r in results)
    last_on_card = max(i for i in range(n) if i % 4 == 0)
    assert _features(app, f"t-test-part-{last_on_card}")["card_history_count"] == \
        last_on_card // 4


def test_a_batch_in_two_parts_survives_a_redis_that_lost_its_scripts(app: Flask) -> None:
    """Both parts answer NOSCRIPT after a script flush (a restarted Redis): nothing ran,
    so the script is loaded and the batch counted in one call, answered as usual."""
    from fraud.velocity import PART_MIN

    service = get_service(app)
    n = 2 * PART_MIN
    bodies = [make_tx(f"flush-{i}", card_id=f"c-flush-{i}",
                      timestamp=f"2025-01-20T13:{i:02d}:00Z") for i in range(n)]
    service.redis.script_flush()
    response = app.test_client().post("/v1/transactions/score/batch",
                                      json={"transactions": bodies})
    assert response.status_code == 200, response.get_json()
    assert [r["transaction_id"] for r in response.get_json()["results"]] == \
        [f"t-test-flush-{i}" for i in range(n)]
    assert all(_features(app, f"t-test-flush-{i}")["card_history_count"] == 0.0
               for i in range(n))


# ------------------------------------------------------------------------------- labels


def _corrections() -> float:
    return float(metrics.LABEL_CORRECTIONS._value.get())


def test_a_label_flood_for_one_transaction_is_learned_once(app: Flask) -> None:
    client = app.test_client()
    service = get_service(app)
    assert client.post("/v1/transactions/score",
                       json=make_tx("flood", card_id="c-flood")).status_code == 200
    label = {"transaction_id": "t-test-flood", "is_fraud": True}
    first = client.post("/v1/labels", json={"labels": [label] * 5000})
    assert first.status_code == 202, first.get_json()
    body = first.get_json()
    assert (body["accepted"], body["ignored"], body["corrections"]) == (1, 4999, 0)
    assert len(body["offsets"]) == 1
    again = client.post("/v1/labels", json={"labels": [label] * 5000})
    assert again.get_json()["accepted"] == 0 and again.get_json()["ignored"] == 5000
    for _ in range(3):
        assert client.post("/v1/labels", json=label).get_json()["accepted"] == 0
    assert service.redis.xlen(service.labels.stream) == 1

    corrections = _corrections()
    flip = client.post("/v1/labels", json={**label, "is_fraud": False})
    assert flip.status_code == 202
    assert (flip.get_json()["accepted"], flip.get_json()["corrections"]) == (1, 1)
    entries = service.redis.xrange(service.labels.stream)
    assert len(entries) == 2
    assert entries[-1][1][b"correction"] == b"1" and entries[-1][1][b"is_fraud"] == b"0"
    assert b"correction" not in entries[0][1]
    assert _corrections() == corrections + 1


def test_a_batch_repeating_a_transaction_keeps_its_last_label(app: Flask) -> None:
    client = app.test_client()
    service = get_service(app)
    for name in ("b1", "b2"):
        assert client.post("/v1/transactions/score", json=make_tx(name)).status_code == 200
    response = client.post("/v1/labels", json=[
        {"transaction_id": "t-test-b1", "is_fraud": True},
        {"transaction_id": "t-test-b2", "is_fraud": True},
        {"transaction_id": "t-test-b1", "is_fraud": False},
    ])
    assert response.status_code == 202
    assert (response.get_json()["accepted"], response.get_json()["ignored"]) == (2, 1)
    entries = service.redis.xrange(service.labels.stream)
    assert [(e[1][b"transaction_id"], e[1][b"is_fraud"]) for e in entries] == [
        (b"t-test-b2", b"1"), (b"t-test-b1", b"0")]
