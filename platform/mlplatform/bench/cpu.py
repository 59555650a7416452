"""Where a measurement's machine time went: the CPU each part of the stack spent per request.

On one machine the load generator, the servers, Redis and the background workers share
the CPUs, so an endpoint's peak is set by the sum of their costs per request, not by the
server's alone. ``CpuMeter`` reads the CPU time of each named process (with its children:
a server's workers) and of Redis at two moments of a measured window; ``per_request``
turns the difference into microseconds per request (and per item, for batches), with
what no named part used ("other": the kernel's own work, other programs) and how busy the
machine was.

Redis is read through ``INFO cpu``, so a remote server and every node of a cluster count
too; a Redis on another machine is not subtracted from this machine's time. Its figure
per item is also a ceiling: Redis runs commands on one core, so ``1e6 / us`` items/s is
the most one Redis server can take at that cost, whatever the number of replicas.

>>> a = CpuSnapshot(at=0.0, processes={"fraud": 1.0, "generator": 0.0}, redis=2.0,
...                 redis_local=True, busy=10.0, cores=2)
>>> b = CpuSnapshot(at=10.0, processes={"fraud": 11.0, "generator": 2.0}, redis=5.0,
...                 redis_local=True, busy=27.0, cores=2)
>>> cpu = per_request(a, b, requests_per_s=1000.0)
>>> cpu["us_per_request"]
{'fraud': 1000.0, 'generator': 200.0, 'redis': 300.0, 'other': 200.0}
>>> cpu["busy_cores"], cpu["redis_ceiling_per_s"]
(1.7, 3333.3)
>>> format_cpu("fraud.score", cpu)
'fraud.score: fraud 1,000, redis 300, other 200, generator 200 us/request; machine 170% of 200% busy; redis alone: at most 3,333 requests/s per Redis core'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil
import redis

__all__ = ["CpuMeter", "CpuSnapshot", "per_request", "format_cpu"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: the machine and the processes read at ``at``, Redis at
    ``redis_at`` (monotonic seconds; a round trip to a saturated Redis can take a while,
    so each source keeps its own time)."""

    at: float
    processes: dict[str, float]  # name -> the process's and its children's CPU seconds
    redis: float | None  # every Redis node's CPU seconds (None: not readable)
    redis_local: bool  # every node runs on this machine (its time is in ``busy``)
    busy: float  # the machine's busy CPU seconds, all cores
    cores: int
    redis_at: float | None = None  # None: read at ``at``


class CpuMeter:
    """Snapshots of the CPU used by ``processes`` (name -> pid) and the Redis behind
    ``client`` (a ``redis.Redis`` or ``RedisCluster``; None: no Redis).

    ``generator``: also count, as "generator", this process and its other descendants
    (the load generator's processes), leaving out the named processes' trees and a local
    Redis started from here."""

    def __init__(self, processes: Mapping[str, int], client: Any | None = None, *,
                 generator: bool = False) -> None:
        self._procs: dict[str, psutil.Process] = {}
        for name, pid in processes.items():
            try:
                self._procs[name] = psutil.Process(pid)
            except psutil.Error:
                log.warning("cpu meter: process %s (pid %d) is gone; not counted", name, pid)
        self._client = client
        self._self = psutil.Process() if generator else None
        self._local_redis: list[int] | None = None  # its pids here (None: not read yet)
        self._redis_local = False

    def snapshot(self) -> CpuSnapshot:
        at, busy = time.monotonic(), _machine_busy()
        named: dict[str, float] = {}
        seen: set[int] = set()
        for name, proc in self._procs.items():
            members = _members(proc)
            named[name] = _cpu(members)
            seen.update(m.pid for m in members)
        redis_cpu, local = self._redis()
        if self._self is not None:
            for pid in self._local_redis or ():  # a local Redis and its forks (a rewrite)
                try:
                    seen.update(m.pid for m in _members(psutil.Process(pid)))
                except psutil.Error:
                    pass
            named["generator"] = _cpu([m for m in _members(self._self) if m.pid not in seen])
        return CpuSnapshot(at=at, processes=named, redis=redis_cpu, redis_local=local,
                           busy=busy, cores=psutil.cpu_count() or 1,
                           redis_at=time.monotonic())

    def _redis(self) -> tuple[float | None, bool]:
        if self._client is None:
            return None, False
        try:
            infos = _node_infos(self._client)
        except redis.RedisError as exc:
            log.warning("cpu meter: redis INFO failed (%s); its CPU is not counted", exc)
            return None, False
        total = sum(float(i.get("used_cpu_sys", 0.0)) + float(i.get("used_cpu_user", 0.0))
                    for i in infos)
        if self._local_redis is None:
            pids = [int(i.get("process_id", 0)) for i in infos]
            self._local_redis = [pid for pid in pids if _is_local_redis(pid)]
            self._redis_local = len(self._local_redis) == len(pids)
        return total, self._redis_local


