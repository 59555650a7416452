"""The fraud service on a real three-master Redis Cluster: scoring, a retried id, velocity
across cards on different masters, a review opened and closed, a label the worker learns;
and the velocity update's take-back when one entity's script fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from fraud.app import get_service
from fraud.features import event_of
from fraud.schema import transactions_from_frame
from fraud.training import Dataset
from fraud.velocity import (
    Claimed,
    Event,
    MemoryVelocityStore,
    RedisVelocityStore,
    velocity_features,
)
from fraud.worker import FraudJobs
from mlplatform.config import Settings
from mlplatform.redisdb import is_cluster

from .conftest import make_tx


@pytest.fixture
def cluster_settings(fraud_settings: Settings, cluster_url: str,
                     cluster_client: redis.Redis) -> Settings:
    """The fraud data folder on the session's cluster (every node emptied)."""
    return fraud_settings.with_(redis_url=cluster_url)


def _masters(client: Any, keys: list[str]) -> set[str]:
    return {client.get_node_from_key(k).name for k in keys}


def test_velocity_on_a_cluster_matches_the_offline_replay_across_masters(
        cluster_client: redis.Redis, payments_data: Dataset) -> None:
    txs = transactions_from_frame(payments_data.frame.iloc[:1500])
    events = [event_of(t) for t in txs]
    store = RedisVelocityStore(cluster_client, "t:")
    online, i = [], 0
    for size in [1] * 100 + [7, 300, 93, 1000]:  # single scores and batches, as the API
        part = events[i:i + size]
        online += [velocity_features(e, h) for e, h in zip(part, store.observe(part))]
        i += size
    memory = MemoryVelocityStore()
    offline = [velocity_features(e, h) for e, h in zip(events, memory.observe(events))]
    assert len(online) == len(offline) == 1500
    mismatches = [(n, a, b) for n, (a, b) in enumerate(zip(online, offline)) if a != b]
    assert not mismatches, f"first mismatch at row {mismatches[0][0]}: {mismatches[0][1:]}"
    # Not vacuous: the cards' state is spread over every master.
    cards = sorted({e.card_id for e in events})
    assert len(_masters(cluster_client, [store.card_stats_key(c) for c in cards])) == 3


def _state(client: Any, prefix: str) -> dict[bytes, Any]:
    keys = sorted(client.scan_iter(f"{prefix}*"))
    return {k: client.dump(k) for k in keys}


def test_a_failed_entity_script_takes_back_the_others_and_frees_the_guards(
        cluster_client: redis.Redis) -> None:
    store = RedisVelocityStore(cluster_client, "u:")
    store.observe([Event("t0", 10.0, "c1", "m1", 5.0, "FR", "d1")])
    before = _state(cluster_client, "u:")
    events = [Event(f"t{i}", 20.0 + i, f"c{i}", "m1", 5.0, "FR", "d1") for i in (1, 2, 3)]
    guards = [f"u:tx:{e.transaction_id}" for e in events]
    # The merchant's and device's script is unknown to the cluster (as after a node lost
    # its scripts and the reload failed): the cards were counted, then are taken back.
    store._shas["merchant"] = store._shas["device"] = "0" * 40
    with pytest.raises(redis.exceptions.NoScriptError):
        store.observe_guarded(events, guards, ["?a", "?b", "?c"])
    assert _state(cluster_client, "u:") == before, "nothing counted, every guard free"
    store._shas = RedisVelocityStore(cluster_client, "u:")._shas
    histories = store.observe_guarded(events, guards, ["?a", "?b", "?c"])
    assert [h.card_n for h in histories] == [1, 0, 0]  # type: ignore[union-attr]
    assert [h.merchant_counts for h in histories] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]  # type: ignore[union-attr]
    # A second request for a claimed id counts nothing and sees the claim.
    again = store.observe_guarded(events[:1], guards[:1], ["?z"])
    assert again == [Claimed("?a")]
    assert int(cluster_client.hget(store.card_stats_key("c1"), "n")) == 2  # type: ignore[arg-type]


