"""Serving: run a service under a production WSGI server with several worker processes.

``mlsuite serve`` is a small supervisor: it makes sure Redis is there (the embedded
server when ``MLSUITE_REDIS_URL`` is unset), prepares the folder prometheus-client's
multiprocess mode needs, starts the WSGI server as a child process with the settings in
its environment, and on Ctrl-C or SIGTERM stops the server and then the embedded Redis.

The server is granian by default (it served a minimal Flask endpoint at ~4x gunicorn's
rate on the 2-core reference machine; see README); gunicorn is kept as the alternative.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

from mlplatform.config import Settings
from mlplatform.errors import ConfigError

__all__ = ["service_names", "service_target", "service_interface", "server_command", "spawn", "spawn_worker",
           "metrics_dir", "wait_ready",
           "stop_process", "serve", "sigterm_interrupts", "data_ready"]

log = logging.getLogger(__name__)


# WSGI services (Flask) and ASGI services (GraphQL, which needs websockets) are two
# entry-point groups: the group says which interface the server speaks.
_GROUPS = {"mlsuite.services": "wsgi", "mlsuite.asgi_services": "asgi"}


def service_names() -> list[str]:
    return sorted(ep.name for group in _GROUPS for ep in entry_points(group=group))


def service_interface(service: str) -> str:
    """``wsgi`` or ``asgi``: what the server must speak to ``service``."""
    for group, interface in _GROUPS.items():
        if any(ep.name == service for ep in entry_points(group=group)):
            return interface
    raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(service_names())}")


def service_target(service: str) -> str:
    """The ``module:factory`` of a service, from the services' entry points."""
    for group in _GROUPS:
        for ep in entry_points(group=group):
            if ep.name == service:
                return ep.value
    raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(service_names())}")


def server_command(target: str, *, host: str, port: int, workers: int, server: str,
                   threads: int = 1, interface: str = "wsgi") -> list[str]:
    """The command line that serves the app factory ``target``."""
    if interface == "asgi":  # granian only: gunicorn has no ASGI worker of its own
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                "--host", host, "--port", str(port), "--workers", str(workers),
                "--log-level", "warning", "--respawn-failed-workers",
                "--workers-kill-timeout", "10", target]
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory",
                "--host", host, "--port", str(port), "--workers", str(workers),
                "--blocking-threads", str(threads), "--no-ws", "--log-level", "warning",
                "--respawn-failed-workers", "--workers-kill-timeout", "10", target]
    if server == "gunicorn":
        module, factory = target.split(":")
        return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}",
                "--workers", str(workers), "--threads", str(threads),
                "--worker-class", "sync" if threads == 1 else "gthread", "--log-level", "warning",
                "--config", "python:mlplatform.gunicorn_conf", f"{module}:{factory}()"]
    raise ConfigError(f"MLSUITE_SERVER must be granian or gunicorn, got {server!r}")


def metrics_dir(settings: Settings, service: str, port: int) -> Path:
    """The prometheus multiprocess folder of one running service (and its worker)."""
    return settings.data_dir / "run" / f"prometheus-{service}-{port}"


def spawn(service: str, settings: Settings, *, port: int, workers: int, server: str,
          redis_url: str) -> subprocess.Popen[bytes]:
    """Start one service's WSGI server as a child process."""
    prom_dir = metrics_dir(settings, service, port)
    shutil.rmtree(prom_dir, ignore_errors=True)  # values of an earlier run would be summed in
    prom_dir.mkdir(parents=True)
    env = {
        **os.environ,
        **settings.as_env(),
        "MLSUITE_REDIS_URL": redis_url,
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "OPENBLAS_NUM_THREADS": "1",
    }
    cmd = server_command(service_target(service), host=settings.host, port=port,
                         workers=workers, server=server, threads=settings.threads,
                         interface=service_interface(service))
    log.info("starting %s: %s with %d workers on %s:%d", service, server, workers,
             settings.host, port)
    return subprocess.Popen(cmd, env=env)


def spawn_worker(service: str, settings: Settings, *, redis_url: str,
                 metrics: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``mlsuite worker SERVICE`` as a child process; with ``metrics``, its metrics
    go to that service's multiprocess folder, so the service's /metrics includes them."""
    env = {**os.environ, **settings.as_env(), "MLSUITE_REDIS_URL": redis_url,
           "OPENBLAS_NUM_THREADS": "1"}
    if metrics is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log.info("starting the %s worker", service)
    return subprocess.Popen([sys.executable, "-m", "mlplatform", "worker", service], env=env)


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               path: str = "/readyz") -> dict[str, object]:
    """Poll ``url + path`` until it answers 200 (its JSON body); raise with the last answer."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as resp:
                return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: servers finish in-flight requests on SIGTERM."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt like Ctrl-C, so one cleanup path serves both."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(service: str, settings: Settings, *, port: int, workers: int, server: str) -> int:
    """Run ``service`` until Ctrl-C / SIGTERM; returns the exit status."""
    from mlplatform.stack import Stack

    stack = Stack(settings, [service], server=server, workers=workers, name="serve",
                  ports={service: port}, private_redis=False, say=log.info)
    try:
        with sigterm_interrupts():
            urls = stack.start()
            print(f"{service}: {urls[service]}", flush=True)
            while not stack.dead():
                time.sleep(0.2)
            log.error("%s exited", service)
            return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def data_ready(data_dir: Path) -> bool:
    """Whether simulated (or real) data files are present in the data folder."""
    return (data_dir / "shop" / "interactions.parquet").is_file() and (
        data_dir / "payments" / "transactions.parquet").is_file()
