"""Decisions past the stream retention: archived to the lake and trimmed from Redis, they
can still be labelled (and a retried transaction still gets its stored decision)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask

from fraud.app import get_service
from mlplatform.lake import Lake
from mlplatform.retention import Archiver

Tx = Callable[..., dict[str, Any]]


def test_decisions_trimmed_by_retention_can_still_be_labelled_from_the_lake(
        make_app: Callable[..., Flask], tx: Tx) -> None:
    # A prefix of its own: the session's lake is shared by the fraud tests.
    app = make_app(key_prefix=f"fraud-{uuid.uuid4().hex[:8]}:")
    client = app.test_client()
    service = get_service(app)
    first = [client.post("/v1/transactions/score", json=tx(i)).get_json() for i in (1, 2, 3)]
    # Every partition of the stream (one on a single server), as the worker keeps them.
    results = [Archiver(service.redis, Lake.from_settings(service.settings), stream,
                        retention_seconds=0).run_once(now=time.time() + 1)
               for stream in service.decisions.stream_keys]
    assert sum(r.archived for r in results) == 3 and sum(r.trimmed for r in results) == 3
    assert sum(service.redis.xlen(s) for s in service.decisions.stream_keys) == 0
    # t-test-1 and t-test-2's keys expired with their entries; t-test-3's is still there.
    for tid in ("t-test-1", "t-test-2"):  # one slot per DEL on a cluster
        service.redis.delete(service.decisions.key(tid))

    response = client.post("/v1/labels", json=[
        {"transaction_id": f"t-test-{i}", "is_fraud": i == 2} for i in (1, 2, 3)])
    assert response.status_code == 202, response.get_json()
    labels = service.redis.xrange(service.labels.stream)
    assert [round(json.loads(f[b"decision"])["score"], 6) for _, f in labels] == \
        [d["score"] for d in first], "each label carries the archived decision's record"

    again = client.post("/v1/transactions/score", json=tx(3)).get_json()
    assert again.pop("duplicate") is True and again == first[2]

    unknown = client.post("/v1/labels", json={"transaction_id": "t-never", "is_fraud": True})
    assert unknown.status_code == 404 and "t-never" in unknown.get_json()["error"]["message"]
    # Past decision_ttl_seconds a decision is no longer joinable, archived or not.
    later = time.time() + service.config.decision_ttl_seconds + 60
    assert service.decisions.lookup(["t-test-1"], service.config.decision_ttl_seconds,
                                    now=later) == [None]
