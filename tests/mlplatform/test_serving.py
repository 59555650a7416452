"""Serving: `mlsuite serve` under the production server, several workers, one /metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlplatform.redisdb import EmbeddedRedis, connect, free_port
from mlplatform.serving import wait_ready

pytestmark = pytest.mark.slow


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a new connection each time
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def _serve(tmp_path: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path), **extra_env}
    return subprocess.Popen(
        [sys.executable, "-m", "mlplatform", "serve", "baseline-conventions",
         "--port", str(port), "--workers", "2"], env=env)


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[int]:
    port = free_port()
    proc = _serve(tmp_path, port, {"MLSUITE_REDIS_URL": redis_url})
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_metrics_count_every_request_across_worker_processes(server: int) -> None:
    # Connections held open at once are spread over the workers by the kernel; keep
    # opening more until both workers have answered (or give up after 64).
    conns: list[http.client.HTTPConnection] = []
    pids: set[int] = set()
    sent = 0
    while len(pids) < 2 and len(conns) < 64:
        conns.extend(http.client.HTTPConnection("127.0.0.1", server, timeout=5) for _ in range(8))
        for conn in conns:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200
            pids.add(json.loads(resp.read())["pid"])
            sent += 1
    for conn in conns:
        conn.close()
    assert len(pids) == 2, f"expected both workers to serve, saw pids {pids}"
    status, text = _get(server, "/metrics")
    match = re.search(rb'mlsuite_http_requests_total\{endpoint="/healthz",method="GET",'
                      rb'service="baseline",status="200"\} (\d+)', text)
    assert match and float(match.group(1)) == sent


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_embedded_redis_is_started_and_stopped_with_the_service(tmp_path: Path,
                                                                 stop: signal.Signals) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, {"MLSUITE_REDIS_URL": ""})
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
        assert ready["checks"]["redis"]["ok"] is True  # type: ignore[index]
        assert (tmp_path / "redis" / "redis.url").is_file()
    finally:
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    assert not (tmp_path / "redis" / "redis.url").exists()
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_a_stop_while_the_embedded_redis_loads_leaves_no_server_behind(
        tmp_path: Path, slow_aof: Callable[..., int], wait_for: Callable[..., Any]) -> None:
    """SIGTERM while the embedded server still loads its append-only file: the server is
    stopped too (left running, without its URL file, the next start would run a second
    server on the same file), and the file loads whole at the next start."""
    folder = tmp_path / "redis"
    keys = slow_aof(folder)
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path), "MLSUITE_REDIS_URL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlplatform", "serve", "baseline-conventions",
         "--port", str(free_port()), "--workers", "2"], env=env)
    try:
        wait_for("the embedded redis-server", lambda: _servers_in(folder), timeout=30)
        assert not (folder / "redis.url").exists(), "loaded already: make the file bigger"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = _servers_in(folder)  # serve waits for the server it stops before it exits
    for process in left:  # this test's failure must not leave a server behind either
        process.kill()
    assert left == [], f"redis-server still running in {folder}: {left}"
    with EmbeddedRedis(tmp_path) as server:
        assert connect(server.url).dbsize() == keys


def _servers_in(folder: Path) -> list[psutil.Process]:
    """The processes whose working folder is ``folder``."""
    found = []
    for process in psutil.process_iter():
        try:
            if Path(process.cwd()) == folder:
                found.append(process)
        except (psutil.Error, OSError):  # gone, or not ours to read
            continue
    return found


def test_an_interrupt_wrapped_during_start_up_still_stops_cleanly(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands while start-up imports a module reaches serve as Python 3.11's
    RuntimeError("Error calling __set_name__") raised from the KeyboardInterrupt (seen in
    a fresh-venv run: serve exited 1 with a traceback). It is still a requested stop:
    exit 0, and what had started is stopped."""
    from mlplatform import serving
    from mlplatform.stack import Stack

    class Landing:  # where the signal's KeyboardInterrupt lands: a class being created
        def __set_name__(self, owner: type, name: str) -> None:
            raise KeyboardInterrupt

    def start(self: Stack) -> dict[str, str]:
        type("Consumer", (), {"name": Landing()})
        raise AssertionError("unreachable")

    stopped: list[bool] = []
    real_stop = Stack.stop
    monkeypatch.setattr(Stack, "start", start)
    monkeypatch.setattr(Stack, "stop", lambda self: stopped.append(True) or real_stop(self))
    code = serving.serve("baseline", settings, port=free_port(), workers=1,
                         server="granian")
    assert code == 0 and stopped == [True]
    with pytest.raises(ValueError):  # anything else still propagates
        monkeypatch.setattr(Stack, "start", lambda self: int("x"))
        serving.serve("baseline", settings, port=free_port(), workers=1, server="granian")


_CTRL_C_IN_EXEC = """
import os, signal, sys
from pathlib import Path
from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.stack import Stack

def start(self):  # Ctrl-C lands in code that exec() runs from a string, as a dataclass's do
    exec("os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10 ** 7): pass",
         {"os": os, "signal": signal})
    raise AssertionError("not interrupted")

Stack.start = start
settings = Settings.from_env({}).with_(data_dir=Path(sys.argv[1]))
code = serving.serve("baseline", settings, port=8000, workers=1, server="granian")
print("serve returned", code, flush=True)
sys.exit(code)
"""


def test_a_ctrl_c_caught_during_start_up_still_exits_0_under_python_m(tmp_path: Path) -> None:
    """A Ctrl-C that lands in code run by exec() of a string (an import building a
    dataclass, say) and that serve catches: ``python -m`` still exits 0. CPython 3.11
    notes a bare KeyboardInterrupt leaving such code as unhandled, and ``python -m`` then
    kills itself with SIGINT after a clean exit (seen: status -2, nothing printed)."""
    (tmp_path / "ctrl_c_probe.py").write_text(_CTRL_C_IN_EXEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "ctrl_c_probe", str(tmp_path / "data")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "serve returned 0" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr


_SETTLE = """
import gc
from mlplatform import lifecycle
built = [[i] for i in range(20_000)]  # what an app's start-up leaves: long-lived containers
lifecycle.settle_server_worker()
print(gc.get_freeze_count(), len(gc.get_objects()))
"""


@pytest.mark.parametrize("under_server", [True, False], ids=["server-worker", "other"])
def test_a_server_worker_freezes_what_start_up_built(under_server: bool) -> None:
    """In a request worker (started with its server's instance token), what start-up built
    is frozen: a full collection no longer walks it (208 ms in a fraud worker). Anywhere
    else (tests, scripts) nothing is frozen, so their cycles are still collected."""
    env = {k: v for k, v in os.environ.items() if k != "MLSUITE_INSTANCE"}
    if under_server:
        env["MLSUITE_INSTANCE"] = "settle-test"
    # sh stays the parent (the "; true" keeps it from exec'ing python), as a server's
    # master does; settle_server_worker itself reads only the token.
    proc = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$SETTLE"; true'],
                          env={**env, "SETTLE": _SETTLE}, capture_output=True, text=True,
                          timeout=60, check=True)
    frozen, tracked = map(int, proc.stdout.split())
    if under_server:
        assert frozen > 20_000 and tracked < 1_000, proc.stdout + proc.stderr
    else:
        assert frozen == 0 and tracked > 20_000, proc.stdout + proc.stderr
