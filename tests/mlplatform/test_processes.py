"""Processes: request workers die with their master, readiness belongs to the server just
started, a busy port fails clearly, and `mlsuite serve` restarts a killed server.

Real granian servers of the ``baseline-conventions`` service (mlsuite's HTTP conventions,
no model), on the session's real Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.lifecycle import Backoff, PortInUse
from mlplatform.redisdb import free_port

pytestmark = pytest.mark.slow

SERVICE = "baseline-conventions"


def _running(pids: list[int]) -> list[int]:
    """The pids still running (a zombie waiting for a non-reaping init has finished)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture
def start(settings: Settings, redis_url: str) -> Iterator[Callable[..., serving.ServerProcess]]:
    """Start a real granian server of SERVICE (2 workers), stopped after the test."""
    procs: list[serving.ServerProcess] = []

    def run(port: int, *, wait: bool = True) -> serving.ServerProcess:
        proc = serving.spawn(SERVICE, settings, port=port, workers=2, server="granian",
                             redis_url=redis_url)
        procs.append(proc)
        if wait:
            serving.wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
        return proc

    yield run
    for proc in procs:
        serving.stop_process(proc)


def test_request_workers_exit_when_their_master_is_killed(
        start: Callable[..., serving.ServerProcess], wait_for: Callable[..., Any]) -> None:
    port = free_port()
    master = start(port)
    workers = wait_for("two request workers",
                       lambda: [c.pid for c in psutil.Process(master.pid).children()]
                       if len(psutil.Process(master.pid).children()) == 2 else None, timeout=30)
    master.send_signal(signal.SIGKILL)
    master.wait()
    wait_for(f"the orphaned request workers {workers} to exit", lambda: not _running(workers),
             timeout=10)
    with pytest.raises(OSError):  # nothing answers on the port any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_second_server_on_a_busy_port_fails_naming_the_port_and_pid(
        start: Callable[..., serving.ServerProcess]) -> None:
    port = free_port()
    first = start(port)
    holders = {first.pid, *(c.pid for c in psutil.Process(first.pid).children())}
    with pytest.raises(PortInUse) as err:
        start(port, wait=False)
    message = str(err.value)
    assert f"port {port}" in message, message
    assert any(f"pid {pid}" in message for pid in holders), message


def test_a_server_left_on_the_port_is_not_taken_for_the_new_one(
        start: Callable[..., serving.ServerProcess]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stale = start(port)
    assert _get_json(url + "/readyz")["instance"] == stale.instance
    # A supervisor expecting another start takes the answer for a shared port, not for
    # its readiness, and says so at once instead of waiting out its timeout.
    with pytest.raises(PortInUse, match=f"answered as another server.*port {port}"):
        serving.wait_ready(url, timeout=30, instance="0123456789abcdef")
    assert serving.wait_ready(url, timeout=10, proc=stale)["instance"] == stale.instance


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_minute() -> None:
    backoff = Backoff(first=1, cap=30, reset_after=60)
    delays = []
    now = 0.0
    for _ in range(7):
        delays.append(backoff.failed(now))
        now += delays[-1]
        backoff.started(now)
        now += 0.5  # dies half a second after each start
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    backoff.started(now)
    assert backoff.failed(now + 61) == 1


def _serve(tmp_path: Path, port: int, redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path / "data"),
           "MLSUITE_REDIS_URL": redis_url}
    return subprocess.Popen([sys.executable, "-m", "mlplatform", "serve", SERVICE,
                             "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.PIPE, text=True)


def test_serve_restarts_a_killed_server_which_answers_again(
        tmp_path: Path, redis_url: str, wait_for: Callable[..., Any]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    supervisor = _serve(tmp_path, port, redis_url)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(supervisor.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        wait_for("serve to print its URL", lambda: f"{SERVICE}: {url}\n" in lines, timeout=90)
        first = _get_json(url + "/readyz")["instance"]
        masters = [p for p in psutil.Process(supervisor.pid).children()
                   if "granian" in " ".join(p.cmdline())]
        assert len(masters) == 1, masters
        masters[0].send_signal(signal.SIGKILL)

        def answers_again() -> str | None:
            try:
                instance = _get_json(url + "/readyz")["instance"]
            except OSError:
                return None
            return instance if instance != first else None

        wait_for("the restarted server to answer /readyz", answers_again, timeout=60)
        wait_for("serve to report the restart",
                 lambda: f"restarts: {SERVICE} 1\n" in lines, timeout=10)
        assert supervisor.poll() is None, "serve must keep running after its server died"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
    with pytest.raises(OSError):  # SIGTERM stopped the restarted server too
        urllib.request.urlopen(url + "/healthz", timeout=2)


def test_file_lock_makes_runs_on_one_folder_take_turns(tmp_path: Path) -> None:
    import threading
    import time

    from mlplatform.lifecycle import file_lock

    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with file_lock(tmp_path / ".feast.lock"):
            order.append("first in")
            inside.set()
            time.sleep(0.3)  # hold it while the second one asks (not a wait for a condition)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(5)
    with file_lock(tmp_path / ".feast.lock"):
        order.append("second in")
    thread.join(5)
    assert order == ["first in", "first out", "second in"]
