"""Readers of partitioned streams on a real three-master Redis Cluster: the writers append
to ``{p<k>}:<stream>``, nothing is left under the plain name, so a reader that reads the
plain name sees nothing and each test here fails.

The readers: ``mlplatform.streams.read_recent`` (the shared helper), the drift report's
live window (Redis plus the lake of every partition) and the GraphQL subscriptions' tails.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import redis

from graphapi.streams import StreamTails
from mlplatform.lake import Lake
from mlplatform.monitoring.driftreport import live_rows
from mlplatform.retention import Archiver
from mlplatform.streams import first_ids, partition_count, partition_key, read_recent

STREAM = "fraud:decisions"
T0 = 1_700_000_000_000  # ms of the first entry


def _fill(client: redis.Redis, n: int) -> dict[str, int]:
    """``n`` entries, entry i at ms T0 + i in partition i % parts; entry ids -> i."""
    parts = partition_count(client)
    ids = {}
    for i in range(n):
        sid = client.xadd(partition_key(STREAM, i % parts, parts),
                          {"i": str(i), "record": json.dumps({"i": i})}, id=f"{T0 + i}-0")
        ids[sid.decode()] = i
    return ids


def test_read_recent_merges_every_partition_newest_last(cluster_client: redis.Redis) -> None:
    parts = partition_count(cluster_client)
    assert parts > 1
    _fill(cluster_client, 100)
    assert cluster_client.exists(STREAM) == 0  # nothing under the plain name
    newest = read_recent(cluster_client, STREAM, 30, chunk=4)
    assert [int(e.get("i") or -1) for e in newest] == list(range(70, 100))
    assert {e.stream for e in newest} == {partition_key(STREAM, p, parts) for p in range(parts)}
    window = read_recent(cluster_client, STREAM, 1000, since_ms=T0 + 10, until_ms=T0 + 19)
    assert [int(e.get("i") or -1) for e in window] == list(range(10, 20))
    # Two masters may give the same id: both entries stay.
    cluster_client.xadd(partition_key(STREAM, 1, parts), {"i": "same"}, id=f"{T0 + 200}-0")
    cluster_client.xadd(partition_key(STREAM, 2, parts), {"i": "same"}, id=f"{T0 + 200}-0")
    assert [e.get("i") for e in read_recent(cluster_client, STREAM, 2)] == ["same", "same"]
    firsts = first_ids(cluster_client, STREAM)
    assert firsts[partition_key(STREAM, 3, parts)] == f"{T0 + 3}-0" and len(firsts) == parts


def test_the_drift_window_reads_every_partition_in_redis_and_in_the_lake(
        cluster_client: redis.Redis, tmp_path: Path) -> None:
    parts = partition_count(cluster_client)
    lake = Lake(tmp_path / "lake")
    _fill(cluster_client, 80)
    # Archive and trim the first 40 entries (ms T0 .. T0 + 39) of every partition.
    for p in range(parts):
        Archiver(cluster_client, lake, partition_key(STREAM, p, parts),
                 retention_seconds=0).run_once(now=(T0 + 40) / 1000)
    assert sum(cluster_client.xlen(partition_key(STREAM, p, parts)) for p in range(parts)) == 40
    source = {"stream": STREAM, "json_field": "record"}
    window = live_rows(cluster_client, lake, source, (T0 + 20) / 1000, (T0 + 79) / 1000 + 0.0005)
    assert [r["i"] for r in window.rows] == list(range(20, 80))
    assert window.in_window == [True] * 60 and not window.truncated
    newest = live_rows(cluster_client, lake, source, T0 / 1000, (T0 + 80) / 1000, max_rows=10)
    assert [r["i"] for r in newest.rows] == list(range(70, 80)) and newest.truncated
    # Without Redis the lake alone: every partition's folder.
    archived = live_rows(None, lake, source, T0 / 1000, (T0 + 80) / 1000)
    assert [r["i"] for r in archived.rows] == list(range(40))


def test_a_subscription_tail_hears_every_partition(cluster_url: str,
                                                   cluster_client: redis.Redis) -> None:
    parts = partition_count(cluster_client)

    async def run() -> list[str]:
        tails = StreamTails(cluster_url, block_ms=200)
        try:
            async with tails.subscribe(STREAM) as queue:
                for p in range(parts):
                    await asyncio.to_thread(cluster_client.xadd,
                                            partition_key(STREAM, p, parts), {"p": str(p)})
                got = [(await asyncio.wait_for(queue.get(), 10))[1]["p"] for _ in range(parts)]
                return sorted(got, key=int)
        finally:
            await tails.close()

    assert asyncio.run(run()) == [str(p) for p in range(parts)]


def test_closing_the_tails_ends_every_read_before_the_client_closes(cluster_url: str) -> None:
    """close() with a subscriber still listening: every tail task has ended before the
    client's connections close (a blocking read cut by the close could keep the loop from
    ever shutting down), and none is left afterwards."""

    async def run() -> tuple[list[set[asyncio.Task[Any]]], set[asyncio.Task[Any]]]:
        async with asyncio.timeout(30):
            tails = StreamTails(cluster_url, block_ms=200)
            running_at_close: list[set[asyncio.Task[Any]]] = []
            close_client = tails.client.aclose

            async def aclose() -> None:  # the real close, noting what still runs
                running_at_close.append(asyncio.all_tasks() - {asyncio.current_task()})
                await close_client()

            tails.client.aclose = aclose  # type: ignore[method-assign]
            async with tails.subscribe(STREAM):
                await asyncio.sleep(0.3)  # the tail is inside a blocking XREAD now
                await tails.close()
            return running_at_close, asyncio.all_tasks() - {asyncio.current_task()}

    running_at_close, left = asyncio.run(run())
    assert running_at_close == [set()], f"still reading when the client closed: {running_at_close}"
    assert left == set(), f"tasks still running after close(): {left}"
