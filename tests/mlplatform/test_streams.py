"""Consumer groups on a real Redis: exactly-once effects, reclaiming, dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis

from mlplatform.streams import Consumer, Entry, Retry, ensure_group

STREAM, GROUP, DEAD = "test:events", "counter", "test:dead"


def count_handler(entries: Sequence[Entry], tx: Any) -> dict[str, str]:
    """Adds each entry's n to a counter (in the transaction); rejects non-numbers."""
    rejected = {}
    for e in entries:
        text = e.get("n")
        if text is None or not text.lstrip("-").isdigit():
            rejected[e.id] = f"n must be an integer, got {text!r}"
            continue
        tx.incrby("test:total", int(text))
        tx.incr("test:applied")
    return rejected


def consumer(client: redis.Redis, name: str, handler: Any = count_handler,
             **kw: Any) -> Consumer:
    return Consumer(client, STREAM, GROUP, handler, DEAD, name=name, block_ms=10, **kw)


def add(client: redis.Redis, *values: object) -> list[bytes]:
    return [client.xadd(STREAM, {"n": str(v)}) for v in values]  # type: ignore[misc]


def applied(client: redis.Redis) -> tuple[int, int]:
    return int(client.get("test:total") or 0), int(client.get("test:applied") or 0)


def test_each_entry_is_applied_once_across_consumers(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, *range(1, 101))
    a, b = consumer(redis_client, "a", batch=7), consumer(redis_client, "b", batch=7)
    for _ in range(30):
        a.poll(wait=False)
        b.poll(wait=False)
    assert applied(redis_client) == (5050, 100)
    assert a.pending() == 0


def test_a_consumer_killed_mid_batch_leaves_entries_another_reclaims_once(
        redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, *range(1, 11))

    def dies(entries: Sequence[Entry], tx: Any) -> None:
        count_handler(entries, tx)  # effects queued in the transaction ...
        raise SystemExit("killed")  # ... and the process dies before EXEC and XACK

    with pytest.raises(SystemExit):
        consumer(redis_client, "doomed", dies, batch=4).poll(wait=False)
    assert applied(redis_client) == (0, 0)
    pending: Any = redis_client.xpending(STREAM, GROUP)
    assert pending["pending"] == 4

    survivor = consumer(redis_client, "survivor", claim_idle_ms=0)
    survivor.drain()
    assert applied(redis_client) == (55, 10)  # the 4 reclaimed + the 6 never handed out
    assert survivor.pending() == 0
    survivor.drain()  # nothing is applied twice
    assert applied(redis_client) == (55, 10)


def test_stale_entries_are_not_taken_from_a_live_consumer(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, 1, 2)
    redis_client.xreadgroup(GROUP, "busy", {STREAM: ">"}, count=2)
    other = consumer(redis_client, "other", claim_idle_ms=60_000)
    other.drain()
    assert applied(redis_client) == (0, 0)
    assert other.pending() == 2


@pytest.mark.parametrize("bad", ["twelve", "", "1.5"], ids=["word", "empty", "float"])
def test_a_rejected_entry_goes_to_dead_letters_and_the_rest_applies(
        redis_client: redis.Redis, bad: str) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, 1, bad, 3)
    c = consumer(redis_client, "c")
    c.drain()
    assert applied(redis_client) == (4, 2)
    [(dead_id, fields)] = redis_client.xrange(DEAD)  # type: ignore[misc]
    assert fields[b"stream"] == STREAM.encode()
    assert b"must be an integer" in fields[b"reason"]
    assert fields[b"group"] == GROUP.encode()
    assert c.pending() == 0


def test_an_entry_that_makes_the_handler_throw_is_isolated(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, 1, 2, 13, 4)

    def unlucky(entries: Sequence[Entry], tx: Any) -> None:
        for e in entries:
            if e.get("n") == "13":
                raise ValueError("thirteen is unlucky")
        count_handler(entries, tx)

    consumer(redis_client, "c", unlucky).drain()
    assert applied(redis_client) == (7, 3)
    [(_, fields)] = redis_client.xrange(DEAD)  # type: ignore[misc]
    assert fields[b"reason"] == b"ValueError: thirteen is unlucky"
    assert b'"n": "13"' in fields[b"fields"]


def test_a_redis_error_is_retried_not_dead_lettered(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, 5)
    calls = []

    def flaky(entries: Sequence[Entry], tx: Any) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset")
        count_handler(entries, tx)

    c = consumer(redis_client, "c", flaky, claim_idle_ms=0, claim_every_seconds=0)
    with pytest.raises(redis.ConnectionError):
        c.poll(wait=False)
    c.drain()
    assert applied(redis_client) == (5, 1)
    assert redis_client.xlen(DEAD) == 0


def test_retry_keeps_entries_pending_with_this_consumer(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, 1, 2)
    feast_up = False

    def needs_feast(entries: Sequence[Entry], tx: Any) -> None:
        if not feast_up:
            raise Retry("feast is unavailable")
        count_handler(entries, tx)

    c = consumer(redis_client, "c", needs_feast, claim_idle_ms=60_000)
    with pytest.raises(Retry):
        c.poll(wait=False)
    assert c.pending() == 2 and redis_client.xlen(DEAD) == 0
    feast_up = True
    c.drain()  # its own pending entries, re-read without waiting for a reclaim
    assert applied(redis_client) == (3, 2) and c.pending() == 0


def test_backlog_counts_what_groups_have_left(redis_client: redis.Redis) -> None:
    from mlplatform.streams import backlog

    ensure_group(redis_client, STREAM, GROUP)
    assert backlog(redis_client) == {f"{STREAM}/{GROUP}": 0}
    add(redis_client, 1, 2)
    assert backlog(redis_client)[f"{STREAM}/{GROUP}"] == 1  # not handed out yet
    redis_client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=2)
    assert backlog(redis_client)[f"{STREAM}/{GROUP}"] == 2  # handed out, not acked
    consumer(redis_client, "c", claim_idle_ms=0).drain()
    assert backlog(redis_client) == {f"{STREAM}/{GROUP}": 0}
