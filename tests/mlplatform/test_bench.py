"""The bench's load generator against real servers: counts, error accounting, percentiles.

The bare baseline runs under granian for real; a tiny scripted HTTP server in a thread
covers what granian never sends (chunked bodies, ``Connection: close``, early closes)
and records what the generator sent. No assertion on timing: only counts and order.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplatform.bench.cpu import CpuMeter, format_cpu, per_request
from mlplatform.bench.loadgen import UNIQUE, LoadResult, Target, percentile, run_load
from mlplatform.bench.report import build_report, check_targets, format_table
from mlplatform.config import Settings
from mlplatform.redisdb import free_port
from mlplatform.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline_port(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[int]:
    """The bare Flask baseline under granian with 2 workers, as ``mlsuite bench`` runs it."""
    settings = Settings.from_env({}).with_(data_dir=tmp_path_factory.mktemp("bench-data"),
                                           redis_url=redis_url)
    with Stack(settings, ["baseline"], server="granian", workers=2, say=lambda _: None) as stack:
        yield stack.ports["baseline"]


def _ping(port: int, *paths: str) -> Target:
    return Target.of("test", "127.0.0.1", port, "GET", [(p, None) for p in paths or ("/ping",)])


def _check_invariants(r: LoadResult) -> None:
    assert r.completed == len(r.latencies_ns), "one latency per response"
    assert list(r.latencies_ns) == sorted(r.latencies_ns)
    s = r.summary()
    assert 0 <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]
    assert r.ok + sum(n for k, n in r.errors.items() if k.startswith("status ")) == r.completed


def test_closed_loop_counts_every_response(baseline_port: int) -> None:
    r = run_load(_ping(baseline_port), connections=4, duration=1.0, warmup=0.3)
    _check_invariants(r)
    assert r.completed > 100 and r.ok == r.completed
    assert r.error_count == 0, r.errors
    assert r.rps == r.ok / 1.0


def test_non_2xx_answers_are_errors_by_status(baseline_port: int) -> None:
    # The pool alternates, so about half the requests are 404s.
    r = run_load(_ping(baseline_port, "/ping", "/no-such-page"), connections=4, duration=1.0)
    _check_invariants(r)
    missing = r.errors["status 404"]
    assert missing > 50 and r.ok > 50
    assert abs(missing - r.ok) <= 2 * 4, (missing, r.ok)
    assert r.summary()["error_kinds"] == {"status 404": missing}


def test_open_loop_sends_exactly_the_scheduled_requests(baseline_port: int) -> None:
    r = run_load(_ping(baseline_port), connections=8, duration=1.5, rate=200, warmup=0.2)
    _check_invariants(r)
    assert r.completed == 300 and r.ok == 300, (r.completed, r.errors)
    assert len(r.lag_ns) == 300 and min(r.lag_ns) >= 0
    assert len(r.late_ns) == 300 and min(r.late_ns) >= 0
    assert r.summary()["target_rate"] == 200


def test_open_loop_splits_the_rate_over_generator_processes(baseline_port: int) -> None:
    r = run_load(_ping(baseline_port), connections=4, duration=1.0, rate=100, processes=2)
    assert r.completed == 100 and r.ok == 100 and r.processes == 2


def test_refused_connections_are_errors_not_responses() -> None:
    port = free_port()  # nothing listens there
    r = run_load(_ping(port), connections=2, duration=0.5)
    assert r.completed == 0 and r.ok == 0 and r.rps == 0
    assert r.errors["connect"] > 0 and set(r.errors) == {"connect"}
    assert r.summary()["p99_ms"] == 0


# -- a scripted server for what granian never does --------------------------------------

class ScriptedServer:
    """Answers each request with ``respond(n, request_bytes) -> (reply bytes, close?)``."""

    def __init__(self, respond: Callable[[int, bytes], tuple[bytes, bool]]) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        except OSError:
            pass  # the generator hangs up at the end of a run
        finally:
            conn.close()

    def _exchange(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: (\d+)", head)
            size = int(m.group(1)) if m else 0
            while len(rest) < size:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
            request, buf = head + b"\r\n\r\n" + rest[:size], rest[size:]
            with self.lock:
                self.requests.append(request)
                n = len(self.requests)
            reply, close = self.respond(n, request)
            conn.sendall(reply)
            if close:
                return

    def close(self) -> None:
        self.stopping = True
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[int, bytes], tuple[bytes, bool]]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(respond: Callable[[int, bytes], tuple[bytes, bool]]) -> ScriptedServer:
        servers.append(ScriptedServer(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.mark.parametrize("reply, close", [
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n",
                 False, id="chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True,
                 id="connection-close"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nbody ends with the connection", True,
                 id="http10-close-delimited"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", False, id="no-content"),
])
def test_response_framings_are_each_one_response(scripted, reply: bytes, close: bool) -> None:
    server = scripted(lambda n, req: (reply, close))
    r = run_load(_ping(server.port), connections=2, duration=0.5)
    _check_invariants(r)
    assert r.completed > 10 and r.ok == r.completed and r.error_count == 0, r.errors
    assert len(server.requests) >= r.completed


def test_a_connection_closed_mid_request_is_an_error(scripted) -> None:
    # Every 5th request: the server hangs up without answering.
    server = scripted(lambda n, req: (b"", True) if n % 5 == 0 else (OK, False))
    r = run_load(_ping(server.port), connections=2, duration=0.5)
    assert r.ok > 10 and r.errors["closed"] > 0
    assert set(r.errors) == {"closed"}


def test_unique_markers_become_distinct_ids(scripted) -> None:
    server = scripted(lambda n, req: (OK, False))
    body = json.dumps({"transaction_id": f"t-{UNIQUE}", "items": [f"x-{UNIQUE}-0"]}).encode()
    target = Target.of("unique", "127.0.0.1", server.port, "POST", [("/score", body)] * 3)
    r = run_load(target, connections=3, duration=0.5, processes=2)
    assert r.ok > 10
    ids = [json.loads(req.partition(b"\r\n\r\n")[2])["transaction_id"] for req in server.requests]
    assert len(set(ids)) == len(ids), "every request carries its own id"
    assert all(re.fullmatch(r"t-[0-9a-f]{6}[01]\d{9}", i) for i in ids), ids[:3]
    assert all(b"content-length: %d" % len(body) in req for req in server.requests)


def test_doctests() -> None:
    import doctest

    from mlplatform import loadtest
    from mlplatform.bench import loadgen, report

    for module in (loadgen, report, loadtest):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_percentile_is_nearest_rank() -> None:
    values = sorted(range(1, 1001))
    assert [percentile(values, q) for q in (50, 99, 99.9, 100)] == [500, 990, 999, 1000]
    assert percentile([], 99) == 0


def test_report_ratios_targets_and_table() -> None:
    def row(name: str, rps: float, items: int = 1, p99: float = 1.0, errors: int = 0) -> dict:
        sat = {"requests_per_s": rps, "items_per_s": rps * items, "p50_ms": 0.5, "p99_ms": p99,
               "p999_ms": p99, "errors": errors}
        return {"name": name, "unit": "requests", "items_per_request": items, "saturation": sat,
                "half_rate": {"target_rate": rps / 2, "p50_ms": 0.4, "p99_ms": p99,
                              "p999_ms": p99, "errors": 0}}

    rows = [row("baseline.ping", 10_000), row("fraud.score", 2_000, p99=12.0),
            row("fraud.batch", 150, items=100, errors=3)]
    report = build_report(rows, settings={"server": "granian", "workers": 2, "duration_s": 1,
                                          "connections": 32}, loadavg_before=(0.1, 0.1, 0.1))
    assert [r["ratio_to_baseline"] for r in rows] == [1.0, 0.2, 0.015]
    met = {(t["endpoint"], t["figure"]): t["met"] for t in check_targets(rows)}
    assert met[("fraud.score", "ratio_to_baseline")] is False
    assert met[("fraud.score", "half_rate.p99_ms")] is False
    assert met[("fraud.batch", "saturation.items_per_s")] is True
    assert met[("recommender.batch", "saturation.items_per_s")] is None
    assert met[("*", "errors")] is False
    table = format_table(report)
    assert "fraud.batch" in table and "MISSED" in table and "warning" not in table


def test_bench_command_writes_the_report(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path / "data"), "MLSUITE_REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, "-m", "mlplatform", "bench", "--services", "baseline", "--duration", "1", "--warmup", "0", "--connections", "4", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    [row] = report["endpoints"]
    assert row["name"] == "baseline.ping" and row["ratio_to_baseline"] == 1.0
    assert row["saturation"]["requests"] > 0 and row["half_rate"]["requests"] > 0
    assert "baseline.ping" in proc.stdout
    # Where the saturation window's machine time went: the server's share is real work,
    # and the same figures are printed for people.
    cpu = row["saturation"]["cpu"]
    assert cpu["us_per_request"]["baseline"] > 0 and cpu["busy_cores"] > 0
    assert {"redis", "generator", "other"} <= set(cpu["us_per_request"])
    # The parts measured over the window add up to no more than the machine did.
    parts = sum(v for k, v in cpu["us_per_request"].items() if k != "other")
    assert parts * row["saturation"]["requests_per_s"] / 1e6 <= cpu["busy_cores"] * 1.1
    assert "CPU baseline.ping: baseline " in proc.stdout


# Keeps Redis busy for ARGV[1] microseconds of its clock (TIME), whatever its speed.
_BUSY_REDIS = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start, x = now(), 0
repeat
  for i = 1, 100000 do x = x + i end
until now() - start >= tonumber(ARGV[1])
return 1
"""


