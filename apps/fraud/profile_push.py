"""The worker's "feast-push" consumer: queued profile updates -> Feast -> profile overrides.

Any number of fraud workers share the consumer group. Each batch of updates read from
``<prefix>profile-updates`` is:

1. checked again; an invalid entry goes to the dead letters with the reason;
2. pushed to Feast's online store, one ``push`` per entity kind per batch (a push costs
   milliseconds whatever its size), the latest update per entity winning;
3. merged into the "profile overrides" snapshot: the updates of the last
   ``profile_cache_seconds`` (+ a minute), which request workers' caches apply as soon
   as they see it (their cache would otherwise serve the old profile until it expires).

Only then are the entries acknowledged. A push that fails (Feast down) raises
``streams.Retry``: nothing is acknowledged or dead-lettered, and the consumer re-reads
its own pending entries, before any newer one, after ``retry_seconds``. Pushing twice is
harmless (same values, same timestamps), so redelivery after a crash is too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from fraud.config import FraudConfig
from fraud.keys import FEAST_PUSH_GROUP, Keys
from fraud.profile_updates import KINDS, ProfileUpdate, decode_update
from mlplatform.config import Settings
from mlplatform.retention import id_before
from mlplatform.snapshots import Snapshot, SnapshotStore
from mlplatform.streams import Consumer, Entry, Retry, consumer_name

__all__ = ["ProfilePusher", "FeastDown", "decode_overrides", "MAX_OVERRIDES"]

log = logging.getLogger(__name__)
# Overrides beyond this many (the oldest) are dropped: replicas then see those changes
# when their cache entries expire, as without overrides.
MAX_OVERRIDES = 20_000


class FeastDown(Retry):  # noqa: N818 - an instruction to the consumer, like Retry
    """The feature store did not take a push: not the entries' fault, so the consumer
    keeps them pending and retries them (no ack, no dead letter)."""


def decode_overrides(snapshot: Snapshot) -> dict[str, dict[str, dict[str, Any]]]:
    """Kind -> entity id -> profile, from an overrides snapshot (plain JSON)."""
    body = json.loads(snapshot.body)
    return {kind: {i: e["profile"] for i, e in body.get(kind, {}).items()} for kind in KINDS}


class ProfilePusher:
    """One member of the "feast-push" group: pushes batches, publishes overrides."""

    def __init__(self, client: redis.Redis, settings: Settings, config: FraudConfig, *,
                 adapter_factory: Callable[[], Any] | None = None, name: str | None = None,
                 claim_idle_ms: int = 5000) -> None:
        self.client = client
        self.keys = Keys(config.key_prefix, config.model_name)
        self.window = config.profile_cache_seconds + 60.0
        self.store = SnapshotStore(client, self.keys.profile_overrides)
        self.consumer = Consumer(client, self.keys.profile_updates, FEAST_PUSH_GROUP,
                                 self.handle, self.keys.dead_letters,
                                 name=name or consumer_name("feast-push"),
                                 claim_idle_ms=claim_idle_ms, retry_seconds=1.0)
        self._factory = adapter_factory or _adapter_factory(settings)
        self._adapter: Any = None
        self.pushes = 0  # Feast push calls made (one per kind per batch)

    def open(self) -> None:
        """Open the feature store now (importing Feast takes seconds in a new process),
        so the first update is not late; on failure the first push retries."""
        try:
            self._store()
        except Exception as exc:  # noqa: BLE001 - logged; pushes raise FeastDown
            log.warning("feast-push: cannot open the feature store yet: %s", exc)

    def _store(self) -> Any:
        if self._adapter is None:
            self._adapter = self._factory()
        return self._adapter

    def handle(self, entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        """Push the valid updates, publish them as overrides; the invalid ones' reasons."""
        rejected: dict[str, str] = {}
        updates: list[ProfileUpdate] = []
        for entry in entries:
            try:
                updates.append(decode_update(entry))
            except ValueError as exc:
                rejected[entry.id] = str(exc)
        if updates:
            self._push(updates)
            self._publish(updates)
        return rejected

    def _push(self, updates: Sequence[ProfileUpdate]) -> None:
        import pandas as pd

        latest: dict[tuple[str, str], ProfileUpdate] = {}
        for u in updates:  # stream order: the last update of an entity wins
            latest[(u.kind, u.entity_id)] = u
        for kind, spec in KINDS.items():
            rows = [{spec.key: u.entity_id, **u.profile,
                     "event_timestamp": datetime.fromtimestamp(u.at, UTC)}
                    for (k, _), u in latest.items() if k == kind]
            if not rows:
                continue
            try:
                self._store().push(spec.push_source, pd.DataFrame(rows), to="online")
            except Exception as exc:
                raise FeastDown(f"push of {len(rows)} {kind} profiles to "
                                f"{spec.push_source} failed: {exc}") from exc
            self.pushes += 1

    def _publish(self, updates: Sequence[ProfileUpdate]) -> None:
        """Merge ``updates`` into the overrides snapshot (one writer at a time: several
        workers may push), dropping what every cache has since reloaded anyway."""
        with self.client.lock(f"{self.keys.profile_overrides}:lock", timeout=10,
                              blocking_timeout=5):
            current = self.store.read()
            body: dict[str, dict[str, Any]] = json.loads(current.body) if current else {}
            for kind in KINDS:
                body.setdefault(kind, {})
            for u in updates:
                held = body[u.kind].get(u.entity_id)
                if held is None or id_before(held["id"], u.stream_id):
                    body[u.kind][u.entity_id] = {"profile": u.profile, "id": u.stream_id,
                                                 "at": u.at}
            oldest = time.time() - self.window
            kept = sorted(((e["at"], kind, i) for kind in KINDS for i, e in body[kind].items()
                           if e["at"] >= oldest), reverse=True)[:MAX_OVERRIDES]
            body = {kind: {i: body[kind][i] for _, k, i in kept if k == kind} for kind in KINDS}
            self.store.publish(json.dumps(body).encode(), {"overrides": len(kept)})

    def run(self, stop: Any) -> None:
        """Open the feature store, then consume until ``stop`` (the worker's loop)."""
        self.open()
        self.consumer.run(stop)


def _adapter_factory(settings: Settings) -> Callable[[], Any]:
    def make() -> Any:
        from mlplatform.features import FeatureStoreAdapter

        return FeatureStoreAdapter.from_settings(settings)

    return make
