"""The worker's learner on its own (driven round by round with ``step``): exactly once
across a crash, poison labels, signed checkpoints, one writer per model."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flask import Flask

from fraud.app import get_service
from fraud.learner import Learner
from mlplatform.snapshots import SignatureError

Tx = Callable[..., dict[str, Any]]


def _score_and_label(client: Any, tx: Tx, ids: range) -> list[str]:
    txs = [tx(f"k{i}", card_id=f"c{i % 30 + 1:06d}", amount=15.0 + 41 * i,
              timestamp=1737374400 + 90 * i) for i in ids]
    assert client.post("/v1/transactions/score/batch", json=txs).status_code == 200
    response = client.post("/v1/labels", json=[
        {"transaction_id": t["transaction_id"], "is_fraud": i % 4 == 0}
        for i, t in zip(ids, txs)])
    assert response.status_code == 202
    return response.get_json()["offsets"]  # type: ignore[no-any-return]


def _drain(learner: Learner) -> None:
    while learner.step():
        pass


def test_a_worker_killed_mid_batch_leaves_pending_labels_another_applies_exactly_once(
        app: Flask, tx: Tx, make_learner: Callable[..., Learner], payments_data: Any) -> None:
    client = app.test_client()
    a = make_learner("worker-a", learner_lease_seconds=0.3)
    _score_and_label(client, tx, range(0, 4))
    _drain(a)  # 4 labels learned, checkpointed and acknowledged
    offsets = _score_and_label(client, tx, range(4, 10))

    # Worker A dies after learning 2 labels of the next batch, before its ack.
    learned = 0
    apply = a._apply

    def dies_midway(state: Any, entry: Any) -> None:
        nonlocal learned
        if learned == 2:
            raise KeyboardInterrupt("worker killed")
        apply(state, entry)
        learned += 1

    a._apply = dies_midway  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        a.step()
    stream, group = a.keys.labels, "fraud-learner"
    assert a.client.xpending(stream, group)["pending"] == 6

    b = make_learner("worker-b", learner_lease_seconds=0.3)
    assert b.step() == 0 and not b.lease.held, "A's lease is still live: B stands by"
    # A stopped renewing: once its lease expires, B takes it over.
    deadline = time.monotonic() + 5
    while not b.lease.held:
        assert time.monotonic() < deadline, "B never took the expired lease over"
        b.step()
    _drain(b)
    assert b.last_rebuild == {"source": "checkpoint", "checkpoint_labels": 4, "replayed": 6}
    assert b.state is not None and b.state.labels == 10 and b.state.offset == offsets[-1]
    assert b.client.xpending(stream, group)["pending"] == 0, "B took A's entries over"
    assert b.client.xlen(b.keys.dead_letters) == 0
    assert a.step() == 0, "A, back from the dead, no longer holds the lease"

    # Exactly once: the same model as one learner applying the 10 labels from scratch.
    b.lease.release()
    b.client.delete(b.keys.checkpoint(b.state.version.version))
    c = make_learner("worker-c")
    c.step()
    assert c.last_rebuild["replayed"] == 10 and c.state is not None
    X = c.state.model.predictor().matrix(payments_data.vectors[:300])
    assert np.allclose(b.state.model.predictor().predict(X),
                       c.state.model.predictor().predict(X), rtol=0, atol=1e-12)


def test_a_poison_label_goes_to_the_dead_letters_and_learning_goes_on(
        app: Flask, tx: Tx, make_learner: Callable[..., Learner],
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.test_client()
    learner = make_learner("worker-p")
    learner.step()  # loaded, nothing to learn yet
    stream = learner.keys.labels
    client.post("/v1/transactions/score", json=tx("p1"))
    [record] = get_service(app).decisions.fetch(["t-test-p1"])
    nan_record = json.loads(record or b"{}")
    nan_record["features"]["amount"] = float("nan")
    poison = {
        "not JSON": {"transaction_id": "t-x1", "is_fraud": "1", "labelled_at": "1.0",
                     "decision": "{oops"},
        "NaN feature": {"transaction_id": "t-x2", "is_fraud": "1", "labelled_at": "1.0",
                        "decision": json.dumps(nan_record)},
        "no is_fraud": {"transaction_id": "t-x3", "labelled_at": "1.0", "decision": record},
    }
    ids = {name: learner.client.xadd(stream, fields).decode()  # type: ignore[union-attr]
           for name, fields in poison.items()}
    # A label whose learning throws (the model refuses it).
    served = type(learner.state.model)  # type: ignore[union-attr]
    learn_one = served.learn_one

    def refuses_big_amounts(self: Any, x: Any, y: bool) -> None:
        if x["amount"] == 999.0:
            raise RuntimeError("learning diverged")
        learn_one(self, x, y)

    monkeypatch.setattr(served, "learn_one", refuses_big_amounts)
    client.post("/v1/transactions/score", json=tx("p2", amount=999.0))
    throws = client.post("/v1/labels", json={"transaction_id": "t-test-p2", "is_fraud": True}
                         ).get_json()["offsets"][0]
    before = learner.state.model.predictor().weights.copy()  # type: ignore[union-attr]
    later = client.post("/v1/labels", json={"transaction_id": "t-test-p1", "is_fraud": True}
                        ).get_json()["offsets"][0]
    _drain(learner)

    dead = {f[b"id"].decode(): f[b"reason"].decode()
            for _, f in learner.client.xrange(learner.keys.dead_letters)}
    assert set(dead) == {*ids.values(), throws}
    assert "JSON" in dead[ids["not JSON"]]
    assert "amount must be a finite number" in dead[ids["NaN feature"]]
    assert "is_fraud" in dead[ids["no is_fraud"]]
    assert dead[throws] == "RuntimeError: learning diverged"
    assert learner.state is not None and learner.state.offset == later
    assert learner.state.labels == 1, "only the good label is learned"
    after = learner.state.model.predictor().weights
    assert not np.array_equal(before, after), "learning went on after the poison labels"
    assert learner.client.xpending(stream, "fraud-learner")["pending"] == 0


def test_checkpoints_are_signed_and_a_tampered_one_is_refused(
        app: Flask, tx: Tx, make_learner: Callable[..., Learner]) -> None:
    client = app.test_client()
    first = make_learner("worker-1")
    _score_and_label(client, tx, range(0, 5))
    _drain(first)
    assert first.state is not None
    version = first.state.version.version
    key = first.keys.checkpoint(version)
    blob = first.client.hget(key, "blob")
    assert first.load_checkpoint(version)[2:4] == (first.state.offset, 5)  # type: ignore[index]
    first.lease.release()

    tampered = bytearray(blob)  # type: ignore[arg-type]
    tampered[-5] ^= 0xFF
    first.client.hset(key, "blob", bytes(tampered))
    with pytest.raises(SignatureError):
        first.load_checkpoint(version)
    first.client.hset(key, "blob", pickle.dumps(("an", "unsigned", "pickle", 1)))
    with pytest.raises(SignatureError):
        first.load_checkpoint(version)

    # A new holder refuses it and rebuilds from the registry version and the stream.
    second = make_learner("worker-2")
    second.step()
    assert second.last_rebuild == {"source": "registry (checkpoint refused)",
                                   "checkpoint_labels": 0, "replayed": 5}
    assert second.state is not None and second.state.labels == 5
    assert second.load_checkpoint(version) is not None, "a good checkpoint replaces it"
