"""Session fixtures shared by every test package: a private real Redis, settings, small simulated data.

No fakes: ``redis_url`` is a real redis-server started for this test session on a free
port, and the data fixtures come from the real simulator at a small size.

``MLSUITE_TEST_REDIS=cluster`` makes ``redis_url`` a private three-master Redis Cluster
instead, so any Redis-touching module runs against a cluster as it is:
``MLSUITE_TEST_REDIS=cluster pytest tests/recommender/test_recommender_history.py``.
``cluster_url`` / ``cluster_client`` give the tests written for the cluster one always.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mlplatform.config import Settings  # noqa: E402
from mlplatform.redisdb import EmbeddedCluster, EmbeddedRedis, connect, free_port  # noqa: E402

SMALL_SHOP = {"n_users": 300, "n_items": 120, "n_interactions": 20_000}
SMALL_PAYMENTS = {"n_cards": 400, "n_merchants": 60, "n_transactions": 20_000}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server private to this test session (a three-node cluster
    with ``MLSUITE_TEST_REDIS=cluster``)."""
    kind = os.environ.get("MLSUITE_TEST_REDIS", "server")
    if kind == "cluster":
        with EmbeddedCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
            yield cluster.url
        return
    if kind != "server":
        raise pytest.UsageError(f"MLSUITE_TEST_REDIS must be server or cluster, got {kind!r}")
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-server"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """URL of a private three-master Redis Cluster (the session's, when ``redis_url``
    is one already: one cluster per session)."""
    if redis_url.startswith("redis+cluster://"):
        yield redis_url
        return
    with EmbeddedCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture
def cluster_client(cluster_url: str) -> Iterator[redis.Redis]:
    """A client on the session's cluster, every node emptied before the test."""
    client = connect(cluster_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session server, emptied before the test."""
    client = connect(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_client: redis.Redis, redis_url: str) -> Settings:
    """Settings for one test: its own data folder, the session Redis (flushed).

    API keys are off here (``auth=False``): a test of a feature sends no key. The tests of
    keys and scopes, and the bad-input tests, turn them on with ``api_key``."""
    return Settings.from_env({}).with_(data_dir=tmp_path / "data", redis_url=redis_url,
                                       auth=False)


@pytest.fixture
def outage_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of one test only (not the session's), to stop and start again on
    the same port and socket: the outage tests."""
    server = EmbeddedRedis(tmp_path / "outage", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sim_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a small simulated shop and payments stream (seed 7)."""
    from mlplatform.simulate import simulate_payments, simulate_shop

    data_dir = tmp_path_factory.mktemp("sim-data")
    simulate_shop(data_dir, seed=7, progress=False, **SMALL_SHOP)
    simulate_payments(data_dir, seed=7, progress=False, **SMALL_PAYMENTS)
    return data_dir


@pytest.fixture(scope="session")
def shop_dir(sim_data_dir: Path) -> Path:
    return sim_data_dir / "shop"


@pytest.fixture(scope="session")
def payments_dir(sim_data_dir: Path) -> Path:
    return sim_data_dir / "payments"


@pytest.fixture
def pipeline_data_dir(pipeline_template: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private copy of the requesting module's ``pipeline_template`` data folder, which
    the CLI reads as MLSUITE_DATA_DIR (settings are read once per process: re-read)."""
    import shutil

    from mlplatform.config import get_settings

    folder = tmp_path / "data"
    shutil.copytree(pipeline_template, folder)
    monkeypatch.setenv("MLSUITE_DATA_DIR", str(folder))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``check()``'s first truthy value, polled every 20 ms; fails naming ``what`` after
    ``timeout`` seconds (never a fixed sleep: a busy 2-core machine is slow, not wrong)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """Wait for a condition with a deadline: ``wait_for("what", check, timeout=10.0)``."""
    return _wait_for


def _write_slow_aof(folder: Path, keys: int = 60_000) -> int:
    """An append-only file in ``folder`` that takes a redis-server seconds to load:
    ``keys`` SADDs of 100 members each. Returns the number of keys."""
    folder.mkdir(parents=True, exist_ok=True)
    members = b"".join(b"$%d\r\n%s\r\n" % (len(m), m) for m in (b"m%d" % j for j in range(100)))
    (folder / "appendonly.aof").write_bytes(b"".join(
        b"*102\r\n$4\r\nSADD\r\n$%d\r\n%s\r\n" % (len(k), k) + members
        for k in (b"s%d" % i for i in range(keys))))
    return keys


@pytest.fixture
def slow_aof() -> Callable[..., int]:
    """Write an append-only file that takes seconds to load: ``slow_aof(folder)``."""
    return _write_slow_aof
