"""Live Redis streams for subscriptions: one reader per stream per process, fanned out.

A subscription never opens its own blocking ``XREAD``: each stream (the fraud decisions,
the shop events) has one tail task per process that reads new entries and hands each to
every subscriber's queue. A thousand open subscriptions cost one Redis connection per
stream, not a thousand.

A tail starts at the stream's newest entry when its first subscriber arrives (what
``XREAD ... $`` means, but fixed once with ``XREVRANGE``, so an entry added between two
reads is never skipped) and stops when the last one leaves. A subscriber whose queue is
full (a client too slow to read) loses the oldest entries, never blocks the others.

On a Redis Cluster the writers append to the stream's partitions (``{p<k>}:<stream>``,
``mlplatform.streams``), each in its own slot, so one XREAD cannot read them all: the tail
runs one blocking reader per partition, all feeding the same subscribers. Entries keep
their order within a partition; between partitions they arrive as they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Gauge

from mlplatform.redisdb import connect_async
from mlplatform.streams import stream_keys

__all__ = ["Entry", "StreamTails"]

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]  # stream id, fields

SUBSCRIBERS = Gauge(
    "mlsuite_graphql_subscribers", "Subscribers listening to a stream, by stream",
    ["stream"], multiprocess_mode="livesum",
)
QUEUE_SIZE = 1000  # entries a slow subscriber may lag behind before it loses the oldest


class _Tail:
    def __init__(self, client: aioredis.Redis, stream: str, block_ms: int) -> None:
        self.client = client
        self.stream = stream
        self.keys = stream_keys(client, stream)  # its partitions on a cluster
        self.block_ms = block_ms
        self.queues: set[asyncio.Queue[Entry]] = set()
        self.task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    async def run(self) -> None:
        starts = [await self._newest(key) for key in self.keys]
        self.started.set()
        await asyncio.gather(*(self._follow(key, last) for key, last in zip(self.keys, starts)))

    async def _newest(self, key: str) -> str:
        """The id the tail of ``key`` starts after: its newest entry's now."""
        while True:
            try:
                newest = await self.client.xrevrange(key, count=1)
                return str(newest[0][0]) if newest else "0-0"
            except Exception as exc:  # noqa: BLE001 - retried: Redis may come back
                log.warning("graphql: cannot read stream %s, retrying: %s", key, exc)
                await asyncio.sleep(1.0)

    async def _follow(self, key: str, last: str) -> None:
        """Hand every entry of ``key`` after ``last`` to the subscribers, until cancelled."""
        while True:
            try:
                replies: Any = await self.client.xread({key: last}, block=self.block_ms,
                                                       count=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a Redis outage pauses, never ends, a tail
                log.warning("graphql: reading stream %s failed, retrying: %s", key, exc)
                await asyncio.sleep(1.0)
                continue
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    last = entry_id
                    for queue in self.queues:
                        if queue.full():
                            queue.get_nowait()
                        queue.put_nowait((entry_id, fields))


class StreamTails:
    """The stream readers of one process (created in the app's lifespan)."""

    def __init__(self, redis_url: str, *, block_ms: int = 5000) -> None:
        # Blocking reads hold a connection for block_ms: a socket timeout above that.
        self.client = connect_async(redis_url, decode_responses=True,
                                    socket_timeout=block_ms / 1000 + 5)
        self.block_ms = block_ms
        self._tails: dict[str, _Tail] = {}
        # Every tail task until it has ended, also those cancelled when their last
        # subscriber left: close() waits for them before it closes the connections.
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def subscribe(self, stream: str) -> AsyncIterator[asyncio.Queue[Entry]]:
        """A queue receiving every entry added to ``stream`` from now on."""
        tail = self._tails.get(stream)
        if tail is None:
            tail = self._tails[stream] = _Tail(self.client, stream, self.block_ms)
            tail.task = asyncio.create_task(tail.run(), name=f"tail {stream}")
            self._tasks.add(tail.task)
            tail.task.add_done_callback(self._tasks.discard)
        queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_SIZE)
        tail.queues.add(queue)
        gauge = SUBSCRIBERS.labels(stream)
        try:
            await tail.started.wait()
            gauge.inc()
            try:
                yield queue
            finally:
                gauge.dec()
        finally:
            tail.queues.discard(queue)
            if not tail.queues and self._tails.get(stream) is tail:
                del self._tails[stream]
                if tail.task is not None:
                    tail.task.cancel()

    async def ping(self) -> Any:
        return await self.client.ping()

    async def close(self) -> None:
        """Stop every tail and wait until its reads have ended, then close the client: a
        connection closed under a blocking read still in flight could leave that read's
        task unable to finish, and the event loop's shutdown waiting for it forever."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._tails.clear()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.block_ms / 1000 + 5)
            if pending:
                log.warning("graphql: %d stream tail(s) still reading after cancel; closing "
                            "their connections anyway", len(pending))
        await self.client.aclose()