def _machine_busy() -> float:
    """The machine's busy CPU seconds: user, nice, system and interrupts. Not idle or
    iowait, nor steal (a hypervisor ran someone else), nor guest time, which Linux
    already counts in user and nice."""
    t = psutil.cpu_times()
    return (t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0)
            + getattr(t, "softirq", 0.0))


def _node_infos(client: Any) -> list[dict[str, Any]]:
    """``INFO server`` + ``INFO cpu`` of every node (one for a single server)."""
    from mlplatform.redisdb import is_cluster

    if not is_cluster(client):
        return [{**client.info("server"), **client.info("cpu")}]
    servers = client.info("server", target_nodes=client.ALL_NODES)
    cpus = client.info("cpu", target_nodes=client.ALL_NODES)
    return [{**servers[node], **cpus[node]} for node in cpus]


def _is_local_redis(pid: int) -> bool:
    try:
        return pid > 0 and "redis" in psutil.Process(pid).name()
    except psutil.Error:
        return False


def _members(proc: psutil.Process) -> list[psutil.Process]:
    """``proc`` and its live descendants (a server's worker processes)."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu(members: list[psutil.Process]) -> float:
    """CPU seconds of ``members``: the live ones read directly, the exited ones through
    their parent's children times."""
    total = 0.0
    for member in members:
        try:
            t = member.cpu_times()
        except psutil.Error:  # exited between the listing and the read
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def per_request(a: CpuSnapshot, b: CpuSnapshot, *, requests_per_s: float,
                items_per_request: int = 1) -> dict[str, Any]:
    """The CPU each part spent per request between ``a`` and ``b``, in microseconds.

    Each part's rate (CPU seconds per second) over the rate of requests; "other" is the
    machine's busy time that no named part explains."""
    dt = b.at - a.at
    if dt <= 0 or requests_per_s <= 0:
        return {}
    rates: dict[str, float] = {}
    for name, used in b.processes.items():
        if name in a.processes:
            rates[name] = max(0.0, used - a.processes[name]) / dt
    if a.redis is not None and b.redis is not None:
        redis_dt = (b.redis_at or b.at) - (a.redis_at or a.at)
        rates["redis"] = max(0.0, b.redis - a.redis) / (redis_dt if redis_dt > 0 else dt)
    busy = max(0.0, b.busy - a.busy) / dt
    on_machine = sum(v for k, v in rates.items() if k != "redis" or b.redis_local)
    rates["other"] = max(0.0, busy - on_machine)
    per = {k: round(v / requests_per_s * 1e6, 1) for k, v in rates.items()}
    out: dict[str, Any] = {
        "window_s": round(dt, 2), "cores": b.cores, "busy_cores": round(busy, 2),
        "us_per_request": per, "redis_local": b.redis_local,
    }
    if items_per_request > 1:
        out["us_per_item"] = {k: round(v / items_per_request, 1) for k, v in per.items()}
    redis_us = per.get("redis")
    if redis_us:
        # Redis runs commands on one core: its cost per request caps the rate one server
        # (or one cluster node, for the keys it holds) can take.
        out["redis_ceiling_per_s"] = round(1e6 / redis_us * items_per_request, 1)
    return out


def format_cpu(name: str, cpu: Mapping[str, Any]) -> str:
    """One line for people: where an endpoint's machine time went, largest first (parts
    under 1% of the whole left out: the JSON has them); Redis's ceiling when it counts."""
    items = "us_per_item" in cpu
    per: Mapping[str, float] = cpu["us_per_item" if items else "us_per_request"]
    unit = "item" if items else "request"
    whole = sum(per.values()) or 1.0
    shown = sorted(((v, k) for k, v in per.items() if v >= 0.01 * whole), reverse=True)
    parts = ", ".join(f"{k} {v:,.0f}" for v, k in shown)
    text = (f"{name}: {parts} us/{unit}; machine {cpu['busy_cores']:.0%} of "
            f"{cpu['cores']:.0%} busy")
    ceiling = cpu.get("redis_ceiling_per_s")
    if ceiling and per.get("redis", 0.0) >= 0.05 * whole:
        text += f"; redis alone: at most {ceiling:,.0f} {unit}s/s per Redis core"
    return text