def test_score_retry_review_and_label_on_a_cluster(
        make_app: Callable[..., Flask], start_worker: Callable[..., FraudJobs],
        cluster_settings: Settings, cluster_client: redis.Redis) -> None:
    start_worker(cluster_settings)
    app, other = make_app(cluster_settings), make_app(cluster_settings)
    service = get_service(app)
    assert is_cluster(service.redis) and service.decisions.partitions == 8
    client = app.test_client()

    # Cards on different masters; each card's 12 transactions within a minute.
    cards = [f"c{n:06d}" for n in range(1, 9)]
    batch = [make_tx(f"{card}-{k}", card_id=card, timestamp=f"2025-01-20T12:00:{k:02d}Z")
             for k in range(12) for card in cards]
    scored = client.post("/v1/transactions/score/batch", json={"transactions": batch})
    assert scored.status_code == 200, scored.get_json()
    results = scored.get_json()["results"]
    assert len(results) == 96
    assert len(_masters(cluster_client, [  # the service keys cards by token (fraud.pii)
        service.velocity.card_stats_key(service.pii.token("card", c)) for c in cards])) >= 2
    records = {r["transaction_id"]: json.loads(rec) for r, rec in zip(
        results, service.decisions.fetch([r["transaction_id"] for r in results]))}
    for k in (0, 11):
        for card in cards:  # counted per card, whatever master holds it
            features = records[f"t-test-{card}-{k}"]["features"]
            assert features["card_count_1m"] == float(k), (card, k)
            # One device for all the cards: the ones before this one in the batch.
            seen = float(cards.index(card)) if k == 0 else 7.0
            assert features["device_distinct_cards_24h"] == seen, (card, k)
    # Decisions spread over the partitions of the stream, all of them recorded.
    lengths = [cluster_client.xlen(key) for key in service.decisions.stream_keys]
    assert sum(lengths) == 96 and sum(1 for n in lengths if n) >= 4, lengths

    # A retried id (on another replica) is answered from its record and counts once.
    first = results[0]
    again = other.test_client().post("/v1/transactions/score", json=batch[0]).get_json()
    assert again.pop("duplicate") is True and again == first
    assert sum(cluster_client.xlen(key) for key in service.decisions.stream_keys) == 96
    card = service.pii.token("card", batch[0]["card_id"])
    assert int(cluster_client.hget(service.velocity.card_stats_key(card), "n")) == 12  # type: ignore[arg-type]

    # The burst rule ("10 or more on this card within a minute") opened review cases in
    # their partitions; an analyst on the other replica closes one into a label.
    reviewed = [r["transaction_id"] for r in results if r["decision"] == "review"]
    assert reviewed, [r["decision"] for r in results]
    listed = client.get("/v1/reviews?limit=500").get_json()
    assert sorted(c["transaction_id"] for c in listed["cases"]) == sorted(reviewed)
    assert listed["open"] == len(reviewed)
    tid = reviewed[0]
    closed = other.test_client().post(f"/v1/reviews/{tid}",
                                      json={"outcome": "fraud", "analyst": "ana"})
    assert closed.status_code == 200, closed.get_json()
    assert client.get("/v1/reviews?limit=500").get_json()["open"] == len(reviewed) - 1
    done = client.get("/v1/reviews?status=closed").get_json()
    assert [c["transaction_id"] for c in done["cases"]] == [tid]

    # A chargeback label too; the worker learns both (one label stream, one order).
    label = client.post("/v1/labels", json={"transaction_id": results[1]["transaction_id"],
                                            "is_fraud": False})
    assert label.status_code == 202, label.get_json()
    repeat = client.post("/v1/labels", json={"transaction_id": results[1]["transaction_id"],
                                             "is_fraud": False})
    assert repeat.get_json()["accepted"] == 0, "a repeated label is ignored"
    model = client.get("/v1/model?sync=true").get_json()
    assert model["labels_learned"] == 2, model
    assert model["label_offset"] == label.get_json()["offsets"][-1]
