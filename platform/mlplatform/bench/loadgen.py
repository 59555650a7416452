"""Load generator: drive one HTTP endpoint, closed loop (saturation) or open loop (fixed rate).

Built on the standard library only, so ``mlsuite bench`` runs on a fresh machine. Each
generator process (``eventloop``) runs one non-blocking loop over raw keep-alive HTTP/1.1
connections, sends pre-encoded request bytes and reads just enough of each answer to
know its status and where it ends: ~20-30 us of CPU per request. On the 2-core reference
machine one such process drove the bare Flask baseline (granian, 2 workers) as hard as
wrk did (~10k req/s each, median of interleaved runs), where Locust's FastHttpUser
reached ~5-6k: the generator must not be the bottleneck it measures. A second process
only takes CPU from the servers.

- **Closed loop** (``rate=None``): every connection keeps one request in flight; the
  throughput is the server's capacity at that concurrency.
- **Open loop** (``rate=R``): requests are *scheduled* at a fixed rate whatever the server
  does, and each latency is measured from its scheduled send time, not from when a free
  connection sent it. A server that stalls therefore shows the stall in every request
  that queued behind it (no coordinated omission, as in wrk2 / HdrHistogram).

Every completed response's latency is kept (an exact sorted array, not a histogram), so
p50, p99 and p99.9 are exact. Errors are counted by kind: ``status 404`` ... for any
non-2xx answer, ``connect``, ``closed``, ``reset`` and ``timeout`` for transport failures.

>>> raw = build_request("POST", "/v1/x", "127.0.0.1:8000", b'{"a": 1}')
>>> raw.split(b"\\r\\n")[0], b"content-length: 8" in raw
(b'POST /v1/x HTTP/1.1', True)
>>> percentile([5, 1, 3, 2, 4], 50), percentile([5, 1, 3, 2, 4], 99)
(3, 5)
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlplatform.bench.eventloop import UNIQUE, Job

__all__ = [
    "UNIQUE",
    "LoadResult",
    "Progress",
    "Target",
    "build_request",
    "latency_summary",
    "percentile",
    "run_load",
]

_NS = 1_000_000_000


def build_request(method: str, path: str, host: str, body: bytes | None = None, *,
                  content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> bytes:
    """The raw bytes of one keep-alive HTTP/1.1 request (``headers``: an API key...)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", "user-agent: mlsuite-bench",
             "accept: application/json", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body is not None:
        lines += [f"content-type: {content_type}", f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass(frozen=True)
class Target:
    """What to send: a pool of raw requests to one server, cycled in order.

    ``items_per_request`` is how many items (users, transactions) one request carries, so
    that batch endpoints report items/s. Every ``UNIQUE`` marker in a request is replaced,
    as it is sent, by a 16-character token unique to that request (in this run and, but
    for a 1 in 16 million chance, across runs): endpoints that treat a repeated id as a
    retry (a transaction id) see only new ids however long the run.
    """

    name: str
    host: str
    port: int
    requests: tuple[bytes, ...]
    items_per_request: int = 1

    @classmethod
    def of(cls, name: str, host: str, port: int, method: str,
           paths_and_bodies: Sequence[tuple[str, bytes | None]], items_per_request: int = 1,
           headers: Mapping[str, str] | None = None) -> Target:
        host_header = f"{host}:{port}"
        raw = tuple(build_request(method, p, host_header, b, headers=headers)
                    for p, b in paths_and_bodies)
        if not raw:
            raise ValueError(f"target {name}: no requests to send")
        return cls(name, host, port, raw, items_per_request)


@dataclass(frozen=True)
class Progress:
    """A live view of a run, for progress displays."""

    elapsed: float
    phase: str  # "connect", "warmup", "measure", "drain"
    responses: int  # every response so far, warm-up included
    errors: int  # errors counted in the measured window so far


def percentile(sorted_values: Sequence[int] | array, q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    values = sorted(sorted_values) if not isinstance(sorted_values, array) else sorted_values
    n = len(values)
    if n == 0:
        return 0
    rank = max(1, math.ceil(round(q * n / 100.0, 6)))  # round: 99.9% of 1000 is rank 999
    return int(values[rank - 1])


@dataclass
class LoadResult:
    """The outcome of one run: counts over the measured window and every latency (ns)."""

    target: str
    mode: str  # "closed" or "open"
    connections: int
    processes: int
    duration: float  # measured window, seconds
    rate: float | None  # scheduled requests/s in open loop
    completed: int  # responses received in the window (any status)
    ok: int  # 2xx responses
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: array = field(default_factory=lambda: array("q"))  # sorted
    # Open loop, sorted: send time - scheduled time (the generator was late, or every
    # connection was busy: the server is stalling), and the generator's own lateness.
    lag_ns: array = field(default_factory=lambda: array("q"))
    late_ns: array = field(default_factory=lambda: array("q"))
    generator_cpu: float = 0.0  # CPU seconds used by the generator processes
    items_per_request: int = 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Successful requests per second over the measured window."""
        return self.ok / self.duration if self.duration > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e6

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (latencies in milliseconds)."""
        out: dict[str, Any] = {
            "mode": self.mode, "connections": self.connections, "processes": self.processes,
            "duration_s": round(self.duration, 3), "requests": self.completed, "ok": self.ok,
            "errors": self.error_count, "error_kinds": dict(self.errors),
            "requests_per_s": round(self.rps, 1),
            "items_per_request": self.items_per_request,
            "items_per_s": round(self.items_per_s, 1),
            **latency_summary(self.latencies_ns),
            "generator_cpu_share": round(self.generator_cpu / self.duration, 3) if self.duration else 0.0,
        }
        if self.rate is not None:
            out["target_rate"] = round(self.rate, 1)
            out["send_lag_p99_ms"] = round(percentile(self.lag_ns, 99) / 1e6, 3)
            # Large only if the generator itself fell behind (CPU starved): then the
            # latencies above are the machine's, not the server's.
            out["generator_late_p99_ms"] = round(percentile(self.late_ns, 99) / 1e6, 3)
        return out


def latency_summary(sorted_ns: array) -> dict[str, float]:
    """p50 / p90 / p99 / p99.9 / max / mean in milliseconds of sorted nanosecond latencies."""
    n = len(sorted_ns)
    mean = (sum(sorted_ns) / n / 1e6) if n else 0.0
    return {
        "p50_ms": round(percentile(sorted_ns, 50) / 1e6, 3),
        "p90_ms": round(percentile(sorted_ns, 90) / 1e6, 3),
        "p99_ms": round(percentile(sorted_ns, 99) / 1e6, 3),
        "p999_ms": round(percentile(sorted_ns, 99.9) / 1e6, 3),
        "max_ms": round((sorted_ns[-1] if n else 0) / 1e6, 3),
        "mean_ms": round(mean, 3),
    }


# --------------------------------------------------------------------------- the processes
#
# Each generator process is `python -m mlplatform.bench.eventloop`, not a multiprocessing
# child: it needs nothing from the parent's main module and inherits none of its threads.


class _Child:
    """The parent's handle on one generator process; a thread reads what it says."""

    def __init__(self, job: Job) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")] if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlplatform.bench.eventloop"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        blob = pickle.dumps(job)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"%d\n" % len(blob) + blob)
        self.proc.stdin.flush()
        self.ready = False
        self.responses = self.errors = 0
        self.result: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        for line in iter(out.readline, b""):
            if line == b"ready\n":
                self.ready = True
            elif line.startswith(b"p "):
                _, done, errs = line.split()
                self.responses, self.errors = int(done), int(errs)
            elif line.startswith(b"r "):
                self.result = pickle.loads(out.read(int(line.split()[1])))

    def go(self, start_at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go %r\n" % start_at)
        self.proc.stdin.flush()

    def failure(self) -> str | None:
        """Why the process died, if it did without a result."""
        if self.proc.poll() is None or self.result is not None:
            return None
        self._reader.join(timeout=1)
        if self.result is not None:
            return None
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        return f"exit status {self.proc.returncode}: {err.strip()[-2000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def run_load(target: Target, *, connections: int, duration: float, rate: float | None = None,
             processes: int = 1, warmup: float = 0.0, timeout: float = 10.0,
             progress: Callable[[Progress], None] | None = None) -> LoadResult:
    """Drive ``target`` for ``warmup`` + ``duration`` seconds and measure the last ``duration``.

    ``rate=None`` is a closed loop over ``connections`` connections; a rate is an open loop
    at that many requests/s in total, spread over ``connections`` connections (requests
    queue in the generator, and their wait counts, when all are busy). The work is split
    over ``processes`` generator processes; ``progress`` is called about five times a second.
    Ctrl-C (KeyboardInterrupt) stops the generator processes before it propagates.
    """
    if processes < 1 or connections < processes:
        raise ValueError(f"need 1 <= processes <= connections, got {processes} and {connections}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    per_conn = [connections // processes + (1 if i < connections % processes else 0)
                for i in range(processes)]
    if processes > 10:
        raise ValueError(f"at most 10 generator processes, got {processes}")
    run_id = os.urandom(3).hex().encode()
    children: list[_Child] = []
    try:
        for i in range(processes):
            children.append(_Child(Job(
                target.host, target.port, target.requests, per_conn[i],
                None if rate is None else rate / processes, warmup, duration, timeout,
                offset=i * len(target.requests) // processes, slot=i, run_id=run_id)))
        t0 = time.monotonic()
        while not all(c.ready for c in children):
            _check(children)
            if time.monotonic() - t0 > 60:
                raise TimeoutError("load generator processes did not start within 60 s")
            if progress:
                progress(Progress(0.0, "connect", 0, 0))
            time.sleep(0.02)
        begin = time.monotonic() + 0.05
        for c in children:
            c.go(begin)
        total = warmup + duration
        while not all(c.result is not None for c in children):
            _check(children)
            elapsed = time.monotonic() - begin
            if elapsed > total + timeout + 30:
                raise TimeoutError("load generator did not finish in time")
            if progress:
                phase = "warmup" if elapsed < warmup else "measure" if elapsed < total else "drain"
                progress(Progress(max(0.0, elapsed), phase, sum(c.responses for c in children),
                                  sum(c.errors for c in children)))
            time.sleep(0.2)
    finally:
        for c in children:
            c.stop()
    lat, lag, late, errors = array("q"), array("q"), array("q"), Counter[str]()
    ok = completed = 0
    cpu = 0.0
    for c in children:
        out = c.result
        assert out is not None
        lat.frombytes(out["lat"])
        lag.frombytes(out["lag"])
        late.frombytes(out["late"])
        errors.update(out["errors"])
        ok += out["ok"]
        completed += out["completed"]
        cpu += out["cpu"]
    return LoadResult(
        target=target.name, mode="closed" if rate is None else "open", connections=connections,
        processes=processes, duration=duration, rate=rate, completed=completed, ok=ok,
        errors=errors, latencies_ns=array("q", sorted(lat)), lag_ns=array("q", sorted(lag)),
        late_ns=array("q", sorted(late)),
        generator_cpu=cpu, items_per_request=target.items_per_request)


def _check(children: list[_Child]) -> None:
    for c in children:
        why = c.failure()
        if why:
            raise RuntimeError(f"a load generator process failed ({why})")