def test_the_cpu_meter_counts_a_servers_children_and_redis(redis_client: Any) -> None:
    """A parent whose child burns CPU is charged with it (a server's request workers are
    children of its master), and a script Redis runs is charged to Redis."""
    burn = ("import subprocess, sys; sys.stdin.readline(); subprocess.run([sys.executable, '-c', "
            "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass'])"
            "; print('done', flush=True); sys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        meter = CpuMeter({"server": parent.pid}, redis_client)
        before = meter.snapshot()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        # Redis runs a Lua loop for 0.1 s by its own clock (a count of iterations took
        # 0.1 s on one machine and 18 ms on a faster one): some 0.1 s of its CPU.
        redis_client.eval(_BUSY_REDIS, 0, 100_000)
        assert parent.stdout.readline().strip() == "done"
        after = meter.snapshot()
    finally:
        parent.communicate("", timeout=30)
    assert after.processes["server"] - before.processes["server"] >= 0.5
    cpu = per_request(before, after, requests_per_s=10.0)
    assert cpu["us_per_request"]["redis"] > 0.02 / (after.at - before.at) / 10 * 1e6
    assert cpu["us_per_request"]["server"] > cpu["us_per_request"]["redis"]
    assert after.redis_local and after.cores >= 1 and after.busy > before.busy


def test_cpu_lines_name_the_largest_parts_and_redis_ceiling() -> None:
    cpu = {"cores": 2, "busy_cores": 1.9, "us_per_item": {"fraud": 200.0, "redis": 100.0,
                                                          "generator": 1.0, "other": 20.0},
           "us_per_request": {}, "redis_ceiling_per_s": 10000.0}
    line = format_cpu("fraud.batch", cpu)
    assert line.startswith("fraud.batch: fraud 200, redis 100, other 20 us/item")
    assert "generator" not in line and "at most 10,000 items/s per Redis core" in line


def test_the_fraud_pool_keeps_the_files_times_moved_to_now(tmp_path: Path) -> None:
    """The fraud bench replays the latest transactions of the file in time order with
    their own gaps, the last one now: not every card at one instant (a card-testing burst
    on every card, which measured the velocity windows rather than the service)."""
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlplatform.bench.payloads import _transactions

    start = datetime(2025, 1, 1, tzinfo=UTC)
    n = 50
    stamps = [start + timedelta(hours=3 * i) for i in reversed(range(n))]  # file unsorted
    pq.write_table(pa.table({
        "timestamp": stamps, "card_id": [f"c{i % 7}" for i in range(n)],
        "merchant_id": ["m1"] * n, "amount": [float(i) for i in range(n)],
        "currency": ["EUR"] * n, "country": ["FR"] * n, "channel": ["online"] * n,
        "device_id": [None if i % 2 else f"d{i}" for i in range(n)]}),
        tmp_path / "transactions.parquet")
    txs = _transactions(tmp_path, 20)
    assert len(txs) == 20
    ts = [datetime.strptime(t["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() for t in txs]
    assert all(b - a == pytest.approx(3 * 3600) for a, b in zip(ts, ts[1:]))
    assert abs(ts[-1] - datetime.now(UTC).timestamp()) < 60
    # The latest 20 of the file (amounts 0..19: the file was written newest first).
    assert [t["amount"] for t in txs] == [float(i) for i in reversed(range(20))]
    assert "device_id" not in txs[0] and txs[1]["device_id"] == "d18"


def test_the_recorded_floor_claims_counts_and_records_once(settings: Settings,
                                                            redis_client: Any) -> None:
    """baseline-recorded makes fraud.score's two Redis calls and nothing else: a
    transaction is claimed and counted once, recorded once, and a repeat is answered as
    a duplicate; bad input is a 400 naming the field."""
    from mlplatform.baseline import create_recorded_app
    from mlplatform.redisdb import partition
    from mlplatform.streams import partition_count

    client = create_recorded_app(settings).test_client()
    # On a cluster the count lives in the transaction's partition: t2 shares t1's.
    n = partition_count(redis_client)
    t2 = next(f"t{i}" for i in range(2, 10_000) if partition(f"t{i}", n) == partition("t1", n))
    first = client.post("/v1/record", json={"transaction_id": "t1", "card_id": "c1", "amount": 5})
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.json["count"] == 1 and first.json["recorded"]
    again = client.post("/v1/record", json={"transaction_id": "t1", "card_id": "c1"})
    assert again.status_code == 200 and again.json == {"transaction_id": "t1", "duplicate": True}
    second = client.post("/v1/record", json={"transaction_id": t2, "card_id": "c1"})
    assert second.json["count"] == 2
    # One stream on a server; on a cluster, one per partition (hash tags).
    records = [json.loads(f[b"record"])
               for key in redis_client.scan_iter(match="*baseline:recorded:stream")
               for _, f in redis_client.xrange(key)]
    assert sorted(r["transaction_id"] for r in records) == sorted(["t1", t2])
    assert [r.get("amount") for r in records if r["transaction_id"] == "t1"] == [5]
    missing = client.post("/v1/record", json={"transaction_id": "t3"})
    assert missing.status_code == 400 and missing.json["error"]["field"] == "card_id"
    listed = client.post("/v1/record", json=[1, 2])
    assert listed.status_code == 400 and listed.json["error"]["field"] == "body"
    # A batch: one call each for the claims and the records; a repeat is a duplicate.
    batch = client.post("/v1/record/batch", json={"transactions": [
        {"transaction_id": "t1", "card_id": "c1"}, {"transaction_id": "b1", "card_id": "c9"},
        {"transaction_id": "b2", "card_id": "c9"}]})
    assert batch.status_code == 200, batch.get_data(as_text=True)
    results = batch.json["results"]
    assert results[0] == {"transaction_id": "t1", "duplicate": True}
    assert [r["transaction_id"] for r in results[1:]] == ["b1", "b2"]
    assert all(r["recorded"] for r in results[1:])
    bad = client.post("/v1/record/batch", json={"transactions": [
        {"transaction_id": "b3", "card_id": "c1"}, {"transaction_id": "b4"}]})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "transactions[1].card_id"
    twice = client.post("/v1/record/batch", json={"transactions": [
        {"transaction_id": "b5", "card_id": "c1"}, {"transaction_id": "b5", "card_id": "c1"}]})
    assert twice.status_code == 400 and twice.json["error"]["field"] == "transactions"
    empty = client.post("/v1/record/batch", json={"transactions": []})
    assert empty.status_code == 400 and empty.json["error"]["field"] == "transactions"


def test_the_bench_measures_the_recorded_floor(tmp_path: Path, redis_url: str,
                                               payments_dir: Path) -> None:
    """``--services baseline,baseline-recorded`` serves the floor under granian and drives
    it with the fraud pool's transactions, singly and in batches, each a new id."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(payments_dir, data / "payments")
    out = tmp_path / "bench.json"
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data), "MLSUITE_REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, "-m", "mlplatform", "bench", "--services", "baseline,baseline-recorded",
         "--duration", "1", "--warmup", "0", "--connections", "4", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["endpoints"]}
    row = rows["recorded.record"]
    assert row["saturation"]["requests"] > 0 and row["saturation"]["errors"] == 0
    assert 0 < row["ratio_to_baseline"] < 1.5
    assert row["saturation"]["cpu"]["us_per_request"]["redis"] > 0
    batch = rows["recorded.batch"]["saturation"]
    assert batch["errors"] == 0 and batch["items_per_s"] > batch["requests_per_s"] > 0
