"""Workers: the background process of a service, which owns all of its state maintenance.

``mlsuite worker recommender|fraud`` runs one ``Worker``: the app's build hook (entry
point group "mlsuite.workers", ``build(settings, worker)``) adds stream consumers,
periodic jobs and the streams to keep bounded; the platform adds retention (archive to
the lake, then trim) for those streams and, with ``MLSUITE_RETRAIN_INTERVAL`` set, the
retraining pipeline on a schedule. Each job runs in its own thread; request workers
never do any of this, they swap in the snapshots workers publish.

Several workers of one service may run (as replicas do): consumer groups share the
entries between them, leases keep single-writer jobs (an online model, a stream's
archiver) on one worker at a time, and a worker that dies hands its pending entries
and leases to the others. Every worker writes a heartbeat
(``mlsuite:worker:<service>:<name>``, JSON, expiring) that operators and tests read.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import redis

from mlplatform.config import Settings
from mlplatform.errors import ConfigError
from mlplatform.streams import Consumer, partition_keys

__all__ = ["Worker", "run_worker", "worker_names", "HEARTBEAT_PREFIX"]

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "mlsuite:worker:"
HEARTBEAT_SECONDS = 2.0
ROLLOUT_TICK_SECONDS = 0.5


def worker_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="mlsuite.workers"))


class Worker:
    """Threads of one background process: consumers, loops and periodic jobs."""

    def __init__(self, service: str, settings: Settings, client: redis.Redis) -> None:
        self.service = service
        self.settings = settings
        self.client = client
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stop_event = threading.Event()
        self.streams: list[str] = []
        self._jobs: list[tuple[str, Callable[[threading.Event], None]]] = []
        self._threads: list[threading.Thread] = []
        self._status: dict[str, Any] = {}
        self._started = time.time()

    # -- what the app adds ---------------------------------------------------------------

    def consume(self, consumer: Consumer) -> Consumer:
        """Run ``consumer`` (one group member on one stream) until the worker stops."""
        self._jobs.append((f"{consumer.stream}/{consumer.group}", consumer.run))
        return consumer

    def loop(self, name: str, run: Callable[[threading.Event], None]) -> None:
        """Run ``run(stop_event)``: a job with its own loop (it must return once stopped)."""
        self._jobs.append((name, run))

    def every(self, name: str, seconds: float, job: Callable[[], Any], *,
              first_after: float | None = None) -> None:
        """Run ``job()`` every ``seconds`` (errors are logged, the schedule goes on)."""

        def run(stop: threading.Event) -> None:
            failing = False
            wait = seconds if first_after is None else first_after
            while not stop.wait(wait):
                wait = seconds
                started = time.perf_counter()
                try:
                    result = job()
                    self._status[name] = {"ok": True, "at": time.time(),
                                          "seconds": round(time.perf_counter() - started, 3)}
                    if failing:
                        log.info("%s: working again", name)
                    failing = False
                    if isinstance(result, str) and result:
                        log.info("%s: %s", name, result)
                except redis.RedisError as exc:
                    if not failing:
                        log.warning("%s: redis unavailable (%s); will retry", name, exc)
                    failing = True
                    self._status[name] = {"ok": False, "at": time.time(), "error": str(exc)}
                except Exception as exc:  # noqa: BLE001 - one failed run must not end the job
                    log.exception("%s failed; next run in %.0fs", name, seconds)
                    self._status[name] = {"ok": False, "at": time.time(),
                                          "error": f"{type(exc).__name__}: {exc}"}

        self._jobs.append((name, run))

    def retain(self, *streams: str, partitions: int = 1) -> None:
        """Keep ``streams`` bounded: archive to the lake, then trim (see retention).
        A partitioned stream (``partitions`` > 1) is kept per partition key, each
        archived to the lake folder of its own key."""
        keys = [k for s in streams for k in partition_keys(s, partitions)]
        self.streams.extend(k for k in keys if k not in self.streams)

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every job's thread (retention and the schedule included)."""
        self._add_platform_jobs()
        for name, run in self._jobs:
            thread = threading.Thread(target=self._guard, args=(name, run),
                                      name=f"worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%s worker %s running %d jobs: %s", self.service, self.name, len(self._jobs),
                 ", ".join(n for n, _ in self._jobs))

    def run(self) -> int:
        """Start, then wait until stopped (SIGTERM / Ctrl-C in ``run_worker``)."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.stop()
        return 0

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.client.delete(self.heartbeat_key)
        except redis.RedisError:
            pass
        log.info("%s worker %s stopped", self.service, self.name)

    @property
    def heartbeat_key(self) -> str:
        return f"{HEARTBEAT_PREFIX}{self.service}:{self.name}"

    def heartbeat(self) -> None:
        body = {"service": self.service, "name": self.name, "pid": os.getpid(),
                "started": round(self._started, 3), "at": round(time.time(), 3),
                "jobs": [n for n, _ in self._jobs], "status": self._status}
        self.client.set(self.heartbeat_key, json.dumps(body, default=str),
                        ex=int(HEARTBEAT_SECONDS * 5))

    def _guard(self, name: str, run: Callable[[threading.Event], None]) -> None:
        """Run a job; if it crashes, log it and start it again (after a pause)."""
        while not self.stop_event.is_set():
            try:
                run(self.stop_event)
                return
            except Exception:  # noqa: BLE001 - a worker keeps its other jobs alive
                log.exception("%s crashed; restarting it in 1s", name)
                self.stop_event.wait(1.0)

    def _add_platform_jobs(self) -> None:
        if getattr(self, "_platform_added", False):
            return
        self._platform_added = True
        self.every("heartbeat", HEARTBEAT_SECONDS, self.heartbeat)
        # Rollouts of this service's models: the controller checks each one's guards at
        # its interval (one worker per rollout, by lease; see mlplatform.rollouts).
        from mlplatform.registry import ModelRegistry
        from mlplatform.rollouts.controller import RolloutController

        registry = ModelRegistry(self.settings.data_dir / "models")
        self.rollouts = RolloutController(self.client, registry, self.service)
        self.every("rollouts", ROLLOUT_TICK_SECONDS, self.rollouts.tick, first_after=0.2)
        # Per-feature drift of the live inputs against the served model's training
        # reference, kept in Redis and as gauges for the console and alerts.
        from mlplatform.monitoring.driftreport import INTERVAL_SECONDS, drift_job

        self.every("drift", INTERVAL_SECONDS, drift_job(self.settings, self.service, self.client),
                   first_after=5.0)
        if self.streams:
            from mlplatform.lake import Lake
            from mlplatform.retention import Archiver

            lake = Lake.from_settings(self.settings)
            archivers = [Archiver(self.client, lake, s,
                                  retention_seconds=self.settings.stream_retention_seconds,
                                  maxlen=self.settings.stream_maxlen) for s in self.streams]

            def retention() -> None:
                for archiver in archivers:
                    archiver.run_once()

            self.every("retention", self.settings.archive_interval_seconds, retention,
                       first_after=1.0)
        if self.settings.retrain_interval > 0:
            service, settings = self.service, self.settings

            def retrain() -> str:
                from mlplatform.pipeline import run_pipeline

                report = run_pipeline(settings, service)
                return f"scheduled pipeline run: {report.summary()}"

            self.every("pipeline", self.settings.retrain_interval, retrain)
        self.heartbeat()  # running from now on: Stack and operators wait for this


def build_worker(service: str, settings: Settings, client: redis.Redis) -> Worker:
    """A worker with the app's jobs added by its "mlsuite.workers" entry point."""
    hooks = {ep.name: ep for ep in entry_points(group="mlsuite.workers")}
    if service not in hooks:
        raise ConfigError(f"no worker for service {service!r}; expected one of "
                          f"{', '.join(sorted(hooks)) or '(none installed)'}")
    worker = Worker(service, settings, client)
    hooks[service].load()(settings, worker)
    return worker


