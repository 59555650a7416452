"""Retention: keep every stream to a configured age and length, archiving before trimming.

Producers append without ``MAXLEN`` (Redis's own approximate trimming would drop
entries nobody archived); the worker's ``Archiver`` bounds each stream instead:

1. read the oldest entries that are past the retention age, or beyond the length cap;
2. append them to the lake (``mlplatform.lake``; fsynced before anything is deleted)
   and record the archive cursor (the last archived id) in Redis;
3. trim the stream (``XTRIM MINID``) up to the cursor, but never past an entry some
   consumer group has not finished with (its oldest pending entry, or the first entry
   it has not been handed yet): what a group has not applied stays in Redis.

So the stream plus the lake is the complete history and nothing acknowledged is ever
dropped by trimming. One archiver per stream runs at a time (a ``Lease``), however many
workers run; a crash between steps 2 and 3 only repeats work (the lake drops duplicates).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Counter, Gauge

from mlplatform.lake import Lake, id_ms
from mlplatform.lease import Lease

__all__ = ["Archiver", "ArchiveResult", "next_id", "id_before"]

log = logging.getLogger(__name__)

ARCHIVED = Counter("mlsuite_stream_archived_total", "Stream entries appended to the lake",
                   ["stream"])
TRIMMED = Counter("mlsuite_stream_trimmed_total", "Stream entries trimmed after archiving",
                  ["stream"])
LENGTH = Gauge("mlsuite_stream_length", "Entries in a stream after the last retention run",
               ["stream"], multiprocess_mode="mostrecent")
OLDEST_AGE = Gauge("mlsuite_stream_oldest_age_seconds",
                   "Age of the oldest entry kept in a stream (alert when far past retention)",
                   ["stream"], multiprocess_mode="mostrecent")


def _key(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def next_id(stream_id: str) -> str:
    """The smallest id after ``stream_id`` (``XTRIM MINID`` keeps ids >= its argument).

    >>> next_id("1700000000000-7")
    '1700000000000-8'
    """
    ms, seq = _key(stream_id)
    return f"{ms}-{seq + 1}"


def id_before(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes before ``b``.

    >>> id_before("9-0", "10-0"), id_before("10-1", "10-0")
    (True, False)
    """
    return _key(a) < _key(b)


@dataclass(frozen=True)
class ArchiveResult:
    """What one retention run did to one stream."""

    stream: str
    archived: int
    trimmed: int
    length: int
    cursor: str
    held_by: str | None = None  # a consumer group that kept entries from being trimmed
    skipped: bool = False  # another worker holds this stream's archiver lease


