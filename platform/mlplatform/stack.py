"""A throwaway stack for measurements: services on free loopback ports, stopped together.

``mlsuite bench`` and ``mlsuite loadtest`` (when given no hosts) need the same thing:
data in the data folder (simulated if missing), Redis, Feast definitions applied and
materialized, a production model for each app (the apps' ``ensure_model`` hooks, as
``mlsuite demo`` runs them) and each service under the production server on its own
free port on 127.0.0.1. Everything started here is stopped on exit, Ctrl-C included.

Redis is ``MLSUITE_REDIS_URL`` when set; otherwise a private embedded server in
``<data_dir>/run/<name>/``, deleted afterwards, so a benchmark neither reads nor pollutes
the demo's Redis (events, velocity counters, decisions) and never shares its CPU with a
demo still running.

With ``restart=True`` (``mlsuite serve``), ``supervise()`` starts a dead server or
worker again after a backoff (1 s doubling to 30 s, back to 1 s after a minute up) and
counts the restarts; otherwise a death ends the run, as the demo and benchmarks want.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.lifecycle import Backoff, PortInUse, check_port_free, file_lock
from mlplatform.redisdb import EmbeddedRedis, connect, free_port
from mlplatform.serving import sigterm_interrupts

__all__ = ["APP_SERVICES", "Stack", "sigterm_interrupts"]

log = logging.getLogger(__name__)

APP_SERVICES = ("recommender", "fraud")
LOOPBACK = "127.0.0.1"


class Stack:
    """Start ``services`` (names of "mlsuite.services" entry points) for one run."""

    def __init__(self, settings: Settings, services: Sequence[str], *, server: str, workers: int,
                 name: str = "bench", say: Callable[[str], None] = print,
                 ports: Mapping[str, int] | None = None, private_redis: bool = True,
                 background: bool = True, restart: bool = False, client_key: bool = True,
                 workers_for: Mapping[str, int] | None = None,
                 wait_workers: bool = True) -> None:
        for service in services:
            serving.service_target(service)  # unknown names fail before any work
        # Measurements stay on loopback; demo and serve keep the configured address.
        self.settings = settings.with_(host=LOOPBACK) if private_redis else settings
        self.fixed_ports = dict(ports or {})
        self.private_redis = private_redis
        self.services = list(services)
        self.server = server
        self.workers = workers
        # Request workers per service where it differs from ``workers``; the console always
        # runs one (each of its processes scrapes and alerts on its own).
        self.workers_for = {**(workers_for or {}), **{s: 1 for s in serving.SINGLE_PROCESS}}
        self.name = name
        self.say = say
        self.urls: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._workers: dict[str, subprocess.Popen[bytes]] = {}
        # Run each app's background worker beside its server (the production topology).
        self.background = background
        self._redis: EmbeddedRedis | None = None
        self.restart = restart
        # With API keys on and no MLSUITE_API_KEY, a run makes a key for its own clients
        # (console, bench, load tests, the traffic simulator) and revokes it when it stops.
        self.client_key = client_key
        # Whether start() returns only once the background workers run (bench and tests
        # measure with them); the demo returns when the servers answer, and says when
        # each worker runs: they read durable streams, so nothing waits on them meanwhile.
        self.wait_workers = wait_workers
        self._key_id = ""
        # Per process ("fraud", "fraud worker"): successful restarts, the backoff, and
        # when a dead one is due to start again.
        self.restarts: dict[str, int] = {}
        self._backoff: dict[str, Backoff] = {}
        self._due: dict[str, float] = {}
        self._redis_url = ""

    @property
    def run_dir(self) -> Path:
        return self.settings.data_dir / "run" / self.name

    def start(self) -> dict[str, str]:
        """Prepare and start everything; returns ``{service: base URL}``."""
        apps = [s for s in self.services if s in APP_SERVICES]
        if apps:
            self._ensure_data()
        if self.settings.redis_url:
            redis_url = self.settings.redis_url
        elif self.private_redis:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._redis = EmbeddedRedis(self.run_dir)
            redis_url = self._redis.start()
            self.say(f"redis: private embedded server {redis_url}")
            # What a private run archives stays with it, out of the data folder's lake.
            self.settings = self.settings.with_(lake_dir=self.run_dir / "lake")
        else:  # the data folder's own embedded server: its data outlives this run
            self._redis = EmbeddedRedis(self.settings.data_dir)
            redis_url = self._redis.start()
            self.say(f"redis: embedded server {redis_url}")
        self.settings = self.settings.with_(redis_url=redis_url)
        self._redis_url = redis_url
        if self.settings.auth and not self.settings.api_key and self.client_key:
            self._make_key(redis_url)
        if apps:
            from mlplatform.demo import prepare_sources

            prepare_sources(self.settings, apps)
            self._prepare_features(private_redis=self.private_redis and self._redis is not None)
            from mlplatform.demo import prepare_models

            self.say(f"models: making sure {', '.join(apps)} have a production model")
            prepare_models(self.settings, apps)
        for service in self.services:
            self.ports[service] = self.fixed_ports.get(service) or free_port(self.settings.host)
            self.urls[service] = f"http://{self.settings.host}:{self.ports[service]}"
        # The console and GraphQL call the services of this stack over HTTP.
        self.settings = self.settings.with_(**{
            f"{app}_url": self.urls[app] for app in apps
            if getattr(self.settings, f"{app}_url") is None})
        for service in self.services:  # all ports first: fail before starting anything
            check_port_free(self.settings.host, self.ports[service])
        for service in self.services:
            self._spawn_server(service, fresh_metrics=True)
        for service, proc in self._procs.items():
            self._wait(service, proc)
            n = self.workers_for.get(service, self.workers)
            self.say(f"{service}: {self.urls[service]} ({self.server}, {n} "
                     f"worker{'s' if n > 1 else ''})")
        # The background workers after the servers: starting, the servers have the CPU
        # (the workers would only queue behind them at their lower priority).
        if self.background:
            from mlplatform.worker import worker_names

            for service in [s for s in self.services if s in worker_names()]:
                self._spawn_worker(service)
        if self.wait_workers:
            self._wait_workers(redis_url)
        elif self._workers:
            import threading

            threading.Thread(target=self._report_workers, args=(redis_url,), daemon=True,
                             name="wait-workers").start()
        return dict(self.urls)

    def _report_workers(self, redis_url: str) -> None:
        try:
            self._wait_workers(redis_url)
        except Exception as exc:  # noqa: BLE001 - a supervisor's loop sees a dead worker too
            log.warning("background workers: %s", exc)

    @property
    def api_key(self) -> str | None:
        """The key this run's clients send (None with API keys off)."""
        return self.settings.api_key if self.settings.auth else None

    @property
    def auth_headers(self) -> dict[str, str]:
        from mlplatform.security.keys import bearer

        return bearer(self.api_key)

    def _make_key(self, redis_url: str) -> None:
        from mlplatform.security.keys import KeyStore

        client = connect(redis_url)
        try:
            key, record = KeyStore(client).create(f"mlsuite {self.name}", ("admin",))
        finally:
            client.close()
        self._key_id = record.id
        self.settings = self.settings.with_(api_key=key)
        if not self.private_redis:  # commands beside a demo find it (security.keys.local_key)
            from mlplatform.security.keys import KEY_FILE

            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / KEY_FILE
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(key + "\n")
        self.say(f"api key: {record.id} made for this run's own clients (admin scope; "
                 "revoked when it stops)")

    def _revoke_key(self) -> None:
        if not self._key_id or self._redis_url == "":
            return
        from mlplatform.security.keys import KEY_FILE

        (self.run_dir / KEY_FILE).unlink(missing_ok=True)
        from mlplatform.security.keys import KeyStore

        client = connect(self._redis_url, socket_timeout=1.0)
        try:
            KeyStore(client).revoke(self._key_id)
        except redis.RedisError as exc:  # the run is over either way; say what is left
            log.warning("could not revoke this run's API key %s: %s", self._key_id, exc)
        finally:
            client.close()
        self._key_id = ""

    def _spawn_server(self, service: str, *, fresh_metrics: bool) -> None:
        self._procs[service] = serving.spawn(
            service, self.settings, port=self.ports[service],
            workers=self.workers_for.get(service, self.workers),
            server=self.server, redis_url=self._redis_url, fresh_metrics=fresh_metrics)
        self._backoff.setdefault(service, Backoff()).started(time.monotonic())

    def _spawn_worker(self, service: str) -> None:
        self._workers[service] = serving.spawn_worker(
            service, self.settings, redis_url=self._redis_url,
            metrics=serving.metrics_dir(self.settings, service, self.ports[service]))
        self._backoff.setdefault(f"{service} worker", Backoff()).started(time.monotonic())

    def supervise(self) -> list[str]:
        """One supervision pass; the dead processes that stay dead (none with ``restart``).

        A dead process is started again once its backoff delay has passed; each death
        and restart is logged with the exit status. Call it every fraction of a second.
        """
        if not self.restart:
            return self.dead()
        now = time.monotonic()
        children = ([(s, p) for s, p in self._procs.items()]
                    + [(f"{s} worker", p) for s, p in self._workers.items()])
        for key, proc in children:
            if proc.poll() is None:
                continue
            if key not in self._due:
                delay = self._backoff[key].failed(now)
                self._due[key] = now + delay
                log.error("%s exited with status %s; restarting in %.0f s", key,
                          proc.returncode, delay)
            elif now >= self._due[key]:
                del self._due[key]
                self._restart(key, proc.returncode)
        return []

    def _restart(self, key: str, status: int | None) -> None:
        service, _, worker = key.partition(" ")
        number = self.restarts.get(key, 0) + 1
        try:
            if worker:
                self._spawn_worker(service)
            else:
                self._wait_port_free(service)
                self._spawn_server(service, fresh_metrics=False)
                self._wait(service, self._procs[service])
        except (PortInUse, RuntimeError, TimeoutError) as exc:
            log.error("%s: restart %d failed: %s", key, number, exc)
            if not worker:
                serving.stop_process(self._procs[service])  # not ready: try again later
            return
        self.restarts[key] = number
        where = "" if worker else f" at {self.urls[service]}"
        log.warning("%s restarted%s (restart %d; the last one exited with status %s)",
                    key, where, number, status)

    def _wait_port_free(self, service: str, timeout: float = 15.0) -> None:
        # A killed master's request workers take a moment to finish and close the port.
        deadline = time.monotonic() + timeout
        while True:
            try:
                check_port_free(self.settings.host, self.ports[service])
                return
            except PortInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _wait_workers(self, redis_url: str) -> None:
        if not self._workers:
            return
        from mlplatform.redisdb import connect
        from mlplatform.worker import wait_for_worker

        client = connect(redis_url)
        try:
            for service, proc in self._workers.items():
                beat = wait_for_worker(client, service, timeout=180,
                                       alive=lambda p=proc: p.poll() is None)  # type: ignore[misc]
                self.say(f"{service} worker: running ({', '.join(beat['jobs'])})")
        finally:
            client.close()

    def _ensure_data(self) -> None:
        if serving.data_ready(self.settings.data_dir):
            return
        from mlplatform.simulate import DEFAULT_SIZES, simulate_all

        self.say(f"data: none in {self.settings.data_dir}, simulating (seed {self.settings.seed})")
        simulate_all(self.settings.data_dir, seed=self.settings.seed, progress=True, **DEFAULT_SIZES)

    def _prepare_features(self, *, private_redis: bool) -> None:
        try:
            import mlplatform.features  # noqa: F401
        except ImportError:  # a platform without Feast support: the apps do without
            return
        self.say("feast: apply and materialize")
        # Two runs starting on one data folder (`mlsuite serve recommender` and `... fraud`)
        # take turns: concurrent applies left the registry empty for one of them.
        with file_lock(self.settings.data_dir / ".feast.lock"):
            self._apply_and_materialize(private_redis=private_redis)

    def _apply_and_materialize(self, *, private_redis: bool) -> None:
        from mlplatform.features import FeatureStoreAdapter

        store = FeatureStoreAdapter.from_settings(self.settings)
        store.apply()
        # A Redis online store on a fresh private server holds nothing yet, whatever the
        # registry remembers of earlier materializations: load it all.
        store.materialize(full=private_redis and store.online_store_type == "redis")

    def _wait(self, service: str, proc: subprocess.Popen[bytes]) -> None:
        url = self.urls[service]
        # The bare baseline has no /readyz: its one endpoint answering is readiness.
        path = "/ping" if service == "baseline" else "/readyz"
        serving.wait_ready(url, timeout=180, proc=proc, path=path)

    def pid(self, service: str) -> int:
        return self._procs[service].pid

    def alive(self) -> list[str]:
        return [s for s, p in self._procs.items() if p.poll() is None]

    def dead(self) -> list[str]:
        return ([s for s, p in self._procs.items() if p.poll() is not None]
                + [f"{s} worker" for s, p in self._workers.items() if p.poll() is not None])

    def worker_pid(self, service: str) -> int:
        return self._workers[service].pid

    def processes(self) -> dict[str, int]:
        """Each running server (by service) and background worker (``<service> worker``)
        and its pid: a server's pid is its master, its request workers are children."""
        out = {s: p.pid for s, p in self._procs.items() if p.poll() is None}
        out.update({f"{s} worker": p.pid for s, p in self._workers.items() if p.poll() is None})
        return out

    def stop(self) -> None:
        """Stop the workers, the servers, then Redis; safe to call twice."""
        for service, proc in self._workers.items():
            serving.stop_process(proc)
        self._workers.clear()
        for service, proc in self._procs.items():
            serving.stop_process(proc)
            if proc.returncode not in (0, None, -15):
                log.info("%s exited with status %s", service, proc.returncode)
            # serving.spawn's multiprocess metrics folder: nothing reads it after the run
            shutil.rmtree(serving.metrics_dir(self.settings, service, self.ports[service]),
                          ignore_errors=True)
        self._procs.clear()
        if not (self.private_redis and self._redis is not None):  # a private one goes anyway
            self._revoke_key()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
            if self.private_redis:
                shutil.rmtree(self.run_dir, ignore_errors=True)

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
