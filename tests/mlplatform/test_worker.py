"""The worker runtime on a real Redis: jobs in threads, retention, heartbeats, the command."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from mlplatform.config import Settings
from mlplatform.lake import Lake
from mlplatform.streams import Consumer, Entry
from mlplatform.worker import Worker, heartbeats


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_a_worker_consumes_archives_and_beats(redis_client: redis.Redis,
                                              settings: Settings) -> None:
    settings = settings.with_(stream_retention_seconds=0.001, archive_interval_seconds=0.05)

    def total(entries: Sequence[Entry], tx: Any) -> None:
        for e in entries:
            tx.incrby("test:sum", int(e.get("n") or 0))

    worker = Worker("test", settings, redis_client)
    worker.consume(Consumer(redis_client, "test:in", "sum", total, "test:dead", block_ms=20))
    runs: list[float] = []
    worker.every("tick", 0.05, lambda: runs.append(time.time()))
    worker.retain("test:in")
    worker.start()
    try:
        [beat] = heartbeats(redis_client, "test")
        assert beat["pid"] and "tick" in beat["jobs"] and "retention" in beat["jobs"]
        for n in range(1, 21):
            redis_client.xadd("test:in", {"n": str(n)})
        assert wait_until(lambda: int(redis_client.get("test:sum") or 0) == 210)
        # Applied entries are archived, then trimmed from Redis.
        lake = Lake.from_settings(settings)
        assert wait_until(lambda: redis_client.xlen("test:in") == 0 and lake.count("test:in") == 20)
        assert len(runs) >= 2
    finally:
        worker.stop()
    assert heartbeats(redis_client, "test") == []


def test_a_crashing_job_is_restarted_and_the_others_go_on(redis_client: redis.Redis,
                                                         settings: Settings) -> None:
    calls = {"crashy": 0, "steady": 0}

    def crashy(stop: Any) -> None:
        calls["crashy"] += 1
        raise RuntimeError("boom")

    worker = Worker("test", settings, redis_client)
    worker.loop("crashy", crashy)
    worker.every("steady", 0.02, lambda: calls.__setitem__("steady", calls["steady"] + 1))
    worker.start()
    try:
        assert wait_until(lambda: calls["crashy"] >= 2 and calls["steady"] >= 3, timeout=4)
    finally:
        worker.stop()


def test_worker_command_names_unknown_services(settings: Settings) -> None:
    env = {**settings.as_env(), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "mlplatform", "worker", "nope"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no worker for service 'nope'" in done.stderr
    assert "fraud" in done.stderr and "recommender" in done.stderr
