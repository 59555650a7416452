"""Block and allow lists: kept in Redis, applied from a snapshot on every replica.

Redis is the system of record: one hash per list, ``<prefix>list:<name>``, field = the
listed value, value = JSON ``{"reason", "added_at", "expires_at"}``. Every change
(``put``, ``delete``) also publishes the whole set of lists as a new snapshot
(``<prefix>lists``, ``mlplatform.snapshots``) in the same MULTI transaction, under a
lock so that concurrent changes from several replicas never publish a stale set.
Every request worker follows that snapshot (a poll every ``follow_seconds``), so a
change made through any replica applies on all of them within a second, and scoring
never calls Redis for a list (``Lists.current()`` is one attribute read).

===================  ===========  ==========================================
list                 matches      used by
===================  ===========  ==========================================
blocked_cards        card_id      rules before the model (decline / review)
blocked_devices      device_id    rules before the model
blocked_merchants    merchant_id  rules before the model
blocked_countries    country      rules before the model
trusted_cards        card_id      rules after the model (override a decline)
trusted_merchants    merchant_id  rules after the model
===================  ===========  ==========================================

An entry may expire (``expires_at``): it stops matching then, and is dropped from
Redis at the next change.

>>> s = ListSet.decode(b'{"blocked_cards": {"c1": {"reason": "stolen", "added_at": 1.0}}}')
>>> s.match("blocked_cards", "c1", now=2.0).reason, s.match("blocked_cards", "c2", now=2.0)
('stolen', None)
>>> check_value("blocked_countries", "fr")
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: value of blocked_countries must be an ISO 3166 country code of 2 upper-case letters, got 'fr'
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import redis

from fraud import metrics
from fraud.pii import LIST_KINDS
from mlplatform.errors import BadRequest, Conflict, NotFound, Unavailable
from mlplatform.http import check_id
from mlplatform.openapi import Timestamp, convert, timestamp_seconds
from mlplatform.redisdb import is_cluster
from mlplatform.security.pii import Tokeniser
from mlplatform.snapshots import Follower, Snapshot, SnapshotStore

__all__ = ["LISTS", "ListSpec", "Entry", "ListEntryBody", "ListSet", "Lists", "check_list",
           "check_value", "parse_entry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListSpec:
    """What a list holds: the transaction field it matches, and block or allow."""

    field: str
    kind: str  # "block" (rules before the model) or "allow" (rules after it)


LISTS: dict[str, ListSpec] = {
    "blocked_cards": ListSpec("card_id", "block"),
    "blocked_devices": ListSpec("device_id", "block"),
    "blocked_merchants": ListSpec("merchant_id", "block"),
    "blocked_countries": ListSpec("country", "block"),
    "trusted_cards": ListSpec("card_id", "allow"),
    "trusted_merchants": ListSpec("merchant_id", "allow"),
}
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed value."""

    value: str
    reason: str
    added_at: float
    expires_at: float | None = None

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "added_at": self.added_at,
                "expires_at": self.expires_at}

    def to_json(self) -> str:
        return json.dumps({"reason": self.reason, "added_at": self.added_at,
                           "expires_at": self.expires_at})

    @classmethod
    def from_json(cls, value: str, text: str | bytes) -> Entry:
        d = json.loads(text)
        return cls(value, str(d.get("reason") or ""), float(d.get("added_at") or 0.0),
                   None if d.get("expires_at") is None else float(d["expires_at"]))


class ListSet:
    """An immutable view of every list (one snapshot): what the rules match against."""

    __slots__ = ("lists", "seq")

    def __init__(self, lists: Mapping[str, Mapping[str, Entry]], seq: int = 0) -> None:
        self.lists: dict[str, dict[str, Entry]] = {n: dict(lists.get(n, {})) for n in LISTS}
        self.seq = seq

    def current(self) -> ListSet:
        """Itself: a fixed ``ListSet`` is a list source for a ``Policy`` too."""
        return self

    def match(self, name: str, value: str | None, now: float) -> Entry | None:
        """The live entry of ``value`` on list ``name``, else None (a dict lookup)."""
        if value is None:
            return None
        entry = self.lists[name].get(value)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
            return None
        return entry

    def encode(self) -> bytes:
        return json.dumps({n: {v: json.loads(e.to_json()) for v, e in values.items()}
                           for n, values in self.lists.items()}).encode()

    @classmethod
    def decode(cls, body: bytes, seq: int = 0) -> ListSet:
        data = json.loads(body)
        return cls({n: {v: Entry.from_json(v, json.dumps(e)) for v, e in data.get(n, {}).items()}
                    for n in LISTS}, seq)