class Archiver:
    """Archives and trims one stream: ``run_once()`` from the worker's periodic loop.

    Reads go ``chunk`` entries at a time: Redis answers each read in one go, and a reply
    of thousands of decision records would hold it (and every request) for milliseconds.
    """

    def __init__(self, client: redis.Redis, lake: Lake, stream: str, *,
                 retention_seconds: float, maxlen: int = 0, chunk: int = 500,
                 max_per_run: int = 200_000) -> None:
        self.client = client
        self.lake = lake
        self.stream = stream
        self.retention_seconds = retention_seconds
        self.maxlen = maxlen
        self.chunk = chunk
        self.max_per_run = max_per_run
        self.cursor_key = f"mlsuite:lake:cursor:{stream}"
        self.lease = Lease(client, f"mlsuite:lake:lease:{stream}", ttl_seconds=120)
        self._archived = ARCHIVED.labels(stream)
        self._trimmed = TRIMMED.labels(stream)
        self._length = LENGTH.labels(stream)
        self._oldest = OLDEST_AGE.labels(stream)

    def cursor(self) -> str:
        raw: Any = self.client.get(self.cursor_key)
        return raw.decode() if raw else "0-0"

    def run_once(self, now: float | None = None) -> ArchiveResult:
        """Archive what is past retention (age or length), then trim what is safe to."""
        if not self.lease.acquire():
            return ArchiveResult(self.stream, 0, 0, 0, self.cursor(), skipped=True)
        try:
            return self._run(time.time() if now is None else now)
        finally:
            self.lease.release()

    def _run(self, now: float) -> ArchiveResult:
        cursor = self.cursor()
        length = int(self.client.xlen(self.stream))  # type: ignore[arg-type]
        age_cut_ms = int((now - self.retention_seconds) * 1000)
        excess = max(0, length - self.maxlen) if self.maxlen else 0
        position = 0  # entries from the start of the stream looked at so far
        archived = 0
        start = "-"
        # Only entries that are due are read: past retention (an id range that ends at
        # the cut, so a stream with nothing due costs one empty reply), then the oldest
        # beyond the length cap.
        # (last id to read, how many from the start at most): past retention, then the
        # oldest beyond the length cap.
        phases: list[tuple[str, int | None]] = [("+", excess)]
        if age_cut_ms > 0:
            phases.insert(0, (str(age_cut_ms - 1), None))
        for end, limit in phases:
            while archived < self.max_per_run:
                count = self.chunk if limit is None else min(self.chunk, limit - position)
                batch: Any = self.client.xrange(self.stream, start, end, count=count) \
                    if count > 0 else None
                if not batch:
                    break
                cursor, n = self._archive(batch, cursor)
                archived += n
                position += len(batch)
                start = "(" + _text(batch[-1][0])
        trimmed, held_by = self._trim(cursor) if cursor != "0-0" else (0, None)
        length = int(self.client.xlen(self.stream))  # type: ignore[arg-type]
        self._archived.inc(archived)
        self._trimmed.inc(trimmed)
        self._length.set(length)
        first: Any = self.client.xrange(self.stream, "-", "+", count=1)
        if first:
            oldest = id_ms(first[0][0]) / 1000
            self._oldest.set(max(0.0, now - oldest))
        else:
            self._oldest.set(0)
        if archived or trimmed:
            log.info("retention %s: archived %d, trimmed %d, %d left%s", self.stream, archived,
                     trimmed, length, f" (group {held_by} holds the rest)" if held_by else "")
        return ArchiveResult(self.stream, archived, trimmed, length, cursor, held_by)

    def _archive(self, batch: Any, cursor: str) -> tuple[str, int]:
        """Append the entries of ``batch`` after ``cursor`` to the lake, then move the
        cursor (the file is durable first); the new cursor and how many were written."""
        todo = [(_text(i), fields) for i, fields in batch if id_before(cursor, _text(i))]
        if not todo:  # archived by an earlier run, kept by a consumer group
            return cursor, 0
        self.lake.write(self.stream, todo)
        cursor = todo[-1][0]
        self.client.set(self.cursor_key, cursor)
        return cursor, len(todo)

    def _trim(self, cursor: str) -> tuple[int, str | None]:
        """Trim up to the archive cursor, never past what a consumer group still needs."""
        minid = next_id(cursor)
        held_by = None
        for group, floor in self._group_floors().items():
            if id_before(floor, minid):
                minid, held_by = floor, group
        # Exact trimming: "~" would keep whole radix-tree nodes, i.e. up to ~100 extra entries.
        trimmed = int(self.client.xtrim(self.stream, minid=minid,  # type: ignore[arg-type]
                                        approximate=False))
        return trimmed, held_by

    def _group_floors(self) -> dict[str, str]:
        """Per consumer group: the first id it may still need (oldest pending, else the
        first entry after the last one it was handed)."""
        try:
            groups: Any = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no such stream
            return {}
        floors = {}
        for g in groups:
            name = _text(g["name"])
            floor = next_id(_text(g["last-delivered-id"]))
            if int(g.get("pending", 0)):
                summary: Any = self.client.xpending(self.stream, name)
                oldest = summary.get("min") if summary else None
                if oldest:
                    floor = min(floor, _text(oldest), key=_key)
            floors[name] = floor
        return floors


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
