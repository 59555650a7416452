"""Every fraud response, as the app answers it, is an instance of the type the OpenAPI
document states for it (``fraud.contract``): rule and model reasons, review cases, rules."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from flask import Flask

from fraud import contract

Tx = Callable[..., dict[str, Any]]


def _typed(response: Any, status: int, type_: Any) -> Any:
    assert response.status_code == status, response.get_json()
    try:
        return msgspec.convert(response.get_json(), type_)
    except msgspec.ValidationError as exc:
        pytest.fail(f"{response.request.method} {response.request.path}: {exc}")


def test_every_response_matches_its_documented_type(app: Flask, tx: Tx) -> None:
    client = app.test_client()
    _typed(client.put("/v1/lists/blocked_devices/d-typed", json={"reason": "farm"}), 201,
           contract.ListChange)
    # Model reasons, then a list rule's reason and an amount rule's (a review case).
    plain = _typed(client.post("/v1/transactions/score", json=tx(1)), 200, contract.Score)
    assert plain.reasons and plain.reasons[0].feature is not None
    deadline = time.monotonic() + 5
    for i in itertools.count(100):  # the list reaches the app's snapshot within a poll
        blocked = _typed(client.post("/v1/transactions/score",
                                     json=tx(i, device_id="d-typed", card_id=f"c-typed-{i}")),
                         200, contract.Score)
        if any(r.list for r in blocked.reasons) or time.monotonic() > deadline:
            break
    [rule] = [r for r in blocked.reasons if r.list]
    assert rule.list == "blocked_devices" and rule.action == "decline"
    assert isinstance(rule.value, str) and rule.value.startswith("dev_"), "a device token"
    review = _typed(client.post("/v1/transactions/score", json=tx(
        3, amount=200_000.0, card_id="c-typed-rv", device_id="d-typed-rv")),
                    200, contract.Score)
    assert review.decision == "review"
    batch = _typed(client.post("/v1/transactions/score/batch", json=[tx(4), tx(5)]), 200,
                   contract.BatchScore)
    assert batch.count == 2

    _typed(client.post("/v1/labels", json={"transaction_id": "t-test-1", "is_fraud": False}),
           202, contract.LabelsAccepted)
    _typed(client.get("/v1/model"), 200, contract.ModelInfo)
    _typed(client.get("/v1/lists"), 200, contract.AllLists)
    rules = _typed(client.get("/v1/rules"), 200, contract.Rules)
    assert any(r.when for r in rules.before) and any(r.overrides for r in rules.after)
    open_cases = _typed(client.get("/v1/reviews?limit=1000"), 200, contract.Reviews)
    [case] = [c for c in open_cases.cases if c.transaction_id == "t-test-3"]
    assert case.age_seconds is not None and case.status == "open" and case.reasons
    _typed(client.post("/v1/reviews/t-test-3", json={"outcome": "legit", "analyst": "ana"}),
           200, contract.ReviewClosed)
    closed = _typed(client.get("/v1/reviews?status=closed"), 200, contract.Reviews)
    assert closed.cases[0].outcome == "legit" and closed.cases[0].reasons
    _typed(client.put("/v1/cards/c-typed", json={"home_country": "DE", "card_age_days": 3,
                                                "avg_amount": 9.5}), 202,
           contract.ProfileQueued)
    _typed(client.delete("/v1/lists/blocked_devices/d-typed"), 200, contract.ListChange)
