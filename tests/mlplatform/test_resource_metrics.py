"""Resource metrics: CPU and memory per process of a multi-process service, Redis memory,
stream lengths and backlogs, and a scrape that still answers when Redis is down.

A real service under the production server (two worker processes), a real Redis (the
session's, or one private to the test where it is stopped), real processes.
"""

from __future__ import annotations

import doctest
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.monitoring.resources import LAG_COUNT_CAP, RedisCollector
from mlplatform.redisdb import EmbeddedRedis, connect, free_port
from mlplatform.serving import wait_ready

pytestmark = pytest.mark.slow

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a new one each time
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def scrape(port: int) -> Samples:
    """/metrics parsed: sample name -> [(labels, value)]."""
    status, body = _get(port, "/metrics")
    assert status == 200, body[:500]
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def by_pid(samples: Samples, name: str) -> dict[int, float]:
    return {int(labels["pid"]): value for labels, value in samples.get(name, [])}


def worker_pids(port: int, want: int = 2) -> set[int]:
    """The pids of the server's workers: connections held open at once are spread over
    them by the kernel; keep opening more until ``want`` have answered (at most 64)."""
    conns: list[http.client.HTTPConnection] = []
    pids: set[int] = set()
    while len(pids) < want and len(conns) < 64:
        conns.extend(http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(8))
        for conn in conns:
            conn.request("GET", "/healthz")
            pids.add(json.loads(conn.getresponse().read())["pid"])
    for conn in conns:
        conn.close()
    assert len(pids) == want, f"expected {want} workers to answer, saw pids {pids}"
    return pids


def serve(data_dir: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data_dir), "MLSUITE_REDIS_URL": redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "mlplatform", "serve",
                             "baseline-conventions", "--port", str(port), "--workers", "2"],
                            env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def service(tmp_path: Path, redis_client: redis.Redis, redis_url: str) -> Iterator[int]:
    """baseline-conventions with two workers on the session Redis, which holds a stream
    with two groups: "slow" has 2 of its 5 entries pending, "idle" has read nothing."""
    for i in range(5):
        redis_client.xadd("test:orders", {"n": str(i)})
    redis_client.xgroup_create("test:orders", "slow", id="0")
    redis_client.xgroup_create("test:orders", "idle", id="0")
    read = redis_client.xreadgroup("slow", "c1", {"test:orders": ">"}, count=3)
    redis_client.xack("test:orders", "slow", read[0][1][0][0])  # 3 read, 1 acked
    proc, port = serve(tmp_path / "data", redis_url)
    try:
        yield port
    finally:
        stop(proc)


def test_every_worker_process_has_cpu_and_memory_and_redis_is_measured(
        service: int, tmp_path: Path) -> None:
    pids = worker_pids(service)
    samples = scrape(service)
    cpu = by_pid(samples, "mlsuite_process_cpu_seconds")
    rss = by_pid(samples, "mlsuite_process_resident_memory_bytes")
    assert set(cpu) == pids and set(rss) == pids, (cpu, rss, pids)
    assert all(v > 0 for v in cpu.values()) and all(v > 10e6 for v in rss.values())
    assert {labels["service"] for labels, _ in samples["mlsuite_process_cpu_seconds"]} \
        == {"baseline"}
    assert samples["mlsuite_redis_up"] == [({}, 1.0)]
    assert samples["mlsuite_redis_used_memory_bytes"][0][1] > 100_000
    assert ({"stream": "test:orders"}, 5.0) in samples["mlsuite_stream_length"]
    backlog = {labels["group"]: v for labels, v in samples["mlsuite_stream_backlog"]
               if labels["stream"] == "test:orders"}
    assert backlog == {"slow": 2 + 2, "idle": 5}  # pending + not yet delivered