def run_worker(service: str, settings: Settings, *, metrics_port: int | None = None) -> int:
    """``mlsuite worker SERVICE``: run until SIGTERM or Ctrl-C; the exit status."""
    from mlplatform.redisdb import connect
    from mlplatform.serving import sigterm_interrupts

    if not settings.redis_url:
        raise ConfigError("MLSUITE_REDIS_URL is not set: a worker needs the Redis its "
                          "services use (`mlsuite demo` and `mlsuite serve` start one)")
    if metrics_port is not None:
        _serve_metrics(metrics_port)
    if settings.worker_nice:
        # Background work yields the CPU to request workers on a shared machine: a
        # catalogue read or a training run must not show up in request latency.
        os.nice(settings.worker_nice)
    client = connect(settings.redis_url, socket_timeout=5.0)
    worker = build_worker(service, settings, client)
    try:
        with sigterm_interrupts():
            return worker.run()
    except KeyboardInterrupt:
        return 0


def heartbeats(client: redis.Redis, service: str | None = None) -> list[dict[str, Any]]:
    """The heartbeats of the running workers (of ``service``, or all)."""
    pattern = f"{HEARTBEAT_PREFIX}{service or '*'}:*"
    out = []
    for key in client.scan_iter(pattern):
        raw: Any = client.get(key)
        if raw:
            out.append(json.loads(raw))
    return sorted(out, key=lambda h: (h["service"], h["name"]))


def _serve_metrics(port: int) -> None:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    from mlplatform.metrics import multiprocess_enabled

    registry = REGISTRY
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    log.info("worker metrics on http://127.0.0.1:%d/metrics", port)


def wait_for_worker(client: redis.Redis, service: str, *, timeout: float,
                    alive: Callable[[], bool] = lambda: True,
                    known: Sequence[str] = ()) -> dict[str, Any]:
    """Wait until a worker of ``service`` (not among ``known`` names) beats; its heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for beat in heartbeats(client, service):
            if beat["name"] not in known:
                return beat
        if not alive():
            raise RuntimeError(f"the {service} worker exited before it was running")
        time.sleep(0.1)
    raise TimeoutError(f"no {service} worker heartbeat after {timeout:.0f}s")