EMPTY = ListSet({})


def check_list(name: str) -> ListSpec:
    """The spec of list ``name``, or NotFound naming the lists there are."""
    spec = LISTS.get(name)
    if spec is None:
        raise NotFound(f"no list {name!r}; expected one of {', '.join(LISTS)}", field="list",
                       code="unknown_list")
    return spec


def check_value(name: str, value: Any) -> str:
    """``value`` checked for list ``name`` (an id, or a country code), else BadRequest."""
    spec = check_list(name)
    if spec.field == "country":
        if not isinstance(value, str) or not _COUNTRY.match(value):
            raise BadRequest(f"value of {name} must be an ISO 3166 country code of 2 upper-case "
                             f"letters, got {value!r}", field="value")
        return value
    try:
        return check_id(value, "value")
    except BadRequest as exc:
        raise BadRequest(f"value of {name} must be a {spec.field}: {exc.message}",
                         field="value") from None


class ListEntryBody(msgspec.Struct, forbid_unknown_fields=True):
    """Why a value is on a list, and until when (optional; none: for good)."""

    reason: Annotated[str, msgspec.Meta(max_length=_MAX_REASON)] | None = None
    expires_at: Timestamp | None = None


def parse_entry(value: str, body: Any, now: float) -> Entry:
    """An entry from an optional JSON body ``{"reason": ..., "expires_at": ...}``."""
    entry = ListEntryBody() if body is None else convert(body, ListEntryBody)
    expires: float | None = None
    if entry.expires_at is not None:
        expires = timestamp_seconds(entry.expires_at, "expires_at")
        if expires <= now:
            raise BadRequest(f"expires_at must be in the future, got {entry.expires_at!r}",
                             field="expires_at")
    return Entry(value, entry.reason or "", round(now, 3), expires)


