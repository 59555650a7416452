"""Live interaction history in Redis: what every replica reads to personalise in real time.

Two structures, written together in one MULTI/EXEC round trip per request:

- ``mlsuite:rec:hist:<user_id>``: a LIST of the user's most recent events, newest first,
  trimmed to ``max_events`` and expiring ``ttl_seconds`` after the user's last event.
  A request reads one list (one LRANGE, one round trip; a batch pipelines them), so
  an event posted to any replica changes the next recommendation on every replica.
  Bounded by design: a bot cannot grow a key without limit, and an idle user costs nothing.
- ``mlsuite:rec:events``: a durable STREAM of every event (XADD), the record that feeds
  live popularity (the worker's "popularity" consumer group), the lake and the next
  training run. Appended without ``MAXLEN`` (approximate trimming would drop entries
  nobody archived): the recommender worker's retention archives entries to the lake
  once they are past ``MLSUITE_STREAM_RETENTION_SECONDS`` / ``MLSUITE_STREAM_MAXLEN``
  and only then trims them, never past what a consumer group has not applied.
  Durability is Redis's: AOF with fsync every second (the embedded server's setting)
  loses at most the last second on a crash of the host.

An event is acknowledged (HTTP 201) only after EXEC returned, i.e. both writes are in
Redis; a Redis error is an ``Unavailable(dependency="redis")`` and nothing was written.

On a Redis Cluster the stream is partitioned by user (``mlplatform.streams``): a user's
events go to partition ``{p<k>}:mlsuite:rec:events`` and the history key carries the same
tag (``{p<k>}:mlsuite:rec:hist:<user_id>``), so the two writes stay one MULTI on one slot.
A request with events of several users writes one MULTI per partition: each partition's
writes are atomic, and a failure names redis as before (partitions written earlier keep
their events; a client's retry adds them again, as after any lost reply).

>>> encode_event(1700000000.5, "view", "i00042")
b'1700000000500|view|i00042'
>>> decode_event(b'1700000000500|view|i00042')
(1700000000.5, 'view', 'i00042')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from mlplatform.errors import Unavailable
from mlplatform.redisdb import partition
from mlplatform.streams import partition_count, partition_key, partition_keys, partition_tag

__all__ = ["Event", "HistoryStore", "decode_event", "encode_event"]

HISTORY_PREFIX = "mlsuite:rec:hist:"
STREAM_KEY = "mlsuite:rec:events"


@dataclass(frozen=True)
class Event:
    """One interaction: who, what, which kind, when (epoch seconds, UTC)."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float


def encode_event(timestamp: float, event_type: str, item_id: str) -> bytes:
    # Item id last: ids may contain any character the API allows, the split stops at 2.
    return f"{round(timestamp * 1000)}|{event_type}|{item_id}".encode()


def decode_event(raw: bytes) -> tuple[float, str, str]:
    ts, event_type, item_id = raw.decode().split("|", 2)
    return int(ts) / 1000, event_type, item_id


class HistoryStore:
    """Per-user recent events plus the durable event stream, on one Redis."""

    def __init__(self, client: redis.Redis, *, max_events: int = 200,
                 ttl_seconds: int = 30 * 86_400) -> None:
        self.client = client
        self.max_events = max_events
        self.ttl_seconds = ttl_seconds
        self.partitions = partition_count(client)
        self.streams = partition_keys(STREAM_KEY, self.partitions)

    def key(self, user_id: str) -> str:
        """The history key of ``user_id`` (tagged with its partition on a cluster)."""
        if self.partitions == 1:
            return HISTORY_PREFIX + user_id
        return partition_tag(partition(user_id, self.partitions), self.partitions) \
            + HISTORY_PREFIX + user_id

    def stream(self, user_id: str) -> str:
        """The event stream partition ``user_id``'s events go to."""
        return partition_key(STREAM_KEY, partition(user_id, self.partitions), self.partitions)

    def append(self, events: Sequence[Event], *, request_id: str = "") -> list[str]:
        """Write events atomically (one round trip per partition: one on a single
        server); the stream ids, in order."""
        by_part: dict[int, list[int]] = {}
        for i, e in enumerate(events):
            by_part.setdefault(partition(e.user_id, self.partitions), []).append(i)
        ids: list[str] = [""] * len(events)
        try:
            for part, positions in by_part.items():
                stream = partition_key(STREAM_KEY, part, self.partitions)
                pipe = self.client.pipeline(transaction=True)
                for i in positions:
                    e = events[i]
                    key = self.key(e.user_id)
                    pipe.lpush(key, encode_event(e.timestamp, e.event_type, e.item_id))
                    pipe.ltrim(key, 0, self.max_events - 1)
                    pipe.expire(key, self.ttl_seconds)
                    pipe.xadd(stream, {"user_id": e.user_id, "item_id": e.item_id,
                                       "event_type": e.event_type, "ts": f"{e.timestamp:.3f}",
                                       "request_id": request_id})
                results = pipe.execute()
                for i, r in zip(positions, results[3::4], strict=True):
                    ids[i] = r.decode() if isinstance(r, bytes) else str(r)
        except redis.RedisError as exc:
            raise Unavailable(f"redis is unavailable, events not recorded: {exc}",
                              dependency="redis") from exc
        return ids

    def read(self, user_ids: Sequence[str]) -> list[list[tuple[float, str, str]]]:
        """Each user's recent events, newest first (one round trip). Raises RedisError."""
        return [[decode_event(r) for r in raw] for raw in self.read_raw(user_ids)]

    def read_raw(self, user_ids: Sequence[str]) -> list[list[bytes]]:
        """``read`` without decoding: each user's encoded events (``encode_event``), newest
        first. The serving path parses them itself (``parse_events``), skipping the
        text decoding and tuples of ``decode_event``. Raises RedisError."""
        if len(user_ids) == 1:
            key = self.key(user_ids[0])
            return [self.client.lrange(key, 0, self.max_events - 1)]  # type: ignore[list-item]
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.lrange(self.key(user_id), 0, self.max_events - 1)
        return pipe.execute()  # type: ignore[no-any-return]

    def stream_length(self) -> int:
        """Entries in the event stream (every partition)."""
        return sum(int(self.client.xlen(s)) for s in self.streams)

    def clear(self, user_id: str) -> None:
        self.client.delete(self.key(user_id))
