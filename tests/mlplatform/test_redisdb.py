"""Redis: the embedded server (real redis-server, durable) and an external server by URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.http import create_service_app
from mlplatform.redisdb import EmbeddedRedis, connect, free_port, ping


def test_embedded_server_keeps_acknowledged_writes_across_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = connect(server.url)
        client.xadd("events", {"user": "u1", "item": "i1"})
        assert (tmp_path / "redis" / "redis.url").read_text() == server.url
    assert not (tmp_path / "redis" / "redis.url").exists()
    with pytest.raises(redis.ConnectionError):
        connect(server.url, socket_timeout=0.3).ping()
    with EmbeddedRedis(tmp_path) as again:
        assert connect(again.url).xlen("events") == 1


def test_second_process_reuses_a_running_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path)
        assert second.start() == first.url and second.owned is False
        second.stop()  # not the owner: the server stays up
        assert connect(first.url).ping()


def test_external_server_by_url(redis_url: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"MLSUITE_REDIS_URL": redis_url, "MLSUITE_DATA_DIR": str(tmp_path)})
    app = create_service_app("ext", settings)
    assert app.test_client().get("/readyz").get_json()["checks"]["redis"]["ok"] is True
    assert not (tmp_path / "redis").exists()  # nothing embedded was started


def test_ping_names_redis_when_down() -> None:
    with pytest.raises(Unavailable) as err:
        ping(connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.3))
    assert err.value.dependency == "redis"
