"""Retention on a real Redis and a real lake: nothing trimmed is lost, groups hold trimming."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis

from mlplatform.lake import Lake
from mlplatform.lease import Lease
from mlplatform.retention import Archiver
from mlplatform.streams import Consumer, ensure_group

STREAM = "test:decisions"


def fill(client: redis.Redis, n: int, start_ms: int) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(client.xadd(STREAM, {"transaction_id": f"t{i}", "score": str(i / n)},
                               id=f"{start_ms + i * 1000}-0").decode())  # type: ignore[union-attr]
    return ids


def stream_ids(client: redis.Redis) -> list[str]:
    return [i.decode() for i, _ in client.xrange(STREAM)]  # type: ignore[union-attr]


def test_trimming_keeps_every_trimmed_entry_in_the_lake(redis_client: redis.Redis,
                                                        tmp_path: Path) -> None:
    now = time.time()
    ids = fill(redis_client, 500, int((now - 3600) * 1000))  # one entry a second, an hour ago
    lake = Lake(tmp_path / "lake")
    archiver = Archiver(redis_client, lake, STREAM, retention_seconds=3600 - 200, chunk=64)
    result = archiver.run_once(now=now)
    kept = stream_ids(redis_client)
    archived = lake.read(STREAM)["stream_id"].tolist()
    assert result.archived == len(archived) == 200  # the 200 entries older than retention
    assert result.trimmed == 200 and len(kept) == 300
    assert sorted(archived + kept, key=lambda s: int(s.split("-")[0])) == ids
    assert lake.read(STREAM)["transaction_id"].tolist() == [f"t{i}" for i in range(200)]
    # Date-partitioned files under lake/<stream>/date=YYYY-MM-DD/.
    parts = lake.partitions(STREAM)
    assert all(p.path.parent.name == f"date={p.date}" for p in parts)
    assert sum(pq.ParquetFile(p.path).metadata.num_rows for p in parts) == 200
    # A second run has nothing more to do.
    again = archiver.run_once(now=now)
    assert (again.archived, again.trimmed) == (0, 0)


def test_length_cap_archives_the_oldest_beyond_it(redis_client: redis.Redis,
                                                  tmp_path: Path) -> None:
    ids = fill(redis_client, 100, int(time.time() * 1000) - 100_000)
    lake = Lake(tmp_path / "lake")
    result = Archiver(redis_client, lake, STREAM, retention_seconds=86400, maxlen=30,
                      chunk=16).run_once()
    assert result.length == 30
    assert lake.read(STREAM)["stream_id"].tolist() == ids[:70]
    assert stream_ids(redis_client) == ids[70:]


def test_a_consumer_group_holds_what_it_has_not_applied(redis_client: redis.Redis,
                                                        tmp_path: Path) -> None:
    ids = fill(redis_client, 50, int((time.time() - 7200) * 1000))
    ensure_group(redis_client, STREAM, "slow")
    # The group was handed 20 entries and acknowledged only the first 10.
    reply: Any = redis_client.xreadgroup("slow", "c1", {STREAM: ">"}, count=20)
    handed = [i for i, _ in reply[0][1]]
    redis_client.xack(STREAM, "slow", *handed[:10])
    lake = Lake(tmp_path / "lake")
    result = Archiver(redis_client, lake, STREAM, retention_seconds=60).run_once()
    assert result.archived == 50  # everything is archived ...
    assert result.held_by == "slow"
    assert stream_ids(redis_client) == ids[10:]  # ... but only what the group finished is trimmed
    # The group catches up; the next run trims the rest without archiving twice.
    redis_client.xack(STREAM, "slow", *handed[10:])
    Consumer(redis_client, STREAM, "slow", lambda entries, tx: None, "test:dead",
             name="c2").drain()
    result = Archiver(redis_client, lake, STREAM, retention_seconds=60).run_once()
    assert (result.archived, result.length) == (0, 0)
    assert lake.count(STREAM) == 50


def test_a_crash_after_writing_archives_again_without_duplicates(redis_client: redis.Redis,
                                                                  tmp_path: Path) -> None:
    fill(redis_client, 40, int((time.time() - 7200) * 1000))
    lake = Lake(tmp_path / "lake")
    archiver = Archiver(redis_client, lake, STREAM, retention_seconds=60, chunk=10)
    entries: Any = redis_client.xrange(STREAM, count=25)
    lake.write(STREAM, entries)  # written, but the worker died before cursor and trim
    archiver.run_once()
    assert lake.count(STREAM) == 40 and redis_client.xlen(STREAM) == 0


def test_one_archiver_per_stream_at_a_time(redis_client: redis.Redis, tmp_path: Path) -> None:
    fill(redis_client, 10, int((time.time() - 7200) * 1000))
    other = Lease(redis_client, f"mlsuite:lake:lease:{STREAM}")
    assert other.acquire()
    result = Archiver(redis_client, Lake(tmp_path), STREAM, retention_seconds=60).run_once()
    assert result.skipped and redis_client.xlen(STREAM) == 10
    other.release()
    assert Archiver(redis_client, Lake(tmp_path), STREAM, retention_seconds=60).run_once().trimmed == 10


def test_lake_find_returns_the_newest_entry_per_value(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write(STREAM, [("1700000000000-0", {"transaction_id": "t1", "v": "old"}),
                        ("1700000000001-0", {"transaction_id": "t2", "v": "x"})])
    lake.write(STREAM, [("1700090000000-0", {"transaction_id": "t1", "v": "new"})])
    found = lake.find(STREAM, "transaction_id", ["t1", "t2", "t3"])
    assert {k: v["v"] for k, v in found.items()} == {"t1": "new", "t2": "x"}
