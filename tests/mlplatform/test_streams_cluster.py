"""Consumer groups on a real three-master Redis Cluster: partitioned streams, one MULTI per
slot, effects in other slots applied before the ack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis

from mlplatform.redisdb import cluster_nodes
from mlplatform.streams import (
    CLUSTER_PARTITIONS,
    Consumer,
    Entry,
    Retry,
    partition_count,
    partition_key,
    partition_keys,
    partition_tag,
)

STREAM, GROUP, DEAD = "test:events", "counter", "test:dead"


def per_partition(entries: Sequence[Entry], tx: Any) -> dict[str, str]:
    """Counts each entry in its partition's slot (the stream's tag): one MULTI with the ack."""
    rejected = {}
    for e in entries:
        text = e.get("n") or ""
        if not text.isdigit():
            rejected[e.id] = f"n must be an integer, got {text!r}"
            continue
        tag = e.stream[: e.stream.index("}") + 1]
        tx.incrby(f"{tag}:total", int(text))
    return rejected


def across_slots(entries: Sequence[Entry], tx: Any) -> dict[str, str]:
    """Counts each entry under a key of its own value: effects in many slots."""
    for e in entries:
        tx.incr(f"seen:{e.get('n')}")
    return {}


def test_a_partitioned_stream_is_applied_once_per_entry_by_two_consumers(
        cluster_client: redis.Redis, cluster_url: str) -> None:
    parts = partition_count(cluster_client)
    assert parts == CLUSTER_PARTITIONS > 1
    for n in range(1, 201):
        cluster_client.xadd(partition_key(STREAM, n % parts, parts), {"n": str(n)})
    cluster_client.xadd(partition_key(STREAM, 3, parts), {"n": "x"})
    a, b = (Consumer(cluster_client, STREAM, GROUP, per_partition, DEAD, name=name, batch=9,
                     block_ms=1, partitions=parts) for name in ("a", "b"))
    for _ in range(10):
        a.poll(wait=False)
        b.poll(wait=False)
    totals = [int(cluster_client.get(partition_tag(p, parts) + "total") or 0)
              for p in range(parts)]
    assert totals == [sum(n for n in range(1, 201) if n % parts == p) for p in range(parts)]
    assert a.pending() == 0 and b.pending() == 0
    [letter] = cluster_client.xrange(DEAD)  # type: ignore[misc]
    assert letter[1][b"stream"] == partition_key(STREAM, 3, parts).encode()
    assert b"n must be an integer" in letter[1][b"reason"]
    # The partitions are keys of their own slots, spread over the masters.
    nodes, _ = cluster_nodes(cluster_url)
    holders = set()
    for host, port in nodes:
        node = redis.Redis(host=host, port=port)
        for key in partition_keys(STREAM, parts):
            slot = cluster_client.keyslot(key)  # type: ignore[attr-defined]
            if node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot):
                holders.add(port)
    assert len(holders) > 1, holders


def test_effects_in_other_slots_are_applied_then_acked(cluster_client: redis.Redis) -> None:
    for n in range(50):
        cluster_client.xadd(STREAM, {"n": str(n)})
    c = Consumer(cluster_client, STREAM, GROUP, across_slots, DEAD, name="a", batch=20)
    assert c.drain() == 50
    assert [int(cluster_client.get(f"seen:{n}") or 0) for n in range(50)] == [1] * 50
    assert c.pending() == 0
    assert c.drain() == 0  # acked: nothing comes back


def test_one_partition_on_a_single_server_keeps_the_stream_name(
        redis_client: redis.Redis) -> None:
    if partition_count(redis_client) > 1:
        return  # the session runs on a cluster (MLSUITE_TEST_REDIS=cluster)
    assert partition_keys(STREAM, partition_count(redis_client)) == [STREAM]


@pytest.mark.parametrize("taker", ["itself", "another consumer"])
def test_an_entry_handed_out_again_after_a_failed_ack_is_applied_once_per_slot(
        taker: str, cluster_client: redis.Redis) -> None:
    """The ack's transaction fails after the other slots' effects were applied (a crash
    there leaves the same state): the consumer that reads the entries again (the same
    one, or another taking them over) applies each slot's effects once, the stream
    slot's (which failed with the ack) once too."""
    parts = partition_count(cluster_client)
    for n in range(30):
        cluster_client.xadd(partition_key(STREAM, 0, parts), {"n": str(n)})
    tag = partition_tag(0, parts)
    calls = []

    def counting(entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        calls.append(len(entries))
        for e in entries:
            tx.incr(f"seen:{e.get('n')}")  # other slots, fenced
            tx.incr(f"{tag}seen:{e.get('n')}")  # the stream's slot: commits with the ack
        if len(calls) == 1:
            tx.execute_command("SET", f"{tag}broken")  # wrong arity: the MULTI is refused
        return {}

    a = Consumer(cluster_client, STREAM, GROUP, counting, DEAD, name="a", batch=30,
                 partitions=parts)
    with pytest.raises(redis.ResponseError):
        a.poll(wait=False)
    assert a.pending() == 30
    assert [int(cluster_client.get(f"seen:{n}") or 0) for n in range(30)] == [1] * 30
    assert cluster_client.get(f"{tag}seen:0") is None
    b = a if taker == "itself" else Consumer(cluster_client, STREAM, GROUP, counting, DEAD,
                                             name="b", batch=30, claim_idle_ms=0,
                                             partitions=parts)
    assert b.drain() == 30
    assert b.pending() == 0 and calls[1:] == [1] * 30  # read again: one entry at a time
    assert [int(cluster_client.get(f"seen:{n}") or 0) for n in range(30)] == [1] * 30
    assert [int(cluster_client.get(f"{tag}seen:{n}") or 0) for n in range(30)] == [1] * 30
    assert a.drain() == 0  # acked: nothing comes back


def test_entries_a_retry_left_pending_are_applied_as_one_batch_again(
        cluster_client: redis.Redis) -> None:
    """Nothing of a batch is applied when its handler asks for a retry: read again, it
    stays one batch (no one-by-one reading, as after a failed commit)."""
    parts = partition_count(cluster_client)
    for n in range(20):
        cluster_client.xadd(partition_key(STREAM, 0, parts), {"n": str(n)})
    calls = []

    def flaky(entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        calls.append(len(entries))
        if len(calls) == 1:
            raise Retry("the dependency is down")
        return across_slots(entries, tx)

    c = Consumer(cluster_client, STREAM, GROUP, flaky, DEAD, name="a", batch=20,
                 claim_idle_ms=0, claim_every_seconds=0, partitions=parts)
    with pytest.raises(Retry):
        c.poll(wait=False)
    assert c.drain() == 20 and calls == [20, 20]
    assert [int(cluster_client.get(f"seen:{n}") or 0) for n in range(20)] == [1] * 20
