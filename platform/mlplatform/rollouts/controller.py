"""The rollout controller: a thin loop around ``machine.step`` in a service's worker.

Every ``tick`` (about a second) it looks at the running rollouts of its service. For each
one it takes the rollout's lease (``mlplatform.lease.Lease``: one active controller per
rollout however many workers run), reads the candidate's measurements since the last
check from Redis (``measure.read_measurements``; shadow rollouts read the ``shadow``
role; blue-green also the replicas' smoke checks), calls the pure ``step``, and if the
rollout changed, stores it (compare-and-set), moves the registry's aliases
(``store.apply_effects``), logs the reason and counts the transition. Everything lives
in Redis and the registry, so a restarted worker (or another one) carries on where the
last left off.
"""

from __future__ import annotations

import logging
import time

import redis
from prometheus_client import Counter, Gauge

from mlplatform.lease import Lease
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts import machine
from mlplatform.rollouts.measure import read_measurements
from mlplatform.rollouts.store import RolloutStore, apply_effects, doc_key

__all__ = ["RolloutController", "TRANSITIONS_TOTAL", "SHARE"]

log = logging.getLogger(__name__)

TRANSITIONS_TOTAL = Counter(
    "mlsuite_rollout_transitions_total", "Rollout transitions by model, event and new state",
    ["model", "event", "state"],
)
SHARE = Gauge(
    "mlsuite_rollout_share", "Share of units the rollout's candidate serves",
    ["model", "version"], multiprocess_mode="mostrecent",
)


class RolloutController:
    """Drives the running rollouts of ``service`` (``tick`` from ``Worker.every``)."""

    def __init__(self, client: redis.Redis, registry: ModelRegistry, service: str, *,
                 lease_seconds: float = 10.0) -> None:
        self.store = RolloutStore(client, registry)
        self.client = client
        self.registry = registry
        self.service = service
        self.lease_seconds = lease_seconds
        self._leases: dict[str, Lease] = {}

    def tick(self, now: float | None = None) -> str:
        """One look at every running rollout of the service; a summary of what changed."""
        changed = []
        for name in self.store.active():
            rollout = self.store.get(name)
            if rollout is None or rollout.finished or rollout.spec.service != self.service:
                continue
            lease = self._leases.get(name)
            if lease is None:
                lease = self._leases[name] = Lease(self.client, f"{doc_key(name)}:lease",
                                                   ttl_seconds=self.lease_seconds)
            if not lease.acquire():
                continue  # another worker's controller drives this rollout
            reason = self.advance(rollout, time.time() if now is None else now)
            if reason:
                changed.append(f"{name}: {reason}")
            if self.store.get(name) is None or self.store.require(name).finished:
                lease.release()
                self._leases.pop(name, None)
        return "; ".join(changed)

    def advance(self, rollout: machine.Rollout, now: float) -> str | None:
        """Step one rollout; the reason if it changed (stored and applied), else None."""
        spec = rollout.spec
        smoke = None
        if spec.strategy == "blue-green" and rollout.step == 0:
            smoke = self.store.smoke(spec.name, spec.version)
        role = "shadow" if spec.strategy == "shadow" else "live"
        measured = read_measurements(self.client, spec.name, spec.version,
                                     rollout.window_start, now, role=role, smoke=smoke)
        new, reason = machine.step(rollout, measured, now)
        if new == rollout:
            return None
        if not self.store.save(rollout, new):
            log.info("%s: the rollout changed while it was checked; next tick", spec.name)
            return None
        if len(new.history) == len(rollout.history):
            log.info("%s: %s", spec.name, reason)  # waiting: nothing moved
            return None
        machine_event = new.history[-1]["event"]
        try:
            apply_effects(self.registry, rollout, new)
        except Exception:  # the document moved; the registry follows on the next change
            log.exception("%s: could not move the registry's aliases after %s",
                          spec.name, machine_event)
        TRANSITIONS_TOTAL.labels(spec.name, machine_event, new.state).inc()
        SHARE.labels(spec.name, str(spec.version)).set(new.share)
        level = logging.WARNING if new.state == machine.ROLLED_BACK else logging.INFO
        log.log(level, "%s rollout of %s v%d: %s -> %s (%s)", spec.strategy, spec.name,
                spec.version, rollout.state, new.state, reason)
        return reason