class Lists:
    """The lists of one fraud deployment: changes go to Redis and a new snapshot; scoring
    reads ``current()``, the snapshot this process follows."""

    def __init__(self, client: redis.Redis, prefix: str, *, poll_seconds: float = 0.25,
                 max_values: int = 100_000, pii: Tokeniser | None = None) -> None:
        self.client = client
        # Card and device lists hold tokens, as transactions carry them (``fraud.pii``);
        # a token passed in (seen in a review case) stays as it is.
        self.pii = pii
        self.prefix = prefix
        self.max_values = max_values
        self.store = SnapshotStore(client, f"{prefix}lists")
        self.follower: Follower[ListSet] = Follower(
            self.store, lambda s: ListSet.decode(s.body, s.seq), poll_seconds=poll_seconds,
            name="fraud-lists", on_swap=self._swapped)

    def key(self, name: str) -> str:
        # On a Redis Cluster the lists take the snapshot key's name as hash tag (a key
        # ``{x}...`` hashes like ``x``), so a change and its snapshot stay one MULTI.
        if is_cluster(self.client):
            return f"{{{self.store.key}}}:list:{name}"
        return f"{self.prefix}list:{name}"

    # -- request path --------------------------------------------------------------------

    def current(self) -> ListSet:
        """The lists as of the latest snapshot this process has (no Redis call)."""
        return self.follower.get() or EMPTY

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Publish a snapshot if Redis holds lists but none (a lost snapshot key), then
        follow it."""
        try:
            if self.store.seq() == 0 and any(self.client.exists(self.key(n)) for n in LISTS):
                with self._lock():
                    self._publish(self._read_all(), [])
        except redis.RedisError as exc:
            log.warning("fraud lists: redis unavailable at start (%s)", exc)
        self.follower.start()

    def close(self) -> None:
        self.follower.stop()

    def _swapped(self, snapshot: Snapshot, lists: ListSet) -> None:
        log.info("fraud lists: version %d (%s)", snapshot.seq,
                 ", ".join(f"{n} {len(v)}" for n, v in lists.lists.items()))

    # -- the system of record --------------------------------------------------------------

    def all(self, now: float | None = None) -> dict[str, Any]:
        """Every list with its live values, from Redis (not the snapshot)."""
        now = time.time() if now is None else now
        lists = self._read_all()
        out: dict[str, Any] = {}
        for name, entries in lists.items():
            live = sorted((e for e in entries.values() if e.live(now)), key=lambda e: e.value)
            spec = LISTS[name]
            out[name] = {"field": spec.field, "kind": spec.kind, "count": len(live),
                         "values": [e.to_dict() for e in live]}
        return {"lists": out, "version": self.store.seq()}

    def put(self, name: str, value: Any, body: Any = None) -> tuple[Entry, bool]:
        """Add (or replace) ``value`` on list ``name``; the entry and whether it is new."""
        value = self._stored(name, check_value(name, value))
        now = time.time()
        entry = parse_entry(value, body, now)
        with self._lock():
            lists = self._read_all()
            held = lists[name].get(value)
            created = held is None or not held.live(now)
            live = sum(1 for e in lists[name].values() if e.live(now))
            if created and live >= self.max_values:
                raise Conflict(f"list {name} holds {live} values, the most allowed "
                               f"(MLSUITE_FRAUD_LIST_MAX_VALUES); delete some first",
                               field="list")
            lists[name][value] = entry
            self._publish(lists, [("put", name, entry)], now)
        metrics.LIST_CHANGES.labels(name, "put").inc()
        log.info("fraud lists: %s %s on %s (%s)", "added" if created else "updated", value, name,
                 entry.reason or "no reason given")
        return entry, created

    def delete(self, name: str, value: Any) -> Entry:
        """Remove ``value`` from list ``name`` (NotFound if it is not on it)."""
        value = self._stored(name, check_value(name, value))
        now = time.time()
        with self._lock():
            lists = self._read_all()
            held = lists[name].pop(value, None)
            if held is None or not held.live(now):
                raise NotFound(f"{value!r} is not on list {name}", field="value")
            self._publish(lists, [("delete", name, held)], now)
        metrics.LIST_CHANGES.labels(name, "delete").inc()
        log.info("fraud lists: removed %s from %s", value, name)
        return held

    def _stored(self, name: str, value: str) -> str:
        """``value`` as list ``name`` holds it: a card's or device's token."""
        kind = LIST_KINDS.get(LISTS[name].field)
        return value if kind is None or self.pii is None else self.pii.token(kind, value)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One list change at a time across replicas (each republishes every list)."""
        lock = self.client.lock(f"{self.prefix}lists:lock", timeout=10, blocking_timeout=5)
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}", dependency="redis") from exc
        if not acquired:
            raise Unavailable("another list change holds the lists lock; retry",
                              dependency="redis")
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # expired meanwhile: nothing to release
                pass

    def _read_all(self) -> dict[str, dict[str, Entry]]:
        pipe = self.client.pipeline(transaction=False)
        for name in LISTS:
            pipe.hgetall(self.key(name))
        out: dict[str, dict[str, Entry]] = {}
        for name, raw in zip(LISTS, pipe.execute()):
            entries: dict[str, Entry] = {}
            for v, text in raw.items():
                value = v.decode() if isinstance(v, bytes) else str(v)
                try:
                    entries[value] = Entry.from_json(value, text)
                except (ValueError, TypeError, AttributeError) as exc:
                    log.error("fraud lists: ignoring unreadable entry %s of %s: %s", value,
                              name, exc)
            out[name] = entries
        return out

    def _publish(self, lists: dict[str, dict[str, Entry]],
                 changes: list[tuple[str, str, Entry]], now: float | None = None) -> None:
        """Apply ``changes`` to Redis and publish ``lists`` (already changed) as the new
        snapshot, in one MULTI: replicas never see a snapshot Redis does not hold.
        Expired entries are dropped from both."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=True)
        for op, name, entry in changes:
            if op == "put":
                pipe.hset(self.key(name), entry.value, entry.to_json())
            else:
                pipe.hdel(self.key(name), entry.value)
        for name, entries in lists.items():
            expired = [v for v, e in entries.items() if not e.live(now)]
            if expired:
                pipe.hdel(self.key(name), *expired)
                for v in expired:
                    del entries[v]
        # The snapshot's layout is SnapshotStore.publish's (seq, meta, body, at), written
        # here inside the same transaction as the change itself.
        body = ListSet(lists).encode()
        meta = {n: len(v) for n, v in lists.items()}
        pipe.hincrby(self.store.key, "seq", 1)
        pipe.hset(self.store.key, mapping={"meta": json.dumps(meta), "body": body,
                                           "at": f"{now:.3f}"})
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}", dependency="redis") from exc
