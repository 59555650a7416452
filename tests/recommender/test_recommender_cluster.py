"""The recommender's live history on a real three-master Redis Cluster: a user's history
and events share a partition's slot, the stream partitions spread over the masters, and
the worker's popularity group reads every partition."""

from __future__ import annotations

import time

import redis

from mlplatform.streams import Consumer, partition_count, partition_keys
from recommender.history import STREAM_KEY, Event, HistoryStore
from recommender.trending import PopularityCounter
from recommender.worker import DEAD_LETTERS

NOW = time.time()


def test_history_and_events_share_a_slot_per_user(cluster_client: redis.Redis) -> None:
    store = HistoryStore(cluster_client, max_events=3)
    users = [f"u{n:05d}" for n in range(40)]
    batch = [Event(u, f"i{k}", "view", NOW + k) for u in users for k in range(4)]
    ids = store.append(batch, request_id="r1")
    assert len(ids) == len(batch) and all(ids)
    slot = cluster_client.keyslot  # type: ignore[attr-defined]
    for user in users:
        assert slot(store.key(user)) == slot(store.stream(user)), user
    # Bounded, newest first, on every partition.
    assert [[i for _, _, i in h] for h in store.read(users[:2])] == [["i3", "i2", "i1"]] * 2
    assert store.stream_length() == len(batch)
    parts = partition_count(cluster_client)
    used = [k for k in partition_keys(STREAM_KEY, parts) if cluster_client.xlen(k)]
    assert len(used) > parts // 2, used  # 40 users spread over the partitions
    entry = cluster_client.xrange(store.stream(users[0]), count=1)[0]  # type: ignore[index]
    assert entry[1][b"user_id"] == users[0].encode()


def test_popularity_counts_every_partition(cluster_client: redis.Redis) -> None:
    store = HistoryStore(cluster_client)
    store.append([Event(f"u{n}", "i1" if n % 4 else "i2", "purchase", NOW - 10)
                  for n in range(40)])
    counter = PopularityCounter(cluster_client, clock=lambda: NOW)
    consumer = Consumer(cluster_client, STREAM_KEY, "popularity", counter.handle,
                        DEAD_LETTERS, partitions=partition_count(cluster_client))
    assert consumer.drain() == 40
    counts = counter.read(NOW)
    assert counts.events == 40
    assert counts.baseline["i1"] > 2 * counts.baseline["i2"] > 0
    assert consumer.pending() == 0
