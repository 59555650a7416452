"""Stream consumers: Redis Streams consumer groups with acks, reclaiming and dead letters.

A ``Consumer`` reads one stream as one member of one consumer group, so several worker
processes (replicas) share the entries and each entry is applied once per group:

- ``XREADGROUP ... >`` hands each new entry to one consumer of the group;
- the handler's effect and the ``XACK`` are committed together: a handler writes its
  Redis effects into the transaction (``MULTI``) it is given, and the consumer adds the
  acks (and any dead letters) to the same transaction. Either all of it happens or none
  of it, so a crash never applies an entry without acking it or acks one not applied.
  Effects outside Redis (a Feast push, a model snapshot) must be idempotent, because
  an entry can be handed out again after a crash before its ack;
- entries a crashed consumer left pending are taken over with ``XAUTOCLAIM`` once they
  have been idle ``claim_idle_ms``, and handled before new ones;
- an entry the handler rejects, or that makes it raise, goes to the dead-letter stream
  with the reason (counted, logged once) and the consumer goes on with the next entry.
  A Redis error is not the entry's fault: nothing is acked and the batch is retried.
  Neither is a dependency that is down (Feast, say): the handler raises ``Retry`` and
  the entries stay pending with this consumer, which re-reads them after a pause.

Handlers are plain functions ``handle(entries, tx) -> {entry_id: reason}`` (the rejected
ones; ``None`` or ``{}`` when all were applied), testable without a loop.

On a Redis Cluster a stream may be partitioned: ``partitions`` keys ``{p<k>}:<stream>``
(``partition_key``), each with its own hash tag, so the partitions spread over the nodes
and a writer keeps a partition and the keys it writes with it (a user's history, tagged
the same) in one slot, i.e. in one MULTI. A ``Consumer`` of a partitioned stream reads
every partition, one ``XREADGROUP`` each (one slot per command), with one group per
partition. On a single server there is one partition: the stream's own name.

A cluster runs MULTI only on keys of one slot. When a batch's effects, its stream and
its dead letters share one slot the commit is the same single transaction. When they do
not (counters keyed by experiment or by epoch, say), the effects of each other slot are
applied first, in one MULTI per slot that also records the batch in that slot's fence
(``{<slot tag>}:mlsuite:applied:<stream>:<group>``, a sorted set of the batches in
flight); then the dead letters, then the acks with the stream slot's own effects, and the
fence entries are removed. An entry is never acked unapplied, and one handed out again
after a crash between the two (or a node failing midway) is applied alone, skipping the
slots whose fence shows it applied: each slot's effects happen once per entry.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import Counter, Gauge

from mlplatform.redisdb import is_cluster

__all__ = [
    "Retry",
    "Entry",
    "Handler",
    "Consumer",
    "DEAD_LETTERS",
    "backlog",
    "consumer_name",
    "ensure_group",
    "dead_letter_fields",
    "CLUSTER_PARTITIONS",
    "partition_count",
    "partition_key",
    "partition_keys",
    "partition_tag",
    "stream_keys",
    "read_recent",
    "first_ids",
    "id_key",
    "slot_tag",
]

log = logging.getLogger(__name__)

ENTRIES = Counter("mlsuite_stream_entries_total", "Stream entries applied by consumer groups",
                  ["stream", "group"])
DEAD_LETTERS = Counter("mlsuite_stream_dead_letters_total",
                       "Stream entries sent to a dead-letter stream, by stream and group",
                       ["stream", "group"])
CLAIMED = Counter("mlsuite_stream_claimed_total",
                  "Pending entries taken over from a stopped consumer", ["stream", "group"])
PENDING = Gauge("mlsuite_stream_pending_entries",
                "Entries delivered to a group and not yet acknowledged", ["stream", "group"],
                multiprocess_mode="max")


# Partitions of a partitioned stream on a Redis Cluster. Fixed: writers and consumers
# must agree, and a stream's entries stay in the partition they were written to.
CLUSTER_PARTITIONS = 8


def partition_count(client: Any) -> int:
    """Partitions of a partitioned stream on ``client``: 1 on a single server (the names
    stay as they were), ``CLUSTER_PARTITIONS`` on a cluster."""
    return CLUSTER_PARTITIONS if is_cluster(client) else 1


def partition_tag(part: int, partitions: int) -> str:
    """The key prefix of partition ``part``: its hash tag, or "" with one partition.

    >>> partition_tag(3, 8), partition_tag(0, 1)
    ('{p3}:', '')
    """
    return f"{{p{part}}}:" if partitions > 1 else ""


def partition_key(stream: str, part: int, partitions: int) -> str:
    """The key of partition ``part`` of ``stream``.

    >>> partition_key("mlsuite:rec:events", 3, 8), partition_key("mlsuite:rec:events", 0, 1)
    ('{p3}:mlsuite:rec:events', 'mlsuite:rec:events')
    """
    return partition_tag(part, partitions) + stream


def partition_keys(stream: str, partitions: int) -> list[str]:
    """Every partition key of ``stream``, in partition order."""
    return [partition_key(stream, p, partitions) for p in range(partitions)]


def stream_keys(client: Any, stream: str) -> list[str]:
    """The keys ``stream`` is written to on ``client``: its partitions on a cluster, its
    own name on a single server. Every reader of a partitioned stream reads these."""
    return partition_keys(stream, partition_count(client))


def id_key(stream_id: str | bytes) -> tuple[int, int]:
    """A stream id as a sortable (milliseconds, sequence) pair.

    >>> id_key("1700000000000-7") < id_key(b"1700000000001-0"), id_key("5")
    (True, (5, 0))
    """
    ms, _, seq = _s(stream_id).partition("-")
    return int(ms), int(seq or 0)


def read_recent(client: Any, stream: str, count: int, *, since_ms: int | None = None,
                until_ms: int | None = None, chunk: int = 1000) -> list[Entry]:
    """The newest ``count`` entries of ``stream`` with ids in [``since_ms``, ``until_ms``]
    (milliseconds, both optional), over every partition, oldest first.

    Each partition is read newest first, ``chunk`` entries per ``XREVRANGE`` (a reply of
    thousands of records would hold the server, and every request, for milliseconds),
    and the partitions are merged by id, lazily: at most ``count`` plus one chunk per
    partition is read, however long the streams are. Ids of two partitions are
    independent (two masters' clocks), so entries with the same id both stay; their order
    between partitions is by id, the only order a partitioned stream has.
    """
    if count <= 0:
        return []
    newest = "+" if until_ms is None else str(until_ms)
    oldest = "-" if since_ms is None else str(since_ms)
    step = max(1, min(chunk, count))

    def newest_first(key: str) -> Iterator[Entry]:
        cursor = newest
        while True:
            raw: Any = client.xrevrange(key, max=cursor, min=oldest, count=step)
            for sid, fields in raw:
                yield Entry(key, _s(sid), fields)
            if len(raw) < step:
                return
            cursor = "(" + _s(raw[-1][0])  # exclusive: continue below the last one read

    merged = heapq.merge(*(newest_first(k) for k in stream_keys(client, stream)),
                         key=lambda e: id_key(e.id), reverse=True)
    return list(itertools.islice(merged, count))[::-1]


def first_ids(client: Any, stream: str) -> dict[str, str | None]:
    """Per partition key of ``stream``: the id of its oldest entry still in Redis (None
    when it is empty). What is older was archived to the lake and trimmed."""
    keys = stream_keys(client, stream)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xrange(key, "-", "+", count=1)
    return {key: _s(reply[0][0]) if reply else None
            for key, reply in zip(keys, pipe.execute())}


class Retry(Exception):  # noqa: N818 - an instruction to the consumer, not a failure kind
    """Raised by a handler when a dependency is down: the entries are not at fault.

    Nothing is acked or dead-lettered; the consumer pauses ``retry_seconds`` and hands the
    same entries (its own pending ones) to the handler again.
    """


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id and its raw fields."""

    stream: str
    id: str
    fields: Mapping[bytes, bytes]
    delivered: int = 1  # times handed out (> 1: reclaimed after a consumer stopped)

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.fields.get(name.encode())
        return default if value is None else value.decode()

    def text(self) -> dict[str, str]:
        return {k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in self.fields.items()}


# handle(entries, tx) -> {entry id: reason} for the entries it rejects (dead letters).
Handler = Callable[[Sequence[Entry], "redis.client.Pipeline"], Mapping[str, str] | None]


def consumer_name(role: str = "worker") -> str:
    """A consumer name unique to this process: host, pid and role."""
    return f"{socket.gethostname()}-{os.getpid()}-{role}"


def ensure_group(client: redis.Redis, stream: str, group: str, start: str = "0") -> None:
    """Create ``group`` on ``stream`` (and the stream) unless it exists.

    ``start="0"``: a new group reads the stream from its first entry still in Redis.
    """
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
        log.info("created consumer group %s on %s from %s", group, stream, start)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def backlog(client: redis.Redis) -> dict[str, int]:
    """Per ``stream/group``: entries handed out but not acked, plus one if the group has
    not been handed the stream's newest entry yet (0 everywhere: the workers are idle)."""
    out: dict[str, int] = {}
    for key in client.scan_iter(_type="STREAM", count=1000):
        stream = _s(key)
        groups: Any = client.xinfo_groups(stream)
        if not groups:
            continue
        info: Any = client.xinfo_stream(stream)
        last = _s(info["last-generated-id"])
        for g in groups:
            behind = _s(g["last-delivered-id"]) != last and info["length"] > 0
            out[f"{stream}/{_s(g['name'])}"] = int(g["pending"]) + int(behind)
    return out


def dead_letter_fields(entry: Entry, group: str, reason: str) -> dict[str, str]:
    """What a dead letter records: where the entry came from, why, and the entry itself."""
    return {"stream": entry.stream, "id": entry.id, "group": group, "reason": reason[:2000],
            "fields": json.dumps(entry.text()), "at": f"{time.time():.3f}"}


@dataclass
class Consumer:
    """One member of ``group`` on ``stream`` (on each of its ``partitions``), applying
    entries with ``handler``."""

    client: redis.Redis
    stream: str
    group: str
    handler: Handler
    dead_letters: str
    name: str = field(default_factory=consumer_name)
    partitions: int = 1
    batch: int = 500
    block_ms: int = 100
    claim_idle_ms: int = 30_000
    claim_every_seconds: float = 5.0
    retry_seconds: float = 1.0
    _next_claim: float = field(default=0.0, init=False, repr=False)
    _ready: bool = field(default=False, init=False, repr=False)
    # Partitions whose own pending entries are read again first (after a Retry).
    _backlog: set[str] = field(default_factory=set, init=False, repr=False)
    # Partitions whose commit failed midway: on a cluster some slots' effects of their
    # pending entries may be applied (fenced), so those entries are applied one by one.
    _unsure: set[str] = field(default_factory=set, init=False, repr=False)
    _warned_slots: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = partition_keys(self.stream, self.partitions)
        self._cluster = is_cluster(self.client)
        self._applied = ENTRIES.labels(self.stream, self.group)
        self._dead = DEAD_LETTERS.labels(self.stream, self.group)
        self._claimed = CLAIMED.labels(self.stream, self.group)
        self._pending = PENDING.labels(self.stream, self.group)

    # -- one round -----------------------------------------------------------------------

    def poll(self, wait: bool = True) -> int:
        """Take over stale pending entries (every ``claim_every_seconds``), then read new
        ones (waiting up to ``block_ms`` when ``wait``); apply them. Returns how many."""
        if not self._ready:
            for key in self.keys:
                ensure_group(self.client, key, self.group)
            self._ready = True
        done = 0
        now = time.monotonic()
        for key in sorted(self._backlog):
            own: Any = self.client.xreadgroup(self.group, self.name, {key: "0"},
                                              count=self.batch)
            entries = [Entry(key, _s(i), f, delivered=2)
                       for _, items in own or [] for i, f in items if f is not None]
            if not entries:
                self._backlog.discard(key)
                self._unsure.discard(key)
            done += self._process(entries, unsure=key in self._unsure)
        if now >= self._next_claim:
            self._next_claim = now + self.claim_every_seconds
            for key in self.keys:
                claimed, unsure = self._claim(key)
                done += self._process(claimed, unsure=unsure)
        # One stream per XREADGROUP: a cluster serves one slot per command. With several
        # partitions none blocks (each would hold the others up); an idle round waits once.
        block = self.block_ms if wait and len(self.keys) == 1 else None
        new = 0
        for key in self.keys:
            reply: Any = self.client.xreadgroup(self.group, self.name, {key: ">"},
                                                count=self.batch, block=block)
            entries = [Entry(key, _s(i), f) for _, items in reply or [] for i, f in items
                       if f is not None]
            new += self._process(entries)
        if wait and not new and len(self.keys) > 1:
            time.sleep(self.block_ms / 1000)
        return done + new

    def drain(self, max_rounds: int = 10_000) -> int:
        """Poll without waiting until nothing new is left (tests, catch-up at start)."""
        total = 0
        for _ in range(max_rounds):
            n = self.poll(wait=False)
            total += n
            if n == 0:
                break
        return total

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; Redis outages are logged once and retried."""
        failing = False
        while not stop.is_set():
            try:
                self.poll()
                if failing:
                    log.info("%s/%s: redis reachable again", self.stream, self.group)
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("%s/%s: redis unavailable (%s); retrying", self.stream,
                                self.group, exc)
                failing = True
                self._ready = False
                stop.wait(0.5)
            except Retry as exc:
                if not failing:
                    log.warning("%s/%s: %s; the entries stay pending and are retried every "
                                "%gs", self.stream, self.group, exc, self.retry_seconds)
                failing = True
                stop.wait(self.retry_seconds)

    def pending(self) -> int:
        """Entries delivered to the group and not acknowledged yet."""
        count = 0
        for key in self.keys:
            info: Any = self.client.xpending(key, self.group)
            count += int(info["pending"]) if info else 0
        self._pending.set(count)
        return count

    # -- internals -----------------------------------------------------------------------

    def _claim(self, key: str) -> tuple[list[Entry], bool]:
        """Pending entries of partition ``key`` idle longer than ``claim_idle_ms``, now
        owned by this consumer; and whether they may have been applied in part (on a
        cluster: another consumer's, or this one's after a failed commit)."""
        own: set[str] | None = None
        if self._cluster:
            # Who held them: this consumer's own (a Retry's) were not applied at all.
            idle: Any = self.client.xpending_range(key, self.group, min="-", max="+",
                                                   count=self.batch, idle=self.claim_idle_ms)
            if all(_s(p["consumer"]) == self.name for p in idle) and key not in self._unsure:
                own = {_s(p["message_id"]) for p in idle}
        out: list[Entry] = []
        cursor = "0-0"
        while True:
            reply: Any = self.client.xautoclaim(key, self.group, self.name,
                                                min_idle_time=self.claim_idle_ms,
                                                start_id=cursor, count=self.batch)
            cursor = _s(reply[0])
            claimed = reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            for i, fields in claimed:
                if fields is None:  # trimmed while pending: nothing left to apply
                    continue
                out.append(Entry(key, _s(i), fields, delivered=2))
            if deleted:
                # Entries trimmed while pending (Redis 7 reports and drops them itself).
                log.warning("%s/%s: %d pending entries were trimmed before being applied",
                            self.stream, self.group, len(deleted))
            if cursor == "0-0" or len(out) >= self.batch:
                break
        if out:
            self._claimed.inc(len(out))
            log.info("%s/%s: took over %d pending entries of a stopped consumer",
                     self.stream, self.group, len(out))
        unsure = self._cluster and (own is None or any(e.id not in own for e in out))
        return out, unsure

    def _process(self, entries: list[Entry], unsure: bool = False) -> int:
        """Apply ``entries`` (of one partition) and commit effects, acks and dead letters
        in one transaction (on a cluster: see the module's note).

        If the handler raises on the batch, its transaction is dropped (nothing of it was
        sent) and the entries are applied one at a time, so only the entry at fault goes
        to the dead letters. Handlers with effects outside the transaction (in memory)
        should catch per entry and return the rejected ones instead of raising.
        On a cluster, entries that may have been applied in part (``unsure``: handed out
        again after a failed commit or a stopped consumer) are applied one at a time: each
        one's effects in other slots are skipped where its fence shows them applied.
        """
        if not entries:
            return 0
        if unsure and self._cluster and len(entries) > 1:
            return sum(self._process([e], unsure=True) for e in entries)
        key = entries[0].stream
        try:
            tx = self._transaction()
            rejected = self.handler(entries, tx) or {}
        except (redis.RedisError, Retry):
            self._backlog.add(key)
            raise
        except Exception:  # noqa: BLE001 - isolate the entry at fault
            for entry in entries:
                tx = self._transaction()
                try:
                    one = self.handler([entry], tx) or {}
                except (redis.RedisError, Retry):
                    self._backlog.add(key)
                    raise
                except Exception as exc:  # noqa: BLE001 - becomes the dead letter's reason
                    tx = self._transaction()
                    one = {entry.id: f"{type(exc).__name__}: {exc}"}
                self._commit(tx, [entry], one, unsure)
            return len(entries)
        try:
            self._commit(tx, entries, rejected, unsure)
        except redis.RedisError:
            # On a cluster some slots' effects may be applied (and fenced, see
            # _cluster_commit): the entries are read again, one at a time.
            self._backlog.add(key)
            self._unsure.add(key)
            raise
        return len(entries)

    def _transaction(self) -> Any:
        # On a cluster the handler's commands are collected first (a plain pipeline) and
        # sent as one MULTI only if they share a slot with the stream (see _commit).
        return self.client.pipeline(transaction=not self._cluster)

    def _commit(self, tx: Any, entries: list[Entry], rejected: Mapping[str, str],
                unsure: bool = False) -> None:
        dead = [(e, rejected[e.id]) for e in entries if e.id in rejected]
        key = entries[0].stream
        letters = [dict(dead_letter_fields(e, self.group, reason)) for e, reason in dead]
        fences: list[str] = []
        if self._cluster:
            tx, fences = self._cluster_commit(tx, entries, letters, unsure)
        for letter in letters:
            # Unbounded here on purpose: the archiver bounds it (archive, then trim).
            tx.xadd(self.dead_letters, letter)
        tx.xack(key, self.group, *[e.id for e in entries])
        tx.execute()
        if fences:
            # Acked: the batch is never handed out again, its fence is not needed. (A
            # crash before this leaves the token to the fence's age trim.)
            cleanup = self.client.pipeline(transaction=False)
            for fence in fences:
                cleanup.zrem(fence, _batch_token(entries))
            cleanup.execute()
        self._applied.inc(len(entries) - len(dead))
        for entry, reason in dead:
            self._dead.inc()
            log.warning("%s/%s: entry %s sent to %s: %s", self.stream, self.group,
                        entry.id, self.dead_letters, reason)

    def _cluster_commit(self, effects: Any, entries: list[Entry],
                        letters: list[dict[str, str]], unsure: bool) -> tuple[Any, list[str]]:
        """On a cluster: the transaction the acks (and dead ``letters``) go in, and the
        fences written. Effects in the stream's slot join that transaction. Effects in
        each other slot are applied first, in one MULTI per slot together with the
        batch's token in that slot's fence (a sorted set per stream and group), so each
        slot's share of an entry is applied once: an entry handed out again after a crash
        (before its ack) is applied alone, and the slots whose fence holds it are skipped.
        """
        client: Any = self.client
        key = entries[0].stream
        stream_slot = client.keyslot(key)
        by_slot: dict[int, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        for args, options in _queued(effects):
            slot = client.determine_slot(*args)
            by_slot.setdefault(stream_slot if slot is None else slot, []).append((args, options))
        tx = client.pipeline(transaction=True)
        for args, options in by_slot.pop(stream_slot, []):
            tx.pipeline_execute_command(*args, **options)
        if letters and client.keyslot(self.dead_letters) != stream_slot:
            letters_apart = client.pipeline(transaction=False)
            for letter in letters:  # unbounded on purpose, as above: archive, then trim
                letters_apart.xadd(self.dead_letters, letter)
            letters_apart.execute()
            letters.clear()
        if not by_slot:
            return tx, []
        if not self._warned_slots:
            self._warned_slots = True
            log.info("%s/%s: effects span %d cluster slots: each applied in its own MULTI "
                     "with a fence, before the ack", self.stream, self.group, len(by_slot) + 1)
        token, now = _batch_token(entries), time.time()
        again = unsure and len(entries) == 1  # applied alone (see _process)
        fences = []
        for slot, commands in sorted(by_slot.items()):
            fence = f"{{{slot_tag(slot)}}}:mlsuite:applied:{self.stream}:{self.group}"
            fences.append(fence)
            if again and self._fenced(fence, entries[0]):
                continue
            part = client.pipeline(transaction=True)
            for args, options in commands:
                part.pipeline_execute_command(*args, **options)
            part.zadd(fence, {token: now})
            part.zremrangebyscore(fence, "-inf", now - FENCE_KEEP_SECONDS)
            part.execute()
        return tx, fences

    def _fenced(self, fence: str, entry: Entry) -> bool:
        """Whether ``entry``'s effects in the slot of ``fence`` were applied already."""
        prefix = entry.stream + "|"
        tokens: Any = self.client.zrange(fence, 0, -1)  # the batches in flight: a few
        for raw in tokens:
            token = _s(raw)
            if token.startswith(prefix) and entry.id in token[len(prefix):].split(","):
                return True
        return False


# How long a fence keeps the token of a batch whose cleanup a crash skipped (the batch
# was acked: it is never handed out again, the token only takes room).
FENCE_KEEP_SECONDS = 7 * 86400
_SLOT_TAGS: dict[int, str] = {}
_slot_scan = [0]


def slot_tag(slot: int) -> str:
    """A short hash tag of cluster ``slot``: a key ``{tag}:...`` lives in that slot (one
    canonical tag per slot, the same in every process).

    >>> from redis.crc import key_slot
    >>> key_slot(("{" + slot_tag(12539) + "}:x").encode())
    12539
    """
    from redis.crc import key_slot

    # The tags are found by counting up and filling the table as we go: each slot's
    # first number, so every process agrees (~110k tries fill all 16384 slots).
    while slot not in _SLOT_TAGS:
        tag = str(_slot_scan[0])
        _SLOT_TAGS.setdefault(key_slot(tag.encode()), tag)
        _slot_scan[0] += 1
    return _SLOT_TAGS[slot]


def _batch_token(entries: Sequence[Entry]) -> str:
    """What a fence records of a batch: its partition and entry ids."""
    return entries[0].stream + "|" + ",".join(e.id for e in entries)


def _queued(pipe: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The commands queued in a cluster pipeline, as (args, options). redis-py keeps them
    in its execution strategy; there is no public accessor."""
    queue = pipe._execution_strategy.command_queue
    return [(c.args, c.options) for c in queue]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
