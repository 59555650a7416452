"""Locust scenario: a payment flow scoring every transaction, and labels arriving later.

- ``Checkout``: a payment gateway that scores each transaction before authorising it and
  waits for the answer (short think times: gateways are busy). Transactions are modelled
  on the simulated stream (cards and merchants Feast knows), happen now, and carry a new
  id each.
- ``Chargebacks``: the feed of late labels. Every fraudulent transaction is charged
  back, and analysts confirm a share of the others (``LABEL_SHARE``); each label is
  posted to ``/v1/labels`` (transaction_id, is_fraud, labelled_at) a few seconds after
  its score (the real delay is days; a load test has seconds), in batches.
- ``Settlement``: an end-of-batch job scoring transactions in bulk.

Labels only name transactions this run has scored: a label for an unknown transaction
is a client error by design.

Run: ``mlsuite loadtest --scenario payments`` (or ``locust -f loadtests/payment_flow.py``).
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from loadtest_data import AUTH_HEADERS, FRAUD_URL, new_transaction, now_iso
from locust import FastHttpUser, between, constant, task

DECISIONS = {"approve", "review", "decline"}
LABEL_SHARE = 0.2  # legitimate transactions an analyst confirms
LABEL_DELAY = (2.0, 6.0)  # seconds from score to label

# Labels waiting for their time: (due monotonic time, transaction id, is_fraud). One
# Locust process shares it between its users (gevent: no two run at once).
_pending: list[tuple[float, str, bool]] = []


def _check_decision(resp: Any, tx_id: str) -> bool:
    try:
        body = resp.json()
        ok = (body["transaction_id"] == tx_id and 0.0 <= body["score"] <= 1.0
              and body["decision"] in DECISIONS and isinstance(body["reasons"], list))
    except Exception as exc:  # noqa: BLE001 - any malformed answer is a failure
        resp.failure(f"bad body ({exc}): {resp.text[:200]}")
        return False
    if not ok:
        resp.failure(f"unexpected decision: {resp.text[:200]}")
    return ok


class Checkout(FastHttpUser):
    """A payment gateway: one score per transaction, before authorisation."""

    host = FRAUD_URL
    default_headers = AUTH_HEADERS
    wait_time = between(0.2, 1.0)
    weight = 10

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def pay(self) -> None:
        body, was_fraud = new_transaction(self.rng)
        tx_id = body["transaction_id"]
        with self.client.post("/v1/transactions/score", json=body, name="/v1/transactions/score",
                              catch_response=True) as resp:
            scored = resp.status_code == 200 and _check_decision(resp, tx_id)
        if scored and (was_fraud or self.rng.random() < LABEL_SHARE):
            due = time.monotonic() + self.rng.uniform(*LABEL_DELAY)
            heapq.heappush(_pending, (due, tx_id, was_fraud))


class Chargebacks(FastHttpUser):
    """The chargeback / analyst feed: posts the labels that have come due, once a second."""

    host = FRAUD_URL
    default_headers = AUTH_HEADERS
    wait_time = constant(1)
    fixed_count = 1

    @task
    def post_due_labels(self) -> None:
        now = time.monotonic()
        due = []
        while _pending and _pending[0][0] <= now and len(due) < 500:
            _, tx_id, is_fraud = heapq.heappop(_pending)
            due.append({"transaction_id": tx_id, "is_fraud": is_fraud, "labelled_at": now_iso()})
        if not due:
            return
        with self.client.post("/v1/labels", json={"labels": due}, name="/v1/labels",
                              catch_response=True) as resp:
            if resp.status_code != 202 or f'"accepted":{len(due)}' not in resp.text.replace(" ", ""):
                resp.failure(f"labels not accepted: {resp.status_code} {resp.text[:200]}")


class Settlement(FastHttpUser):
    """A batch job scoring 50 transactions at a time every few seconds."""

    host = FRAUD_URL
    default_headers = AUTH_HEADERS
    wait_time = constant(3)
    fixed_count = 1
    batch_size = 50

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def score_batch(self) -> None:
        txs = [new_transaction(self.rng)[0] for _ in range(self.batch_size)]
        with self.client.post("/v1/transactions/score/batch", json={"transactions": txs},
                              name="/v1/transactions/score/batch", catch_response=True) as resp:
            try:
                results = resp.json()["results"]
                ids = [r["transaction_id"] for r in results]
            except Exception as exc:  # noqa: BLE001 - any malformed answer is a failure
                resp.failure(f"bad body ({exc}): {resp.text[:200]}")
                return
            if ids != [t["transaction_id"] for t in txs]:
                resp.failure(f"{len(ids)} results, not one per transaction in order")
