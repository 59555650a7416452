"""Serving: run a service under a production WSGI server with several worker processes.

``mlsuite serve`` is a small supervisor: it makes sure Redis is there (the embedded
server when ``MLSUITE_REDIS_URL`` is unset), prepares the folder prometheus-client's
multiprocess mode needs, starts the WSGI server as a child process with the settings in
its environment, restarts it with backoff when it dies, and on Ctrl-C or SIGTERM stops
the server and then the embedded Redis.

Every child dies with the process that started it, and each server start has its own
instance token, which ``wait_ready`` insists on (see ``mlplatform.lifecycle``).

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
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

from mlplatform import lifecycle
from mlplatform.config import Settings
from mlplatform.errors import ConfigError

__all__ = ["service_names", "service_target", "service_interface", "server_command", "spawn", "spawn_worker",
           "ServerProcess", "metrics_dir", "wait_ready",
           "stop_process", "serve", "sigterm_interrupts", "Interrupted", "stop_requests", "StopRequest",
           "data_ready"]

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


class ServerProcess(subprocess.Popen[bytes]):
    """A server's master process, with the instance token its /readyz answers with."""

    instance: str = ""
    # Only the WSGI services report their token (mlplatform.http); the ASGI ones may not yet.
    reports_instance: bool = False


# Services that run one request worker whatever is asked: the console's collector
# scrapes, evaluates alerts and posts the webhook from its process, so two would
# double every scrape and every alert notification.
SINGLE_PROCESS = frozenset({"console"})


def _popen(cmd: list[str], env: dict[str, str]) -> ServerProcess:
    # The child dies with us (SIGTERM), even when we are SIGKILLed. The signal is tied
    # to the thread that forks: start servers from a thread that lives as long as they do.
    # Its own process group: a terminal's Ctrl-C reaches only us, and we stop the
    # children in order (workers, then servers, then Redis) instead of all at once.
    parent = os.getpid()
    return ServerProcess(cmd, env=env, process_group=0,
                         preexec_fn=lambda: lifecycle.preexec_die_with_parent(parent))


def spawn(service: str, settings: Settings, *, port: int, workers: int, server: str,
          redis_url: str, fresh_metrics: bool = True) -> ServerProcess:
    """Start one service's WSGI server as a child process; ``PortInUse`` if ``port`` is
    taken (a server left running there would answer for this one).

    ``fresh_metrics=False`` (a restart) keeps the multiprocess metrics folder: counters
    go on from where the dead server left them, as across a worker respawn.
    """
    lifecycle.check_port_free(settings.host, port)
    if service in SINGLE_PROCESS and workers != 1:
        log.info("%s runs one worker process (asked for %d): its collector is per process",
                 service, workers)
        workers = 1
    prom_dir = metrics_dir(settings, service, port)
    if fresh_metrics:  # values of an earlier run would be summed in
        shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True, exist_ok=True)
    token = lifecycle.new_instance()
    env = {
        **os.environ,
        **settings.as_env(),
        "MLSUITE_REDIS_URL": redis_url,
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "OPENBLAS_NUM_THREADS": "1",
        lifecycle.INSTANCE_VAR: token,
    }
    interface = service_interface(service)
    cmd = server_command(service_target(service), host=settings.host, port=port,
                         workers=workers, server=server, threads=settings.threads,
                         interface=interface)
    log.info("starting %s: %s with %d workers on %s:%d (instance %s)", service, server,
             workers, settings.host, port, token)
    proc = _popen(cmd, env)
    proc.instance, proc.reports_instance = token, interface == "wsgi"
    return proc


