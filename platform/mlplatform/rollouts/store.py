"""The rollout documents in Redis, and the registry moves each transition makes.

One rollout per model at a time. Its document (``Rollout.to_dict``: state, version,
strategy, step, share, guards, segment, history) is the body of a snapshot key
(``mlplatform.snapshots`` layout: ``seq``, ``meta``, ``body``), so request workers follow
it with a ``Follower`` (one tiny ``HGET seq`` every 0.25 s, never a read per request)::

    mlsuite:rollout:{<name>}           the document (a snapshot hash)
    mlsuite:rollout:{<name>}:ready     blue-green smoke checks: replica -> JSON verdict
    mlsuite:rollout:{<name>}:lease     the controller holding this rollout
    mlsuite:rollouts:active            names of running rollouts

Writes are compare-and-set on the document's ``rev`` (``WATCH``), so an operator's
``promote`` or ``abort`` and the controller's step never overwrite each other. The
registry keeps aliases in files: ``apply_effects`` moves them after a transition
(canary share, promotion, candidate alias back on rollback).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from mlplatform.errors import Conflict, NotFound
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts import machine
from mlplatform.rollouts.machine import Rollout, Spec

__all__ = ["RolloutStore", "apply_effects", "doc_key", "ACTIVE_KEY", "service_of"]

log = logging.getLogger(__name__)

ACTIVE_KEY = "mlsuite:rollouts:active"
SMOKE_TTL_SECONDS = 86_400


def doc_key(name: str) -> str:
    return f"mlsuite:rollout:{{{name}}}"


def service_of(name: str) -> str:
    """The service a model belongs to by its name: ``fraud-online`` -> ``fraud``."""
    return name.split("-")[0]


class RolloutStore:
    """Reads and writes rollout documents; ``start``, ``promote`` and ``abort`` them."""

    def __init__(self, client: redis.Redis, registry: ModelRegistry) -> None:
        self.client = client
        self.registry = registry

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str) -> Rollout | None:
        raw: Any = self.client.hget(doc_key(name), "body")
        return None if raw is None else Rollout.from_dict(json.loads(raw))

    def require(self, name: str) -> Rollout:
        rollout = self.get(name)
        if rollout is None:
            raise NotFound(f"model {name!r} has no rollout: start one with "
                           f"`mlsuite rollout start {name} --version V --strategy canary`",
                           field="name")
        return rollout

    def active(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(ACTIVE_KEY))  # type: ignore[union-attr]

    def smoke(self, name: str, version: int) -> str | None:
        """Blue-green: "ok" once a replica smoke-checked ``version``; a failure's text if
        any replica's check failed (a failure wins); None before any verdict."""
        reports: Any = self.client.hgetall(f"{doc_key(name)}:ready")
        verdict = None
        for replica, raw in reports.items():
            report = json.loads(raw)
            if int(report.get("version", -1)) != version:
                continue
            if not report.get("ok"):
                return f"replica {replica.decode()}: {report.get('detail')}"
            verdict = "ok"
        return verdict

    def report_smoke(self, name: str, version: int, replica: str, ok: bool, detail: str) -> None:
        key = f"{doc_key(name)}:ready"
        self.client.hset(key, replica, json.dumps({"version": version, "ok": ok,
                                                   "detail": detail, "at": time.time()}))
        self.client.expire(key, SMOKE_TTL_SECONDS)

    # -- writing -------------------------------------------------------------------------

    def start(self, name: str, version: int, strategy: str, *, service: str | None = None,
              steps: Sequence[float] = (5.0, 25.0, 50.0, 100.0), interval_seconds: float = 30.0,
              failures: int = 2, max_error_rate: float = 0.01, max_p99_ms: float = 50.0,
              min_samples: int = 100, guards: Sequence[machine.Guard] = (),
              segment: Mapping[str, str] | None = None, now: float | None = None) -> Rollout:
        """Validate and store a new running rollout, then move the registry's aliases."""
        known = self.registry.names()
        if name not in known:
            raise NotFound(f"no model named {name!r} in the registry; known models: "
                           f"{', '.join(known) or '(none)'}", field="name")
        self.registry.get(name, version)  # NotFound naming the version
        production = self.registry.aliases(name).get("production")
        if production == version:
            raise Conflict(f"{name}: v{version} is already production; nothing to roll out",
                           field="version")
        current = self.get(name)
        if current is not None and not current.finished:
            raise Conflict(f"{name}: a {current.spec.strategy} rollout of v{current.version} is "
                           f"already running (step {current.step}, {current.share:.0%}); "
                           f"promote or abort it first", field="name")
        now = time.time() if now is None else now
        spec = Spec(name, service or service_of(name), version, production, strategy,
                    tuple(float(s) for s in steps), interval_seconds, failures, max_error_rate,
                    max_p99_ms, min_samples, tuple(guards), dict(segment or {}))
        rollout = machine.start(spec, now)
        self.client.delete(f"{doc_key(name)}:ready")
        if not self.save(current, rollout):
            raise Conflict(f"{name}: another rollout was started at the same time", field="name")
        apply_effects(self.registry, None, rollout)
        log.info("%s: %s", name, rollout.history[-1]["reason"])
        return self.require(name)

    def save(self, old: Rollout | None, new: Rollout) -> bool:
        """Store ``new`` if the stored document is still ``old`` (by ``rev``); whether it was."""
        key = doc_key(new.name)
        expected = None if old is None else old.rev
        new = dataclasses.replace(new, rev=(expected or 0) + 1)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                raw: Any = pipe.hget(key, "body")
                stored = None if raw is None else int(json.loads(raw).get("rev", 0))
                if stored != expected:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hincrby(key, "seq", 1)
                pipe.hset(key, mapping={"body": json.dumps(new.to_dict()),
                                        "meta": json.dumps({"state": new.state,
                                                            "version": new.version}),
                                        "at": f"{time.time():.3f}"})
                pipe.execute()
            except redis.WatchError:
                return False
        if new.finished:
            self.client.srem(ACTIVE_KEY, new.name)
        else:
            self.client.sadd(ACTIVE_KEY, new.name)
        return True

    def promote(self, name: str, who: str = "operator") -> Rollout:
        return self._manual(name, lambda r, now: machine.promote(r, now, who))

    def abort(self, name: str, who: str = "operator") -> Rollout:
        return self._manual(name, lambda r, now: machine.abort(r, now, who))

    def _manual(self, name: str, change: Any) -> Rollout:
        for _ in range(10):  # the controller may be writing the same document
            old = self.require(name)
            new = change(old, time.time())  # Conflict if it is finished
            if self.save(old, new):
                apply_effects(self.registry, old, new)
                log.info("%s: %s", name, new.history[-1]["reason"])
                return self.require(name)
        raise Conflict(f"{name}: the rollout kept changing under us; try again", field="name")


def apply_effects(registry: ModelRegistry, old: Rollout | None, new: Rollout) -> None:
    """Move the registry's aliases to match ``new`` (after ``old``)."""
    name, version = new.name, new.version
    if old is None:
        if new.spec.strategy == "canary":
            registry.set_rollout(name, new.share, version)
        else:
            registry.set_alias(name, "candidate", version, action=new.spec.strategy)
        return
    if new.state == machine.PROMOTED:
        registry.promote(name, version)  # also ends the registry's canary share
        return
    if new.state in (machine.ROLLED_BACK, machine.ABORTED):
        registry.set_rollout(name, 0.0)
        try:
            registry.rollback(name, "candidate")
        except NotFound:
            pass  # the candidate alias had no earlier version
        return
    if new.share != old.share:
        registry.set_rollout(name, new.share)
