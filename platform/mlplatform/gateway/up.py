"""``mlsuite up``: N replicas of each app service behind HAProxy, on this machine.

One ``Stack`` prepares what every replica shares (data, Redis, Feast, production models,
the run's API key) and starts the first replica of each app, the console and one
background worker per app (workers share consumer groups and leases, so one is enough
here and more would only take CPU from the request workers). Replicas 2..N are more
``serving.spawn`` servers on free ports with the same Redis: nothing in a replica's
memory is state another needs. The GraphQL service calls the apps through the gateway,
so its calls are balanced and fail over; the console scrapes the first replica of each
app directly, since its rates come from one process set's counters (through the
gateway, successive scrapes would hit different replicas' counters).

HAProxy starts last, once every replica answers ``/readyz``, so the printed gateway URL
works at once. With ``restart``, a dead replica is started again after a backoff (the
gateway routes around it meanwhile); a dead HAProxy ends the run. Ctrl-C stops HAProxy,
then the replicas, then the stack (workers, servers, the key, Redis).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.errors import ConfigError
from mlplatform.gateway.haproxy import (
    PREFIXED,
    GatewayConfig,
    Server,
    check_config,
    find_haproxy,
    render,
    spawn_haproxy,
)
from mlplatform.gateway.stats import show_stat
from mlplatform.lifecycle import Backoff, PortInUse, check_port_free
from mlplatform.redisdb import free_port
from mlplatform.stack import APP_SERVICES, Stack

__all__ = ["ScaleOut", "Replica", "print_urls", "DEFAULT_SERVICES", "DEFAULT_GATEWAY_PORT"]

log = logging.getLogger(__name__)

DEFAULT_SERVICES = ("recommender", "fraud", "console", "graphql")
DEFAULT_GATEWAY_PORT = 8080
# Where a person starts with a service, when that is not its root.
_PATHS = {"graphql": "/graphql"}


@dataclass
class Replica:
    """One server of a pool: ``fraud-2`` at its own port (``console`` and ``graphql``
    run once and keep their service name)."""

    service: str
    index: int
    port: int
    url: str
    proc: serving.ServerProcess | None = None  # None: the Stack owns it (replica 1)
    backoff: Backoff = field(default_factory=Backoff)
    due: float | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}" if self.service in APP_SERVICES else self.service


class ScaleOut:
    """Start ``replicas`` of each app in ``services``, the console and GraphQL once each,
    and (with ``gateway``) HAProxy on ``gateway_port``; stop them all together."""

    def __init__(self, settings: Settings, *, replicas: int,
                 services: Sequence[str] = DEFAULT_SERVICES, gateway: bool = True,
                 gateway_port: int = DEFAULT_GATEWAY_PORT, server: str, workers: int,
                 name: str = "up", private_redis: bool = False, restart: bool = True,
                 rate_limit: float = 0.0, server_maxconn: int = 32,
                 say: Callable[[str], None] = print) -> None:
        if replicas < 1:
            raise ConfigError(f"replicas must be an integer >= 1, got {replicas}")
        for service in services:
            serving.service_target(service)  # unknown names fail before any work
        self.haproxy = find_haproxy() if gateway else None
        if gateway and self.haproxy is None:
            raise ConfigError("haproxy not found on PATH or in /usr/sbin: install it "
                              "(apt-get install haproxy) or run without the gateway")
        self.settings = settings
        self.replicas = replicas
        self.services = list(services)
        self.gateway = gateway
        self.gateway_port = gateway_port
        self.server = server
        self.workers = workers
        self.name = name
        self.private_redis = private_redis
        self.restart = restart
        self.rate_limit = rate_limit
        self.server_maxconn = server_maxconn
        self.say = say
        self.apps = [s for s in self.services if s in APP_SERVICES]
        first = [*self.apps, *(["console"] if "console" in self.services else [])]
        self.stack = Stack(settings, first, server=server, workers=workers, name=name,
                           say=say, private_redis=private_redis, restart=restart,
                           client_key=True)
        self.pools: dict[str, list[Replica]] = {}
        self._gateway_proc: subprocess.Popen[bytes] | None = None
        self._gateway_dir: Path | None = None

    # -- start ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.stack.settings.host

    @property
    def gateway_url(self) -> str | None:
        return f"http://{self.host}:{self.gateway_port}" if self.gateway else None

    @property
    def api_key(self) -> str | None:
        return self.stack.api_key

    @property
    def auth_headers(self) -> dict[str, str]:
        return self.stack.auth_headers

    @property
    def stats_socket(self) -> Path | None:
        return None if self._gateway_dir is None else self._gateway_dir / "stats.sock"

    def start(self) -> dict[str, str]:
        """Start everything; ``{replica name: URL}`` (and ``gateway``)."""
        if self.gateway:  # before the minutes of preparation, not after
            check_port_free(self.host, self.gateway_port)
        self.stack.start()
        for service in self.stack.services:
            self.pools[service] = [Replica(service, 1, self.stack.ports[service],
                                           self.stack.urls[service])]
        for service in self.apps:
            for index in range(2, self.replicas + 1):
                port = free_port(self.host)
                replica = Replica(service, index, port, f"http://{self.host}:{port}")
                self.pools[service].append(replica)
                self._spawn(replica, fresh_metrics=True)
        if "graphql" in self.services:
            port = free_port(self.host)
            graphql = Replica("graphql", 1, port, f"http://{self.host}:{port}")
            self.pools["graphql"] = [graphql]
            self._spawn(graphql, fresh_metrics=True)
        for replica in self._own():
            self._wait(replica)
            self.say(f"{replica.name}: {replica.url} ({self.server}, {self.workers} workers)")
        if self.gateway:
            self._start_gateway()
        return self.urls()

    def urls(self) -> dict[str, str]:
        out = {r.name: r.url for pool in self.pools.values() for r in pool}
        if self.gateway_url:
            out["gateway"] = self.gateway_url
        return out

    def _own(self) -> list[Replica]:
        """The servers this run started itself (not the Stack's)."""
        return [r for pool in self.pools.values() for r in pool if r.proc is not None]

    def _settings_for(self, service: str) -> Settings:
        settings = self.stack.settings
        if service == "graphql" and self.gateway_url:
            # Through the gateway: balanced and failing over, unless configured elsewhere.
            settings = settings.with_(**{
                f"{app}_url": f"{self.gateway_url}/{app}" for app in PREFIXED
                if getattr(self.settings, f"{app}_url") is None and app in self.apps})
        return settings

    def _spawn(self, replica: Replica, *, fresh_metrics: bool) -> None:
        replica.proc = serving.spawn(
            replica.service, self._settings_for(replica.service), port=replica.port,
            workers=self.workers, server=self.server,
            redis_url=self.stack.settings.redis_url or "", fresh_metrics=fresh_metrics)
        replica.backoff.started(time.monotonic())

    def _wait(self, replica: Replica) -> None:
        serving.wait_ready(replica.url, timeout=180, proc=replica.proc)

    def gateway_config(self) -> GatewayConfig:
        """The HAProxy configuration of this run's replicas."""
        pools = {service: [Server(r.name, self.host, r.port) for r in replicas]
                 for service, replicas in self.pools.items()}
        return GatewayConfig(port=self.gateway_port, host=self.host, pools=pools,
                             rate_limit=self.rate_limit, server_maxconn=self.server_maxconn,
                             stats_socket=self.stats_socket,
                             extra_comment=f"run {self.name!r}: {self.replicas} replicas "
                                           "per app service")

    def _start_gateway(self) -> None:
        assert self.haproxy is not None
        # A short private folder: a unix socket path must stay under ~107 bytes.
        self._gateway_dir = Path(tempfile.mkdtemp(prefix="mlsuite-gw-"))
        text = render(self.gateway_config())
        check_config(text, self.haproxy)
        path = self._gateway_dir / "haproxy.cfg"
        path.write_text(text)
        check_port_free(self.host, self.gateway_port)
        self._gateway_proc = spawn_haproxy(path, self.haproxy)
        self._wait_gateway()
        self.say(f"gateway: {self.gateway_url} (HAProxy; config {path}, stats socket "
                 f"{self.stats_socket}: mlsuite gateway stats --socket {self.stats_socket})")

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        """Until HAProxy answers and sees every server up."""
        assert self._gateway_proc is not None and self.stats_socket is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._gateway_proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with status {self._gateway_proc.returncode}")
            try:
                states = show_stat(self.stats_socket)
                down = sorted(n for n, s in states.items() if not s.status.startswith("UP"))
                if states and not down:
                    return
                last = f"servers not up: {', '.join(down) or 'none listed'}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"gateway {self.gateway_url} not ready after {timeout:.0f}s: {last}")

    # -- running -------------------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        for pool in self.pools.values():
            for replica in pool:
                if replica.name == name:
                    return replica
        known = ", ".join(r.name for pool in self.pools.values() for r in pool)
        raise KeyError(f"no replica {name!r}; this run has {known}")

    def pid(self, name: str) -> int:
        """The server master's pid of replica ``name`` (``fraud-2``)."""
        replica = self.replica(name)
        if replica.proc is None:
            return self.stack.pid(replica.service)
        return replica.proc.pid

    def restart_replica(self, name: str) -> None:
        """Start replica ``name`` again on its port (after it died); ready on return.

        Replica 1 of each app belongs to the Stack, whose supervisor restarts it."""
        replica = self.replica(name)
        if replica.proc is None:
            raise ValueError(f"{name} is restarted by the stack's supervisor (restart=True)")
        if replica.proc.poll() is None:
            serving.stop_process(replica.proc)
        self._wait_port_free(replica)
        self._spawn(replica, fresh_metrics=False)
        self._wait(replica)

    def _wait_port_free(self, replica: Replica, timeout: float = 15.0) -> None:
        # A killed master's request workers take a moment to finish and close the port.
        deadline = time.monotonic() + timeout
        while True:
            try:
                check_port_free(self.host, replica.port)
                return
            except PortInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def supervise(self) -> list[str]:
        """One supervision pass; the processes that stay dead (HAProxy always does)."""
        dead = list(self.stack.supervise())
        now = time.monotonic()
        for replica in self._own():
            proc = replica.proc
            if proc is None or proc.poll() is None:
                continue
            if not self.restart:
                dead.append(replica.name)
            elif replica.due is None:
                delay = replica.backoff.failed(now)
                replica.due = now + delay
                log.error("%s exited with status %s; restarting in %.0f s", replica.name,
                          proc.returncode, delay)
            elif now >= replica.due:
                replica.due = None
                try:
                    self.restart_replica(replica.name)
                except (PortInUse, RuntimeError, TimeoutError) as exc:
                    log.error("%s: restart failed: %s", replica.name, exc)
                    if replica.proc is not None:
                        serving.stop_process(replica.proc)
                    continue
                replica.restarts += 1
                log.warning("%s restarted at %s (restart %d)", replica.name, replica.url,
                            replica.restarts)
        if self._gateway_proc is not None and self._gateway_proc.poll() is not None:
            dead.append("gateway")
        return dead

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop HAProxy, the replicas this run started, then the stack; safe twice."""
        if self._gateway_proc is not None:
            serving.stop_process(self._gateway_proc)
            self._gateway_proc = None
        if self._gateway_dir is not None:
            shutil.rmtree(self._gateway_dir, ignore_errors=True)
            self._gateway_dir = None
        for replica in self._own():
            if replica.proc is not None:
                serving.stop_process(replica.proc)
                # serving.spawn's multiprocess metrics folder: nothing reads it afterwards
                shutil.rmtree(serving.metrics_dir(self.stack.settings, replica.service,
                                                  replica.port), ignore_errors=True)
        self.pools.clear()
        self.stack.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def print_urls(run: ScaleOut, echo: Callable[[str], None] = print) -> None:
    """The lines ``mlsuite up`` prints: the gateway and its routes, each replica, the key."""
    if run.gateway_url:
        routes = [f"/{s}" for s in PREFIXED if s in run.apps]
        routes += ["/graphql"] if "graphql" in run.pools else []
        routes += ["/ (console)"] if "console" in run.pools else []
        echo(f"gateway: {run.gateway_url}  routes: {', '.join(routes)}")
    for pool in run.pools.values():
        for replica in pool:
            echo(f"{replica.name}: {replica.url}{_PATHS.get(replica.service, '')}")
    if run.api_key:  # every scope; revoked when the run stops
        echo(f"api key: {run.api_key}")