def test_a_background_process_counts_while_it_lives(service: int, tmp_path: Path) -> None:
    """A process writing to the service's metrics folder (as ``mlsuite worker`` does) is
    listed while it runs and disappears, with its live gauges, once it is gone."""
    [folder] = (tmp_path / "data" / "run").glob(f"prometheus-*-{service}")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    background = subprocess.Popen(
        [sys.executable, "-c", "import sys, mlplatform.metrics; print('up', flush=True); "
         "sys.stdin.read()"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert background.stdout is not None and background.stdout.readline() == b"up\n"
        samples = scrape(service)
        assert background.pid in by_pid(samples, "mlsuite_process_cpu_seconds")
        assert background.pid in by_pid(samples, "mlsuite_process_start_time_seconds")
    finally:
        background.kill()
        background.wait()
    samples = scrape(service)
    assert background.pid not in by_pid(samples, "mlsuite_process_cpu_seconds")
    assert background.pid not in by_pid(samples, "mlsuite_process_start_time_seconds")
    assert not list(folder.glob(f"gauge_live*_{background.pid}.db"))


def test_the_scrape_answers_with_redis_up_0_while_redis_is_down(
        tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis")
    url = server.start()
    connect(url).xadd("test:events", {"n": "1"})
    proc, port = serve(tmp_path / "data", url)
    try:
        assert scrape(port)["mlsuite_redis_up"] == [({}, 1.0)]
        server.stop()
        samples = scrape(port)
        assert samples["mlsuite_redis_up"] == [({}, 0.0)]
        assert "mlsuite_stream_length" not in samples  # nothing made up while it is down
        assert by_pid(samples, "mlsuite_process_cpu_seconds")  # the rest still reported
        server.start()  # same data folder and socket: the service reconnects
        wait_for("redis_up back to 1", lambda: scrape(port)["mlsuite_redis_up"] == [({}, 1.0)],
                 timeout=30)
        assert ({"stream": "test:events"}, 1.0) in scrape(port)["mlsuite_stream_length"]
    finally:
        stop(proc)
        server.stop()


@pytest.mark.parametrize(("read", "acked", "expected"), [
    (0, 0, 7), (3, 0, 7), (3, 3, 4), (7, 7, 0), (7, 2, 5),
], ids=["nothing read", "read not acked", "read and acked", "all done", "all read some acked"])
def test_backlog_is_pending_plus_not_delivered(redis_client: redis.Redis, read: int,
                                               acked: int, expected: int) -> None:
    for i in range(7):
        redis_client.xadd("test:s", {"n": str(i)})
    redis_client.xgroup_create("test:s", "g", id="0")
    if read:
        ids = [i for i, _ in redis_client.xreadgroup("g", "c", {"test:s": ">"}, count=read)[0][1]]
        if acked:
            redis_client.xack("test:s", "g", *ids[:acked])
    families = {m.name: m for m in RedisCollector(redis_client).collect()}
    assert [s.value for s in families["mlsuite_stream_backlog"].samples] == [expected]
    assert [s.value for s in families["mlsuite_stream_length"].samples] == [7]


def test_a_long_backlog_is_counted_or_estimated(redis_client: redis.Redis) -> None:
    """Redis 7 reports a group's lag; Redis 6.2 does not, and the collector counts the
    first LAG_COUNT_CAP entries and estimates the rest from the entry times: exact when
    the entries are evenly spaced (here one per millisecond)."""
    total = 3 * LAG_COUNT_CAP
    pipe = redis_client.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd("test:long", {"n": str(i)}, id=f"{1000 + i}-0")
    pipe.execute()
    redis_client.xgroup_create("test:long", "fresh", id="0")
    redis_client.xgroup_create("test:long", "behind", id="0")
    redis_client.xreadgroup("behind", "c", {"test:long": ">"}, count=500)
    redis_client.xgroup_create("test:long", "close", id="0")
    redis_client.xreadgroup("close", "c", {"test:long": ">"}, count=total - 10)
    families = {m.name: m for m in RedisCollector(redis_client).collect()}
    backlog = {s.labels["group"]: s.value for s in families["mlsuite_stream_backlog"].samples}
    # pending (read, not acked) + not delivered
    assert backlog == {"fresh": total, "behind": 500 + (total - 500), "close": total}


def test_redis_memory_is_measured_against_its_limit_and_alerts_near_it(
        redis_client: redis.Redis, settings: Any) -> None:
    """The limit is Redis's maxmemory, or the machine's memory while none is set; the
    console's RedisMemoryHigh fires above 80% of it (a stream outgrowing its retention
    would otherwise end in Redis refusing every write)."""
    from mlplatform.monitoring.alerts import evaluate
    from mlplatform.monitoring.collector import Collector, readings

    def scraped(name: str) -> float:
        [family] = [f for f in RedisCollector(redis_client).collect() if f.name == name]
        return float(family.samples[0].value)

    def firing() -> list[str]:
        collector = Collector(settings, redis_client, services=())
        collector.redis = collector._redis_state()
        return [a.name for a in evaluate(readings(collector))]

    system = float(redis_client.info("memory")["total_system_memory"])
    assert scraped("mlsuite_redis_memory_limit_bytes") == system
    assert "RedisMemoryHigh" not in firing()
    used = float(redis_client.info("memory")["used_memory"])
    try:
        redis_client.config_set("maxmemory", int(used * 1.1))  # used: about 90% of it
        assert scraped("mlsuite_redis_memory_limit_bytes") == int(used * 1.1)
        assert "RedisMemoryHigh" in firing()
        redis_client.config_set("maxmemory", int(used * 2))
        assert "RedisMemoryHigh" not in firing()
    finally:
        redis_client.config_set("maxmemory", 0)


def test_docstring_examples() -> None:
    from mlplatform.monitoring import resources

    result = doctest.testmod(resources)
    assert result.attempted > 0 and result.failed == 0
