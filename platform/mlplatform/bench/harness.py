"""``mlsuite bench``: start the stack, drive every endpoint, report.

For each endpoint, in order (the bare Flask baseline first: it is the ceiling any Flask
endpoint reaches on this machine and server):

1. **saturation**: a closed loop over ``connections`` keep-alive connections, after a
   warm-up, for ``duration`` seconds: the peak requests/s and the latency under it;
2. **half of peak**: an open loop at half that rate for ``duration`` seconds: the
   latency a service shows at a moderate load, measured from each request's scheduled
   send time.

One generator (``mlplatform.bench.loadgen``) drives every endpoint, so the ratios
between them are fair; it runs in its own process(es) on the same machine, taking CPU
from the servers as any local load generator would (its share is in the JSON).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.bench.cpu import CpuMeter, CpuSnapshot, format_cpu, per_request
from mlplatform.bench.loadgen import UNIQUE, LoadResult, Progress, run_load
from mlplatform.bench.payloads import NEEDS, Endpoint, endpoints_for
from mlplatform.bench.report import add_ratios, build_report, format_row, format_table, write_json
from mlplatform.config import Settings
from mlplatform.stack import Stack

__all__ = ["BenchOptions", "measure_endpoint", "run_bench"]


@dataclass(frozen=True)
class BenchOptions:
    """What ``mlsuite bench`` was asked to do."""

    services: tuple[str, ...]
    server: str
    workers: int
    threads: int
    duration: float
    warmup: float
    connections: int
    processes: int
    batch_size: int
    only: tuple[str, ...] = ()
    json_path: Path | None = None
    # Half-rate measurements per endpoint; the one with the median p99 is reported (a
    # shared 2-core machine's p99 swings from run to run; the median of several holds).
    half_rate_runs: int = 1
    progress: str = "bar"  # "bar" (a terminal), "lines" or "none"
    # "server": the stack's Redis (private unless MLSUITE_REDIS_URL); "cluster": that
    # pass, then the same endpoints again on a private three-master Redis Cluster.
    redis: str = "server"

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "workers": self.workers, "threads": self.threads,
                "duration_s": self.duration,
                "warmup_s": self.warmup, "connections": self.connections,
                "batch_size": self.batch_size, "services": list(self.services),
                "half_rate_runs": self.half_rate_runs, "redis": self.redis,
                "generator": {"kind": "mlplatform.bench.loadgen", "processes": self.processes}}


class _Bar:
    """A tqdm bar over one measurement's seconds, with the live rate and error count."""

    def __init__(self, label: str, seconds: float, mode: str, say: Callable[[str], None]) -> None:
        self.bar = None
        if mode == "lines":  # not a terminal: one line per measurement
            say(f"  {label}: {seconds:g}s ...")
        elif mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=round(seconds, 1), desc=label, unit="s", leave=False,
                            bar_format="{desc:<44} {bar:20} {n:4.0f}/{total:.0f}s {postfix}")
        self._last = (time.monotonic(), 0)

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        t0, n0 = self._last
        if now - t0 >= 0.5:
            rate = (p.responses - n0) / (now - t0)
            self._last = (now, p.responses)
            self.bar.set_postfix_str(f"{p.phase}: {rate:,.0f} req/s, {p.errors} errors",
                                     refresh=False)
        self.bar.n = min(p.elapsed, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def preflight(endpoint: Endpoint, host: str, port: int,
              headers: Mapping[str, str] | None = None) -> None:
    """Send the endpoint's first request once and refuse to measure a failing one: the load
    generator counts statuses only, and GraphQL answers its errors with a 200."""
    import http.client
    import json
    import secrets

    path, body = endpoint.requests[0]
    if body is not None:
        body = body.replace(UNIQUE.encode(), secrets.token_hex(8).encode())
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(endpoint.method, path, body,
                     {**(headers or {}), **({"Content-Type": "application/json"} if body else {})})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    answer = json.loads(raw) if raw[:1] in (b"{", b"[") else None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if not 200 <= response.status < 300 or errors:
        raise RuntimeError(f"{endpoint.name}: {endpoint.route} answered {response.status} "
                           f"{(errors or raw.decode(errors='replace'))!s:.300}; not measuring it")


def measure_endpoint(endpoint: Endpoint, host: str, port: int, opts: BenchOptions,
                     say: Callable[[str], None] = print,
                     headers: Mapping[str, str] | None = None,
                     meter: CpuMeter | None = None) -> dict[str, Any]:
    """Saturation, then half of its peak: one report row (``headers``: the API key;
    ``meter``: the stack's processes, read over the saturation window for the CPU each
    spent per request, in ``saturation.cpu``)."""
    preflight(endpoint, host, port, headers)
    target = endpoint.target(host, port, headers)
    bar = _Bar(f"{endpoint.name} saturation", opts.warmup + opts.duration, opts.progress, say)
    marks: dict[str, CpuSnapshot] = {}

    def progress(p: Progress) -> None:
        # The measured window opens at "measure" and closes at "drain" (called five times
        # a second: the snapshots' own times are used, so the rates stay exact).
        if meter is not None and p.phase in ("measure", "drain") and p.phase not in marks:
            marks[p.phase] = meter.snapshot()
        bar(p)

    try:
        peak = run_load(target, connections=opts.connections, duration=opts.duration,
                        warmup=opts.warmup, processes=opts.processes, progress=progress)
    finally:
        bar.close()
    row: dict[str, Any] = {
        "name": endpoint.name, "service": endpoint.service, "route": endpoint.route,
        "unit": endpoint.unit, "items_per_request": endpoint.items_per_request,
        "saturation": peak.summary(), "half_rate": None,
    }
    if meter is not None and "measure" in marks:
        end = marks.get("drain") or meter.snapshot()
        cpu = per_request(marks["measure"], end, requests_per_s=peak.rps,
                          items_per_request=endpoint.items_per_request)
        if cpu:
            row["saturation"]["cpu"] = cpu
    if peak.rps > 0:
        rate = peak.rps / 2
        warm = min(opts.warmup, 1.0)
        runs: list[dict[str, Any]] = []
        for i in range(opts.half_rate_runs):
            label = f"{endpoint.name} at {rate:,.0f} req/s"
            if opts.half_rate_runs > 1:
                label += f" ({i + 1}/{opts.half_rate_runs})"
            bar = _Bar(label, warm + opts.duration, opts.progress, say)
            try:
                half: LoadResult = run_load(target, connections=opts.connections,
                                            duration=opts.duration, warmup=warm, rate=rate,
                                            processes=opts.processes, progress=bar)
            finally:
                bar.close()
            runs.append(half.summary())
        ranked = sorted(runs, key=lambda r: r["p99_ms"])
        row["half_rate"] = dict(ranked[(len(ranked) - 1) // 2])
        if len(runs) > 1:
            row["half_rate"]["runs_p99_ms"] = [r["p99_ms"] for r in runs]
            row["half_rate"]["errors"] = sum(r["errors"] for r in runs)
    return row


def _wait_for_idle_workers(stack: Stack, say: Callable[[str], None],
                           timeout: float = 120.0) -> None:
    """Let the background workers finish what the previous endpoint queued (e.g. the
    events it posted) before measuring the next: the bench measures request paths, and
    on one machine a worker catching up takes the CPU they would get."""
    from mlplatform.redisdb import connect
    from mlplatform.streams import backlog

    if not stack.settings.redis_url:
        return
    client = connect(stack.settings.redis_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            left = {k: v for k, v in backlog(client).items() if v}
            if not left:
                waited = time.monotonic() - started
                if waited > 1:
                    say(f"  (waited {waited:.0f}s for the workers to finish their backlog)")
                return
            time.sleep(0.5)
        say(f"  warning: workers still behind after {timeout:.0f}s: {left}")
    finally:
        client.close()


def _run_pass(settings: Settings, opts: BenchOptions, say: Callable[[str], None],
              rows: list[dict[str, Any]], suffix: str = "") -> None:
    """Start the stack on ``settings``' Redis and measure every endpoint into ``rows``;
    a ``suffix`` pass (another Redis) leaves out the baseline, which does not touch it."""
    # Services measured, and those they need running behind them (GraphQL's upstreams).
    from mlplatform.redisdb import connect

    needed = [n for s in opts.services for n in NEEDS.get(s, ()) if n not in opts.services]
    with Stack(settings, [*needed, *opts.services], server=opts.server, workers=opts.workers,
               name="bench", say=say) as stack:
        endpoints = endpoints_for(opts.services, stack.settings.data_dir,
                                  batch_size=opts.batch_size, seed=settings.seed)
        if opts.only:
            endpoints = [e for e in endpoints if e.name == "baseline.ping"
                         or any(o in e.name for o in opts.only)]
        if suffix:
            endpoints = [e for e in endpoints if e.service != "baseline"]
        say("")
        client = connect(stack.settings.redis_url) if stack.settings.redis_url else None
        try:
            for endpoint in endpoints:
                _wait_for_idle_workers(stack, say)
                # The generator is this process's other children, measured over the
                # same window (its own figure spans its warm-up and drain too).
                meter = CpuMeter(stack.processes(), client, generator=True)
                row = measure_endpoint(endpoint, "127.0.0.1", stack.ports[endpoint.service],
                                       opts, say, stack.auth_headers, meter)
                row["name"] += suffix
                rows.append(row)
                dead = [s for s in opts.services if s not in stack.alive()]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited during the bench")
                add_ratios(rows)
                say(format_row(row))
                if row["saturation"].get("cpu"):
                    say("    CPU " + format_cpu(row["name"], row["saturation"]["cpu"]))
        finally:
            if client is not None:
                client.close()


def run_bench(settings: Settings, opts: BenchOptions, say: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Everything ``mlsuite bench`` does; returns the report (also written as JSON).

    With ``opts.redis == "cluster"`` the endpoints are measured twice in one run: on the
    stack's Redis, then on a private ``EmbeddedCluster`` (rows named ``<name>@cluster``,
    their ratio to the same baseline), so the two figures share the machine's state."""
    loadavg = os.getloadavg() if hasattr(os, "getloadavg") else None
    settings = settings.with_(threads=opts.threads)
    rows: list[dict[str, Any]] = []
    _run_pass(settings, opts, say, rows)
    if opts.redis == "cluster":
        import tempfile

        from mlplatform.redisdb import EmbeddedCluster

        with tempfile.TemporaryDirectory(prefix="mlsuite-bench-cluster-") as folder, \
                EmbeddedCluster(Path(folder)) as cluster:
            say(f"\nredis: private three-master cluster {cluster.url}")
            _run_pass(settings.with_(redis_url=cluster.url), opts, say, rows,
                      suffix="@cluster")
    report = build_report(rows, settings=opts.as_dict(), loadavg_before=loadavg)
    if opts.json_path is not None:
        write_json(report, opts.json_path)
    say("")
    say(format_table(report))
    if opts.json_path is not None:
        say(f"\nJSON report: {opts.json_path}")
    return report
