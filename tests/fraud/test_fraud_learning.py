"""Online learning in the fraud worker: one learner (lease) applies the label stream,
publishes snapshots every replica follows, checkpoints with each ack, and resumes from
its checkpoint plus the tail after a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Flask

from fraud.app import get_service
from fraud.features import event_of
from fraud.schema import transactions_from_frame
from fraud.velocity import seed
from fraud.worker import FraudJobs

Tx = Callable[..., dict[str, Any]]


def _similar(tx: Tx, i: int) -> dict[str, Any]:
    """A fresh card and an unknown merchant each time: identical features, new id."""
    return tx(f"s{i}", card_id=f"c-fresh-{i}", merchant_id=f"m-fresh-{i}", device_id=f"d-{i}")


def test_a_label_posted_to_one_replica_changes_the_next_score_on_another_within_1s(
        make_app: Callable[..., Flask], tx: Tx, worker: FraudJobs) -> None:
    a, b = make_app().test_client(), make_app().test_client()
    before = b.post("/v1/transactions/score", json=_similar(tx, 0)).get_json()["score"]
    assert b.post("/v1/transactions/score", json=_similar(tx, 1)).get_json()["score"] == before
    # A transaction like these turns out to be fraud: the payment flow tells replica A.
    a.post("/v1/transactions/score", json=tx("victim", card_id="c-fresh-x",
                                                 merchant_id="m-fresh-x", device_id="d-x"))
    posted = time.monotonic()
    assert a.post("/v1/labels", json={"transaction_id": "t-test-victim", "is_fraud": True}
                  ).status_code == 202
    i, after = 2, before
    while time.monotonic() - posted < 1.0:
        after = b.post("/v1/transactions/score", json=_similar(tx, i)).get_json()["score"]
        if after != before:
            break
        i += 1
        time.sleep(0.01)
    elapsed = time.monotonic() - posted
    assert after > before, f"replica B still scores {after} (before {before}) after {elapsed:.2f}s"
    assert elapsed < 1.0


def _until(done: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.01)


def _label_some(tx: Tx, client: Any, start: int, n: int) -> list[str]:
    txs = [tx(f"r{i}", card_id=f"c{i % 40 + 1:06d}", amount=20.0 + 37 * i,
              timestamp=1737374400 + 60 * i) for i in range(start, start + n)]
    assert client.post("/v1/transactions/score/batch", json=txs).status_code == 200
    labels = [{"transaction_id": t["transaction_id"], "is_fraud": i % 3 == 0}
              for i, t in enumerate(txs, start)]
    response = client.post("/v1/labels", json=labels)
    assert response.status_code == 202
    return response.get_json()["offsets"]  # type: ignore[no-any-return]


def test_a_restarted_worker_loads_its_checkpoint_and_learns_only_the_tail(
        make_app: Callable[..., Flask], start_worker: Callable[..., FraudJobs],
        payments_data: Any, tx: Tx) -> None:
    app = make_app()
    client = app.test_client()
    first = start_worker()
    _label_some(tx, client, 0, 12)
    assert client.get("/v1/model?sync=true").get_json()["labels_learned"] == 12
    first.worker.stop()  # hands the lease over; every label so far is checkpointed
    _label_some(tx, client, 12, 4)  # the tail a restart must learn

    second = start_worker()
    body = client.get("/v1/model?sync=true").get_json()
    assert body["labels_learned"] == 16
    assert second.learner.last_rebuild == {"source": "checkpoint", "checkpoint_labels": 12,
                                           "replayed": 0}
    assert second.learner.applied == 4, "a restart must learn the tail only"
    served = get_service(app).model.state()
    X = served.predictor.matrix(payments_data.vectors[:500])

    # ... and it equals a learner that learned the whole stream from the registry version.
    second.worker.stop()
    client_redis = get_service(app).redis
    client_redis.delete(second.learner.keys.checkpoint(served.version.version))
    fresh = start_worker().learner
    _until(lambda: fresh.last_rebuild, "the new worker to rebuild")
    assert fresh.last_rebuild == {"source": "registry", "checkpoint_labels": 0, "replayed": 16}
    assert fresh.state is not None and fresh.state.model is not None
    assert np.allclose(fresh.state.model.predictor().predict(X), served.predictor.predict(X),
                       rtol=0, atol=1e-12)
    # The labels moved the model away from the registered version.
    base = fresh.state.artifact.model.predictor()
    assert not np.array_equal(base.predict(X), served.predictor.predict(X))


def test_every_replica_serves_the_same_model(make_app: Callable[..., Flask],
                                             payments_data: Any, tx: Tx,
                                             worker: FraudJobs) -> None:
    replicas = [make_app() for _ in range(3)]
    for k, replica in enumerate(replicas):  # labels arrive through different replicas
        _label_some(tx, replica.test_client(), 10 * k, 10)
    states = [get_service(r).model.sync() for r in replicas]
    X = states[0].predictor.matrix(payments_data.vectors[:300])
    assert {s.labels for s in states} == {30}
    for s in states[1:]:
        assert np.array_equal(s.predictor.predict(X), states[0].predictor.predict(X))


def test_drift_on_labels_shows_in_the_model_endpoint(
        make_app: Callable[..., Flask], payments_data: Any, as_bodies: Any,
        worker: FraudJobs) -> None:
    """Frauds the model lets through (a new pattern) raise the drift detectors."""
    app = make_app()
    client = app.test_client()
    # Velocity state as a running system has it: the history before the traffic.
    history = transactions_from_frame(payments_data.frame.iloc[:12_000])
    seed(get_service(app).velocity, [event_of(t) for t in history])
    later = payments_data.frame.iloc[12_000:]
    txs = as_bodies(later[~later["is_fraud"]].iloc[:1500])
    decisions = [d["decision"] for start in range(0, len(txs), 500) for d in client.post(
        "/v1/transactions/score/batch", json=txs[start:start + 500]).get_json()["results"]]
    # All legitimate at first; then one in four approved ones turns out to be a fraud.
    labels = [{"transaction_id": t["transaction_id"],
               "is_fraud": i >= 1000 and i % 4 == 0 and d == "approve"}
              for i, (t, d) in enumerate(zip(txs, decisions))]
    assert sum(lb["is_fraud"] for lb in labels) > 30
    client.post("/v1/labels", json=labels)
    body = client.get("/v1/model?sync=true").get_json()
    assert body["online_metrics"]["labels"] == 1500
    assert body["online_metrics"]["recall"] == 0.0
    assert body["drift"]["detections"] >= 1 and body["drift"]["active"] is True
    assert body["drift"]["last"]["stream"] in ("error", "miss")


def test_promoting_a_new_version_swaps_every_replica_without_a_restart(
        make_app: Callable[..., Flask], start_worker: Callable[..., FraudJobs],
        fraud_data_dir: Any, tx: Tx) -> None:
    """Registry alias moves: the worker rebuilds from the new version (and its labels)."""
    import shutil

    from mlplatform.registry import ModelRegistry

    registry = ModelRegistry(fraud_data_dir / "models")
    name = f"fraud-swap-{time.monotonic_ns()}"  # private to this test: others keep v1
    source = registry.resolve("fraud-online", "production").path

    def copy(folder: Any) -> None:
        for f in ("model.pkl", "thresholds.json"):
            shutil.copy(source / f, folder / f)

    registry.register(name, writer=copy, params={"kind": "online-lr"}, metrics={},
                      data_fingerprint="test", alias="production")
    client = make_app(model_name=name).test_client()
    start_worker(model_name=name)
    client.post("/v1/transactions/score", json=tx(1))
    client.post("/v1/labels", json={"transaction_id": "t-test-1", "is_fraud": True})
    assert client.get("/v1/model?sync=true").get_json()["model_version"] == f"{name}:v1"
    registry.register(name, writer=copy, params={"kind": "online-lr"}, metrics={},
                      data_fingerprint="test", alias="production")
    deadline = time.monotonic() + 5
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get("/v1/model").get_json()
        if body["model_version"] == f"{name}:v2":
            break
        assert client.post("/v1/transactions/score", json=tx(f"x{time.monotonic_ns()}")
                           ).status_code == 200, "a request failed during the swap"
        time.sleep(0.05)
    assert body["model_version"] == f"{name}:v2"
    # Served at once on its own; the worker's rebuild on v2 (the label replayed) follows.
    body = client.get("/v1/model?sync=true").get_json()
    assert body["model_version"] == f"{name}:v2"
    assert body["labels_learned"] == 1, "the new version learns the label stream too"
