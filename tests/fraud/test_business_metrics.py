"""Business metrics: labels meeting their decisions give loss prevented, loss and false
declines per model version, each transaction counted once; and the label lag.

Real app (decisions through the scoring API, labels through the labels API), the real
fraud worker (its "business-metrics" consumer group), the session's real Redis.
"""

from __future__ import annotations

import doctest
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY

from fraud import business
from fraud.business import BUSINESS_GROUP, business_consumer, outcome_of
from fraud.keys import Keys

from .conftest import fraud_config, make_tx

OUTCOMES = {"loss_prevented": "mlsuite_fraud_loss_prevented_amount_total",
            "loss": "mlsuite_fraud_loss_amount_total",
            "false_decline": "mlsuite_fraud_false_decline_amount_total"}


def amounts(versions: set[str]) -> dict[tuple[str, str], float]:
    """Current counter values per (outcome, model version); counters are process-wide, so
    tests compare differences."""
    return {(outcome, v): REGISTRY.get_sample_value(name, {"model_version": v}) or 0.0
            for outcome, name in OUTCOMES.items() for v in versions}


def lag_count() -> float:
    return REGISTRY.get_sample_value("mlsuite_fraud_label_lag_seconds_count") or 0.0


def caught_up(client: redis.Redis, stream: str) -> bool:
    """The business group has been handed the newest label and acknowledged all."""
    last = client.xinfo_stream(stream)["last-generated-id"]
    group = next((g for g in client.xinfo_groups(stream)
                  if g["name"].decode() == BUSINESS_GROUP), None)  # None: not created yet
    return group is not None and group["last-delivered-id"] == last and group["pending"] == 0


def test_docstring_examples() -> None:
    result = doctest.testmod(business)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("decision", "is_fraud", "expected"), [
    ("decline", True, "loss_prevented"),
    ("review", True, "loss_prevented"),  # held for an analyst, who stopped it
    ("approve", True, "loss"),
    ("decline", False, "false_decline"),
    ("review", False, None),  # delayed, then released: not declined
    ("approve", False, None),
], ids=lambda v: str(v))
def test_outcome_of_each_decision_and_verdict(decision: str, is_fraud: bool,
                                              expected: str | None) -> None:
    assert outcome_of(decision, is_fraud) == expected


