"""Redis: the embedded server (real redis-server, durable) and an external server by URL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.http import create_service_app
from mlplatform.redisdb import DirectCommands, EmbeddedRedis, connect, free_port, ping


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


def test_embedded_server_keeps_writes_across_a_rewrite_of_its_file(
        tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    """The append-only file's rewrite writes an uncompressed base (its child copies, it
    does not compress); what was written before and after it is there after a restart."""
    record = '{"features": {"amount": 12.5, "card_count_1h": 0.0}}' * 20
    with EmbeddedRedis(tmp_path) as server:
        client = connect(server.url)
        assert client.config_get("rdbcompression") == {"rdbcompression": "no"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        for fields in ({"transaction_id": f"t{i}", "record": record} for i in range(200)):
            client.xadd("decisions", fields, maxlen=1000)
        client.bgrewriteaof()

        def rewritten() -> bool:
            info = client.info("persistence")
            return (not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
                    and info["aof_last_bgrewrite_status"] == "ok"
                    and bool(info["aof_base_size"]))

        wait_for("the append-only file's rewrite", rewritten, timeout=20)
        client.xadd("decisions", {"transaction_id": "after", "record": record}, maxlen=1000)
    base = (tmp_path / "redis" / "appendonly.aof").read_bytes()
    assert base.startswith(b"REDIS")  # the rewrite's RDB base
    assert base.count(record[:40].encode()) >= 200  # stored as is, not LZF-compressed
    with EmbeddedRedis(tmp_path) as again:
        client = connect(again.url)
        assert client.xlen("decisions") == 201
        assert client.xrevrange("decisions", count=1)[0][1][b"transaction_id"] == b"after"


def test_embedded_server_loading_a_large_file_is_waited_for(
        tmp_path: Path, slow_aof: Callable[..., int]) -> None:
    """A data folder's append-only file that takes longer to load than the start's
    timeout: the wait allows for its size, and the server starts with all of it."""
    keys = slow_aof(tmp_path / "redis")
    started = time.monotonic()
    with EmbeddedRedis(tmp_path) as server:
        server.stop()
    took = time.monotonic() - started
    server = EmbeddedRedis(tmp_path)
    server.start(timeout=min(0.5, took / 4))
    try:
        assert connect(server.url).dbsize() == keys
    finally:
        server.stop()


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


# -- DirectCommands: a request path's commands without redis-py's per-command layers ----

_SLOW_SCRIPT = """
local t0 = redis.call('TIME')
repeat local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1])
return 'late'
"""


def test_direct_commands_answer_as_the_client_does(redis_client: redis.Redis) -> None:
    direct = DirectCommands(redis_client)
    redis_client.set("k", "v\x00é")
    script = "return {KEYS[1], tonumber(ARGV[1]) + 1, redis.call('GET', KEYS[1]), false, {'x'}}"
    assert direct.execute_command("INCR", "n") == 1
    assert direct.execute_command("HSET", "h", "a", b"\xff", "b", 2.5) == 2
    for command in [("GET", "k"), ("GET", "absent"), ("GET", "n"), ("EVAL", script, 1, "k", 41),
                    ("HGETALL", "h"), ("XLEN", "none")]:
        assert direct.execute_command(*command) == redis_client.execute_command(*command), command
    sha = redis_client.script_load(script)
    with pytest.raises(redis.exceptions.NoScriptError):
        direct.execute_command("EVALSHA", "0" * 40, 1, "k", 1)
    with pytest.raises(redis.ResponseError, match="wrong kind of value"):
        direct.execute_command("HGET", "k", "a")  # a string, not a hash
    # An error reply leaves the connection in step: the next reply is its own.
    assert direct.execute_command("EVALSHA", sha, 1, "k", 1)[1] == 2
    direct.close()


def test_direct_commands_send_several_and_read_their_replies_in_turn(
        redis_client: redis.Redis) -> None:
    """``send`` writes commands at once and hands back their replies one per call (an
    error reply returned, not raised); until all are read, another command on the
    thread is refused, since it would read their replies as its own."""
    direct = DirectCommands(redis_client)
    receive = direct.send([("EVAL", _SLOW_SCRIPT, 0, 20_000), ("EVALSHA", "0" * 40, 0),
                           ("INCR", "sent")])
    with pytest.raises(RuntimeError, match="every reply"):
        direct.execute_command("PING")
    assert receive() == b"late"
    assert isinstance(receive(), redis.exceptions.NoScriptError)
    assert receive() == 1
    assert direct.execute_command("GET", "sent") == b"1"  # in step again
    direct.close()


def test_direct_commands_use_one_connection_per_thread_and_per_process(
        redis_client: redis.Redis) -> None:
    direct = DirectCommands(redis_client)
    mine = direct.execute_command("CLIENT", "ID")
    assert direct.execute_command("CLIENT", "ID") == mine  # kept, not reopened
    theirs: list[int] = []
    worker = threading.Thread(target=lambda: theirs.append(direct.execute_command("CLIENT", "ID")))
    worker.start()
    worker.join()
    assert theirs and theirs[0] != mine
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked request worker must not share the parent's socket
        try:
            os.write(write, str(direct.execute_command("CLIENT", "ID")).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert int(os.read(read, 64)) not in (mine, theirs[0])
    os.close(read)
    assert direct.execute_command("CLIENT", "ID") == mine  # the child left it working
    direct.close()


def test_direct_commands_reconnect_after_a_restart_and_fail_visibly_while_down(
        outage_redis: EmbeddedRedis) -> None:
    direct = DirectCommands(connect(outage_redis.url, socket_timeout=0.5))
    direct.execute_command("SET", "k", "1")
    outage_redis.stop()
    with pytest.raises(redis.ConnectionError):
        direct.execute_command("GET", "k")
    outage_redis.start()
    assert direct.execute_command("GET", "k") == b"1"  # durable, and a new connection
    direct.close()


def test_direct_commands_drop_a_connection_that_timed_out(redis_url: str,
                                                          redis_client: redis.Redis) -> None:
    direct = DirectCommands(connect(redis_url, socket_timeout=0.2))
    redis_client.set("k", "mine")
    with pytest.raises(redis.TimeoutError):
        direct.execute_command("EVAL", _SLOW_SCRIPT, 0, 600_000)
    # Redis runs one command at a time: this answers once the script has ended and sent
    # its reply to the dropped connection.
    assert redis_client.ping()
    # The script's late reply must not answer the next command.
    assert direct.execute_command("GET", "k") == b"mine"
    direct.close()


def test_a_cluster_start_that_fails_midway_stops_the_nodes_it_launched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second node's binary is missing: the first node, already running, is stopped
    with the failure, not left behind."""
    import psutil

    from mlplatform import redisdb

    real = redisdb.redis_server_binary()
    binaries = iter([real, str(tmp_path / "no-such-redis-server")])
    monkeypatch.setattr(redisdb, "redis_server_binary", lambda: next(binaries))
    cluster = redisdb.EmbeddedCluster(tmp_path / "cluster")
    with pytest.raises(FileNotFoundError):
        cluster.start()
    node = tmp_path / "cluster" / "node-0"
    left = []
    for process in psutil.process_iter():
        try:
            if Path(process.cwd()) == node:
                left.append(process)
        except (psutil.Error, OSError):
            continue
    for process in left:
        process.kill()
    assert left == [], f"a node of the failed start still runs: {left}"
