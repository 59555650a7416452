"""The request side of a rollout: which units the candidate serves, and its loaded model.

A request worker holds one ``RolloutRouter`` per model. It follows the rollout
document (a ``Follower`` on the snapshot key, polled every ``poll_seconds``: no Redis
read per request) and, when a rollout names a version, loads that version in a
background thread with the app's ``loader``, so no request ever loads a model. For
blue-green it then runs the app's ``smoke`` check (readiness plus a scored sample) and
reports the verdict for the controller; traffic moves only after a replica said "ok".

``route(units, production_version=...)`` says, per unit, whether the candidate serves
it: a canary's units are the first ``share`` of buckets of the deterministic hash
(``mlplatform.assignment.in_rollout`` salted with the model's name, the same on every
replica, stable while the share grows), optionally only those whose attributes match
the rollout's segment; blue-green sends every unit once switched; a promoted rollout
keeps serving the candidate until the production model has swapped to it, so no
request sees the old version again after the switch. ``mirrored(unit)`` says whether a
shadow candidate also scores the unit's request, off the response path (``shadow``
runs the app's comparison in one bounded background queue; when full, copies are
dropped and counted, never waited for).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

import redis
from prometheus_client import Counter

from mlplatform.assignment import in_rollout
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.rollouts import machine
from mlplatform.rollouts.machine import Rollout
from mlplatform.rollouts.measure import MetricsRecorder
from mlplatform.rollouts.store import RolloutStore, doc_key
from mlplatform.snapshots import Follower, Snapshot, SnapshotStore

__all__ = ["RolloutRouter", "ShadowQueue", "SHADOW_DROPPED", "replica_id"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SHADOW_DROPPED = Counter("mlsuite_rollout_shadow_dropped_total",
                         "Shadow scorings dropped because the queue was full", ["model"])


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _decode(snapshot: Snapshot) -> Rollout:
    return Rollout.from_dict(json.loads(snapshot.body))


class ShadowQueue:
    """One daemon thread running submitted jobs; a bounded queue that drops when full."""

    def __init__(self, name: str, maxsize: int = 256) -> None:
        self.name = name
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._dropped = SHADOW_DROPPED.labels(name)

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and counted) if the queue is full."""
        if self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._dropped.inc()
            return False

    def join(self, timeout: float = 5.0) -> bool:
        """Wait until every queued job ran (tests, shutdown); whether it did in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=f"shadow-{self.name}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception:  # noqa: BLE001 - a shadow failure never reaches a caller
                log.exception("%s: shadow scoring failed", self.name)
            finally:
                self._queue.task_done()


class RolloutRouter(Generic[T]):
    """Follows one model's rollout; keeps its candidate loaded; routes units to it."""

    def __init__(self, client: redis.Redis, registry: ModelRegistry, name: str,
                 loader: Callable[[ModelVersion], T], *,
                 smoke: Callable[[T], str] | None = None, poll_seconds: float = 0.25,
                 recorder: MetricsRecorder | None = None, shadow_queue: int = 256) -> None:
        self.name = name
        self.registry = registry
        self.loader = loader
        self.smoke = smoke
        self.store = RolloutStore(client, registry)
        self.recorder = recorder or MetricsRecorder(client)
        self.shadows = ShadowQueue(name, shadow_queue)
        self.follower: Follower[Rollout] = Follower(
            SnapshotStore(client, doc_key(name)), _decode, poll_seconds=poll_seconds,
            name=f"rollout-{name}", on_swap=self._swapped)
        self._candidate: tuple[ModelVersion, T] | None = None
        self._loading: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Follow the rollout document (and load its candidate in the background)."""
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        self.recorder.stop()

    @property
    def rollout(self) -> Rollout | None:
        return self.follower.get()

    @property
    def candidate(self) -> tuple[ModelVersion, T] | None:
        """The loaded candidate, if it is the version the running rollout names."""
        rollout, cand = self.rollout, self._candidate
        if rollout is None or cand is None or cand[0].version != rollout.version:
            return None
        if rollout.state not in (machine.RUNNING, machine.PROMOTED):
            return None
        return cand

    # -- routing (per request: attribute reads and one hash per unit) --------------------

    def route(self, units: Sequence[str], *, production_version: int | None,
              attributes: Sequence[Mapping[str, str]] | None = None) -> list[bool]:
        """Per unit: whether the candidate serves it (False: production does)."""
        n = len(units)
        rollout, cand = self.rollout, self.candidate
        if rollout is None or cand is None:
            return [False] * n
        if rollout.state == machine.PROMOTED:
            if production_version == rollout.version:
                self._candidate = None  # production has swapped to it: drop the copy
                return [False] * n
            return [True] * n
        share = rollout.share
        if share <= 0:
            return [False] * n
        segment = rollout.spec.segment
        if segment:
            attrs = attributes or [{}] * n
            match = [all(a.get(k) == v for k, v in segment.items()) for a in attrs]
        else:
            match = [True] * n
        if share >= 1.0:
            return match
        return [m and in_rollout(self.name, u, share) for u, m in zip(units, match, strict=True)]

    def mirrored(self, unit: str) -> bool:
        """Whether a running shadow candidate also scores this unit's request."""
        rollout = self.rollout
        if rollout is None or rollout.state != machine.RUNNING or rollout.mirror <= 0:
            return False
        if self.candidate is None:
            return False
        return rollout.mirror >= 1.0 or in_rollout(f"{self.name}:shadow", unit, rollout.mirror)

    def shadow(self, job: Callable[[], None]) -> bool:
        """Run ``job`` (score with the candidate, compare, record) off the response path."""
        return self.shadows.submit(job)

    # -- background loading --------------------------------------------------------------

    def _swapped(self, snapshot: Snapshot, rollout: Rollout) -> None:
        if rollout.state in (machine.ROLLED_BACK, machine.ABORTED):
            if self._candidate is not None:
                log.info("%s: rollout %s, dropping candidate v%d", self.name, rollout.state,
                         self._candidate[0].version)
            self._candidate = None
            return
        if rollout.state == machine.PROMOTED and self._candidate is None:
            return  # nothing to keep serving: production follows the alias
        version = rollout.version
        with self._lock:
            loaded = self._candidate[0].version if self._candidate is not None else None
            if version in (loaded, self._loading):
                return
            self._loading = version
        threading.Thread(target=self._load, args=(rollout,), name=f"candidate-{self.name}",
                         daemon=True).start()

    def _load(self, rollout: Rollout) -> None:
        version = rollout.version
        replica = replica_id()
        try:
            started = time.perf_counter()
            model_version = self.registry.get(self.name, version)
            obj = self.loader(model_version)
            detail = f"loaded in {time.perf_counter() - started:.2f}s"
            if self.smoke is not None and rollout.spec.strategy == "blue-green":
                detail += f"; {self.smoke(obj)}"
            self._candidate = (model_version, obj)
            log.info("%s: candidate %s ready (%s)", self.name, model_version.label, detail)
            ok = True
        except Exception as exc:  # noqa: BLE001 - reported to the controller, never raised
            log.exception("%s: candidate v%d failed to load or smoke-check", self.name, version)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._loading = None
        if rollout.spec.strategy == "blue-green":
            try:
                self.store.report_smoke(self.name, version, replica, ok, detail)
            except redis.RedisError as exc:
                log.warning("%s: could not report the smoke check: %s", self.name, exc)