def test_labels_through_the_worker_give_exact_amounts_and_count_once(
        make_app: Callable[..., Flask], start_worker: Callable[..., Any],
        redis_client: redis.Redis, wait_for: Callable[..., Any], payments_data: Any,
        as_bodies: Callable[[Any], list[dict[str, Any]]]) -> None:
    client = make_app().test_client()
    assert client.put("/v1/lists/blocked_cards/c-biz-blocked").status_code == 201
    wait_for("the block list applied", lambda: client.post(
        "/v1/transactions/score", json=make_tx(f"biz-probe-{time.time_ns()}",
                                               card_id="c-biz-blocked")
    ).get_json()["decision"] == "decline", timeout=10)
    # Known amounts: a blocked card (decline), a hard-limit amount (review), and
    # simulated legitimate payments (most approved).
    later = payments_data.frame.iloc[12_000:]
    txs = [make_tx("biz-1", card_id="c-biz-blocked", amount=310.25),
           make_tx("biz-2", card_id="c-biz-blocked", amount=75.5),
           make_tx("biz-3", card_id="c-biz-big", amount=120_000.0),
           *as_bodies(later[~later["is_fraud"]].iloc[:20])]
    decided: dict[str, tuple[str, str, float]] = {}
    for body in txs:
        response = client.post("/v1/transactions/score", json=body)
        assert response.status_code == 200, response.get_json()
        out = response.get_json()
        decided[out["transaction_id"]] = (out["decision"], out["model_version"], body["amount"])
    # Verdicts covering every cell of the table: fraud and legit on each decision.
    verdicts = {tid: i % 2 == 0 for i, tid in enumerate(decided)}
    assert {d for d, _, _ in decided.values()} >= {"decline", "review", "approve"}, decided
    versions = {v for _, v, _ in decided.values()}
    expected: dict[tuple[str, str], float] = {}
    for tid, (decision, version, amount) in decided.items():
        outcome = outcome_of(decision, verdicts[tid])
        if outcome is not None:
            expected[(outcome, version)] = expected.get((outcome, version), 0.0) + amount
    assert {o for o, _ in expected} == set(OUTCOMES), expected  # all three are exercised

    before, lags = amounts(versions), lag_count()
    labels = [{"transaction_id": tid, "is_fraud": fraud} for tid, fraud in verdicts.items()]
    assert client.post("/v1/labels", json={"labels": labels}).get_json()["accepted"] == len(labels)
    start_worker()
    stream = Keys(fraud_config().key_prefix, fraud_config().model_name).labels
    wait_for("the business group caught up", lambda: caught_up(redis_client, stream), timeout=30)
    after = amounts(versions)
    got = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert got == pytest.approx(expected), (got, expected)
    assert lag_count() - lags == len(labels)
    text = client.get("/metrics").get_data(as_text=True)  # the service's exposition
    for name in OUTCOMES.values():
        assert f'{name}{{model_version="{next(iter(versions))}"}}' in text, name

    # The same labels again are not appended; a changed verdict is a correction: neither
    # changes the amounts (each transaction counts once, at its first verdict).
    again = client.post("/v1/labels", json={"labels": labels}).get_json()
    assert (again["accepted"], again["ignored"]) == (0, len(labels))
    flip = client.post("/v1/labels", json={"transaction_id": "t-test-biz-2", "is_fraud": True})
    assert flip.get_json()["corrections"] == 1
    wait_for("the correction handled", lambda: caught_up(redis_client, stream), timeout=30)
    assert amounts(versions) == after
    assert lag_count() - lags == len(labels)


def test_amounts_are_kept_apart_per_model_version(redis_client: redis.Redis) -> None:
    """Label entries of two versions (as the label stream holds them), one consumer pass."""
    config = fraud_config(key_prefix="biz-versions:")
    stream = Keys(config.key_prefix, config.model_name).labels
    rows = [("m:v2", "decline", True, 100.0), ("m:v2+7", "decline", False, 30.0),
            ("m:v3", "decline", True, 5.5), ("m:v3", "approve", True, 12.0),
            ("m:v3", "review", False, 999.0), ("m:v3", "approve", False, 50.0)]
    now = time.time()
    for k, (version, decision, fraud, amount) in enumerate(rows):
        record = {"transaction_id": f"tv{k}", "decision": decision, "model_version": version,
                  "score": 0.5, "review_threshold": 0.5, "scored_at": now - 120,
                  "features": {"amount": amount}}
        redis_client.xadd(stream, {"transaction_id": f"tv{k}", "is_fraud": "1" if fraud else "0",
                                   "labelled_at": repr(now), "decision": json.dumps(record)})
    redis_client.xadd(stream, {"transaction_id": "tv0", "is_fraud": "0", "correction": "1",
                               "labelled_at": repr(now), "decision": json.dumps(
                                   {"decision": "decline", "model_version": "m:v2",
                                    "features": {"amount": 100.0}})})
    redis_client.xadd(stream, {"transaction_id": "poison", "is_fraud": "1"})
    before, lags = amounts({"m:v2", "m:v3"}), lag_count()
    assert business_consumer(redis_client, config, block_ms=10).drain() == len(rows) + 2
    after = amounts({"m:v2", "m:v3"})
    got = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert got == {("loss_prevented", "m:v2"): 100.0, ("false_decline", "m:v2"): 30.0,
                   ("loss_prevented", "m:v3"): 5.5, ("loss", "m:v3"): 12.0}
    assert lag_count() - lags == len(rows)  # the first verdicts only
    # Malformed entries are the learner's group's to dead-letter, not this one's.
    assert redis_client.xlen(Keys(config.key_prefix, config.model_name).dead_letters) == 0