def spawn_worker(service: str, settings: Settings, *, redis_url: str,
                 metrics: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``mlsuite worker SERVICE`` as a child process; with ``metrics``, its metrics
    go to that service's multiprocess folder, so the service's /metrics includes them."""
    env = {**os.environ, **settings.as_env(), "MLSUITE_REDIS_URL": redis_url,
           "OPENBLAS_NUM_THREADS": "1"}
    env.pop(lifecycle.INSTANCE_VAR, None)  # a worker is no server's request worker
    if metrics is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log.info("starting the %s worker", service)
    return _popen([sys.executable, "-m", "mlplatform", "worker", service], env)


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               path: str = "/readyz", instance: str | None = None) -> dict[str, object]:
    """Poll ``url + path`` until it answers 200 (its JSON body); raise with the last answer.

    Only the server just started counts: an answer naming another instance means a
    second server shares the port (granian's listeners set SO_REUSEPORT, so one started
    in the moment between our port check and our bind joins it): ``PortInUse`` at once.
    The expected token is ``instance``, else that of ``proc`` when it is a
    ``ServerProcess`` whose service reports it.
    """
    if instance is None and isinstance(proc, ServerProcess) and proc.reports_instance:
        instance = proc.instance
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as resp:
                body = json.loads(resp.read() or b"{}")
            if not instance or body.get("instance") == instance:
                return body  # type: ignore[no-any-return]
            port = urllib.parse.urlsplit(url).port or 80
            holders = ", ".join(lifecycle.port_listeners(port)) or "unknown processes"
            raise lifecycle.PortInUse(
                f"{url} answered as another server (instance {body.get('instance')!r}, "
                f"expected {instance!r}): port {port} is shared with {holders}")
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


class Interrupted(KeyboardInterrupt):
    """What ``sigterm_interrupts`` raises for SIGTERM and Ctrl-C: a KeyboardInterrupt, but
    not the built-in one itself.

    CPython 3.11 notes a bare KeyboardInterrupt that leaves code run by ``exec``/``eval``
    of a string (``dataclasses`` and ``namedtuple`` build their methods that way, so any
    import can) as "unhandled", even when a caller catches it; ``python -m ...`` then ends
    with ``kill(getpid(), SIGINT)`` after its clean exit (seen: ``mlsuite serve`` stopped
    everything, then died by SIGINT with nothing printed). Only the exact built-in type is
    noted, so a subclass is not.
    """


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM and Ctrl-C raise ``Interrupted``, so one cleanup path serves both.

    Ctrl-C is taken over only from Python's default handler: an ignored SIGINT (a
    process started in the background) stays ignored.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        raise Interrupted

    taken = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    with _handling(taken, interrupt):
        yield


@contextlib.contextmanager
def _handling(signals: list[signal.Signals],
              handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Inside, ``handler`` handles ``signals``; their previous handlers are put back after."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopRequest:
    """What ``stop_requests`` noted: the first stop signal's name, or None."""

    __slots__ = ("signal",)

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Inside, SIGTERM and Ctrl-C only note that a stop was asked; a supervisor's loop
    checks between its passes and then stops everything in order.

    For the loop that runs once everything has started. ``sigterm_interrupts``'s
    KeyboardInterrupt can land anywhere, midway through a restart or inside a library's
    own cleanup; a noted request is acted on where the loop chooses.
    """
    request = StopRequest()

    def note(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if request.signal is None:
            log.info("received %s, shutting down", name)
            request.signal = name

    with _handling([signal.SIGTERM, signal.SIGINT], note):
        yield request


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt or was raised from one. During start-up
    ``sigterm_interrupts`` raises it wherever the main thread is, and some places wrap it:
    inside an import's class creation Python 3.11 raises ``RuntimeError("Error calling
    __set_name__ ...")`` from it (seen: SIGINT while ``Stack.start`` imported a module).

    >>> try:
    ...     try:
    ...         raise KeyboardInterrupt
    ...     except KeyboardInterrupt as e:
    ...         raise RuntimeError("wrapped") from e
    ... except RuntimeError as e:
    ...     interrupted(e), interrupted(ValueError())
    (True, False)
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def serve(service: str, settings: Settings, *, port: int, workers: int, server: str,
          restart: bool = True) -> int:
    """Run ``service`` until Ctrl-C / SIGTERM, restarting it when it dies (with
    ``restart``); returns the exit status."""
    from mlplatform.stack import Stack

    stack = Stack(settings, [service], server=server, workers=workers, name="serve",
                  ports={service: port}, private_redis=False, say=log.info, restart=restart,
                  client_key=False)
    try:
        with sigterm_interrupts():
            urls = stack.start()
            with stop_requests() as stop:
                print(f"{service}: {urls[service]}", flush=True)
                reported = 0
                while not stop and not (dead := stack.supervise()):
                    total = sum(stack.restarts.values())
                    if total != reported:  # one line per restart, for people and scripts
                        reported = total
                        counts = ", ".join(f"{k} {n}"
                                           for k, n in sorted(stack.restarts.items()))
                        print(f"restarts: {counts}", flush=True)
                    time.sleep(0.2)
                if stop:
                    return 0
            log.error("%s exited", ", ".join(dead))
            return 1
    except BaseException as exc:
        if not interrupted(exc):
            raise
        return 0
    finally:
        # A second Ctrl-C or SIGTERM while stopping is noted, not raised: the stop goes on
        # in order instead of leaving servers or Redis behind.
        with stop_requests():
            stack.stop()


def data_ready(data_dir: Path) -> bool:
    """Whether simulated (or real) data files are present in the data folder."""
    return (data_dir / "shop" / "interactions.parquet").is_file() and (
        data_dir / "payments" / "transactions.parquet").is_file()
