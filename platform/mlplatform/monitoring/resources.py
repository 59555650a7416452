"""Resource metrics read when /metrics is scraped: CPU and memory per process, and Redis.

``ProcessCollector`` reports ``mlsuite_process_cpu_seconds`` and
``mlsuite_process_resident_memory_bytes`` for every live process of the service, with
``service`` and ``pid`` labels (the shape prometheus-client's multiprocess "all" gauges
give). Why the scraping process reads them all with psutil, instead of each process
writing its own values from a sampling thread: granian's workers run the app in
processes it forks and restarts on its own, with no per-worker hook a thread could be
started from reliably, and a sampled value is up to one period old. Reading
``/proc/<pid>`` at scrape time costs a few microseconds per process, is exact, and a
process that died is simply gone: nothing of it keeps counting.

Which processes: those that wrote into the service's multiprocess folder (every process
importing ``mlplatform.metrics`` marks itself there with its start time, the request
workers and the background worker alike), still alive, and started before their file
was last written (so a recycled pid is not mistaken for a dead worker). ``reap`` removes
the per-process gauge files of dead processes (``mark_process_dead``), so "liveall"
gauges stop showing them. Without a multiprocess folder (tests, the CLI) the collector
reports the current process.

``RedisCollector`` reports ``mlsuite_redis_up``, ``mlsuite_redis_used_memory_bytes``,
``mlsuite_redis_memory_limit_bytes`` (``redis_memory``), ``mlsuite_stream_length{stream}``
and ``mlsuite_stream_backlog{stream,group}``: one pipelined round trip (INFO memory, XLEN
and XINFO GROUPS per stream). When Redis does not answer the scrape still succeeds, with
``mlsuite_redis_up 0``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["ProcessCollector", "RedisCollector", "process_ids", "reap", "redis_memory"]

log = logging.getLogger(__name__)

# prometheus-client names its files <kind>[_<mode>]_<pid>.db.
_PID_FILE = re.compile(r"_(\d+)\.db$")
# Stream keys are found with SCAN (apps name them; the platform cannot import the names);
# the list is reused at least this long, so a scrape costs one round trip, not a keyspace
# walk, and at least 100 times as long as the last walk took (SCAN walks every key: about
# 2 s per million keys on the reference machine), so it costs Redis at most 1%.
STREAMS_REFRESH_SECONDS = 30.0
_SCAN_SHARE = 0.01
# Redis < 7 reports no group lag: the entries after the group's last delivered one are
# counted with XRANGE, up to this many; a longer lag is estimated (see _undelivered).
LAG_COUNT_CAP = 1000


def _live(pid: int, written: float) -> bool:
    try:
        # +1 s: create_time is rounded to clock ticks, mtime to the file system's grain.
        return bool(psutil.Process(pid).create_time() <= written + 1.0)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def redis_memory(client: Any) -> tuple[float, float]:
    """(used, limit) bytes of a Redis server, or of a cluster's nodes summed: INFO memory's
    ``used_memory``, and its ``maxmemory`` or, where none is set (0, the default), the
    machine's memory (``total_system_memory``): what Redis can use before its writes fail
    (maxmemory) or the machine runs out. INFO runs outside any pipeline: a cluster pipeline
    refuses it, and on a cluster it answers per node."""
    info: Any = client.info("memory")
    nodes = [info] if "used_memory" in info else [i for i in info.values() if isinstance(i, dict)]
    used = sum(float(n["used_memory"]) for n in nodes)
    limit = sum(float(n.get("maxmemory") or 0) or float(n.get("total_system_memory") or 0)
                for n in nodes)
    return used, limit


def process_ids(folder: Path | None) -> list[int]:
    """The live processes that wrote metrics into ``folder`` (this process without one)."""
    if folder is None:
        return [os.getpid()]
    latest: dict[int, float] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return [os.getpid()]
    for entry in entries:
        match = _PID_FILE.search(entry.name)
        if match is None:
            continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:  # reaped meanwhile
            continue
        pid = int(match.group(1))
        latest[pid] = max(latest.get(pid, 0.0), mtime)
    pids = {pid for pid, written in latest.items() if _live(pid, written)}
    pids.add(os.getpid())  # the scraping process, even before its first file
    return sorted(pids)


def reap(folder: Path) -> list[int]:
    """Remove the live-gauge files of processes that are gone; their pids."""
    dead = set()
    for path in folder.glob("gauge_live*_*.db"):
        match = _PID_FILE.search(path.name)
        if match is None:
            continue
        try:
            written = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if not _live(int(match.group(1)), written):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    return sorted(dead)


class ProcessCollector:
    """CPU seconds and resident memory of each live process of ``service`` (see module)."""

    def __init__(self, service: str, folder: Path | None) -> None:
        self.service = service
        self.folder = folder

    def collect(self) -> Iterator[Metric]:
        cpu = GaugeMetricFamily("mlsuite_process_cpu_seconds",
                                "CPU time (user + system) used by each process of the service",
                                labels=["service", "pid"])
        rss = GaugeMetricFamily("mlsuite_process_resident_memory_bytes",
                                "Resident memory of each process of the service",
                                labels=["service", "pid"])
        for pid in process_ids(self.folder):
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():  # one read of /proc/<pid>/stat for both values
                    times = proc.cpu_times()
                    memory = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # exited between the listing and now
            cpu.add_metric([self.service, str(pid)], times.user + times.system)
            rss.add_metric([self.service, str(pid)], float(memory))
        yield cpu
        yield rss


def _key(stream_id: Any) -> tuple[int, int]:
    ms, _, seq = _text(stream_id).partition("-")
    return int(ms), int(seq or 0)


def _undelivered(delivered: str, after: list[Any], oldest: list[Any], newest: list[Any],
                 size: int) -> int:
    """Entries after ``delivered`` (a group's last delivered id), from the first
    ``LAG_COUNT_CAP`` of them (``after``) and the stream's oldest and newest entries.

    Exact below the cap, or when the group has not reached the oldest entry kept (then
    all ``size`` entries are due); else the entries past the cap are estimated at the
    rate of the first ones (stream ids are milliseconds), within what the stream holds.

    >>> e = lambda ms: [(f"{ms}-0", {})]
    >>> _undelivered("0-0", [None] * 3, e(5), e(9), 3)  # fewer than the cap: counted
    3
    >>> _undelivered("0-0", [None] * 999 + e(1000), e(1), e(4000), 4000)  # not reached
    4000
    >>> _undelivered("500-0", [None] * 999 + e(1500), e(1), e(3000), 3000)  # 1 per ms
    2500
    """
    if len(after) < LAG_COUNT_CAP or not newest:
        return len(after)
    if not oldest or _key(oldest[0][0]) > _key(delivered):
        return size
    start, capped, end = (_key(i)[0] for i in (delivered, after[-1][0], newest[0][0]))
    rate = LAG_COUNT_CAP / max(capped - start, 1)
    return min(size, LAG_COUNT_CAP + round(rate * (end - capped)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCollector:
    """Redis memory, stream lengths and consumer-group backlogs (see module)."""

    names = frozenset({"mlsuite_redis_up", "mlsuite_redis_used_memory_bytes",
                       "mlsuite_stream_length", "mlsuite_stream_backlog"})

    def __init__(self, client: redis.Redis, *,
                 refresh_seconds: float = STREAMS_REFRESH_SECONDS) -> None:
        self.client = client
        self.refresh_seconds = refresh_seconds
        self._streams: list[str] = []
        self._listed_at = -float("inf")
        self._every = refresh_seconds
        self._failing = False

    def streams(self) -> list[str]:
        """The stream keys (SCAN, reused for ``refresh_seconds`` or longer, see above)."""
        now = time.monotonic()
        if now - self._listed_at >= self._every:
            self._streams = sorted(_text(k) for k in
                                   self.client.scan_iter(_type="STREAM", count=10_000))
            self._listed_at = time.monotonic()
            self._every = max(self.refresh_seconds, (self._listed_at - now) / _SCAN_SHARE)
        return self._streams

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mlsuite_redis_up",
                               "1 when Redis answered the last scrape, else 0")
        try:
            families = list(self._read())
        except redis.RedisError as exc:
            if not self._failing:  # once per outage, not once per scrape
                log.warning("metrics: redis unavailable (%s): mlsuite_redis_up 0", exc)
            self._failing = True
            self._listed_at = -float("inf")  # list the streams again once it is back
            up.add_metric([], 0.0)
            yield up
            return
        self._failing = False
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _read(self) -> Iterable[Metric]:
        streams = self.streams()
        used, limit = redis_memory(self.client)
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("PING")  # keeps the replies' layout: stream i at 1 + 2i
        for stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        # A stream deleted since it was listed answers an error: skipped, not fatal.
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        memory = GaugeMetricFamily("mlsuite_redis_used_memory_bytes",
                                   "Memory Redis uses (INFO memory used_memory)")
        memory.add_metric([], used)
        ceiling = GaugeMetricFamily(
            "mlsuite_redis_memory_limit_bytes",
            "Memory Redis may use: its maxmemory, or the machine's memory where none is set")
        ceiling.add_metric([], limit)
        length = GaugeMetricFamily("mlsuite_stream_length", "Entries in each Redis stream",
                                   labels=["stream"])
        backlog = GaugeMetricFamily(
            "mlsuite_stream_backlog",
            "Entries of a stream a consumer group has not finished: pending (delivered, not "
            f"acknowledged) + not yet delivered (on Redis < 7: exact up to {LAG_COUNT_CAP}, "
            "estimated from the entries' times above)",
            labels=["stream", "group"])
        lagging: list[tuple[str, str, int, str]] = []  # no lag reported (Redis < 7)
        sizes: dict[str, int] = {}
        for i, stream in enumerate(streams):
            n, groups = replies[1 + 2 * i], replies[2 + 2 * i]
            if isinstance(n, Exception) or isinstance(groups, Exception):
                continue
            length.add_metric([stream], float(n))
            sizes[stream] = int(n)
            for group in groups:
                name, pending = _text(group["name"]), int(group["pending"])
                lag = group.get("lag")
                if lag is not None:
                    backlog.add_metric([stream, name], float(pending + int(lag)))
                else:
                    lagging.append((stream, name, pending, _text(group["last-delivered-id"])))
        if lagging:
            pipe = self.client.pipeline(transaction=False)
            for stream, _, _, delivered in lagging:
                pipe.xrange(stream, f"({delivered}", "+", count=LAG_COUNT_CAP)
                pipe.xrange(stream, "-", "+", count=1)
                pipe.xrevrange(stream, "+", "-", count=1)
            found = pipe.execute(raise_on_error=False)
            for k, (stream, name, pending, delivered) in enumerate(lagging):
                after, oldest, newest = found[3 * k:3 * k + 3]
                if any(isinstance(r, Exception) for r in (after, oldest, newest)):
                    continue
                undelivered = _undelivered(delivered, after, oldest, newest,
                                           sizes.get(stream, 0))
                backlog.add_metric([stream, name], float(pending + undelivered))
        return [memory, ceiling, length, backlog]
