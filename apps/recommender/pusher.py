"""The "feast-push" consumer's handler: queued entity updates -> one Feast push per kind.

A batch of updates (``updates.UpdateQueue`` entries) becomes, per kind, one online read
of the current rows (with their event times) and one ``push``: never one push per
request (a push costs milliseconds whatever its size). For each entity only its last
update in the batch counts, merged over the earlier ones and over Feast's current row,
so partial updates keep the fields they leave out. An update older than the row Feast
holds is skipped: redelivery after a crash, or two workers racing, never puts back an
older value (Feast's SQLite store would overwrite blindly).

Invalid entries are rejected (dead letters with the reason). If Feast cannot be reached
the handler raises ``mlplatform.streams.Retry``: nothing is acked and the consumer
hands the same entries back after a pause; they are never dead-lettered.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import pandas as pd
import redis

from mlplatform.errors import BadRequest, Unavailable
from mlplatform.features import TIMESTAMP_SUFFIX
from mlplatform.http import check_id
from mlplatform.streams import Entry, Retry
from recommender.updates import FIELDS, KINDS, parse_update, publish_overrides, record_overrides

__all__ = ["FeastPusher", "FeastUnavailable", "FeatureWriter", "Update", "parse_entry"]

log = logging.getLogger(__name__)


class FeastUnavailable(Retry):
    """Feast failed: an outage of a dependency, not the entries' fault, so they stay
    pending with the consumer and are retried."""


class FeatureWriter(Protocol):
    """The part of ``mlplatform.features.FeatureStoreAdapter`` the pusher uses."""

    def online_features(self, features: Sequence[str] | str, entity_rows: Sequence[Any], *,
                        with_timestamps: bool = False) -> list[dict[str, Any]]: ...

    def push(self, push_source_name: str, df: pd.DataFrame, to: Any = "online") -> None: ...


@dataclass(frozen=True)
class Update:
    """One queued update: which entity, the fields it sets, when it was made."""

    kind: str
    id: str
    fields: dict[str, Any]
    at: float


def parse_entry(entry: Entry) -> Update:
    """The update an entry holds; ValueError (or BadRequest) says what is wrong with it."""
    kind = entry.get("kind") or ""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    entity_id = check_id(entry.get("id"), "id")
    try:
        body = json.loads(entry.get("fields") or "")
        at = float(entry.get("at") or "")
    except ValueError as exc:
        raise ValueError(f"fields must be JSON and at epoch seconds: {exc}") from None
    if not math.isfinite(at):
        raise ValueError(f"at must be epoch seconds, got {entry.get('at')!r}")
    return Update(kind, entity_id, parse_update(kind, body), at)


class FeastPusher:
    """Applies batches of updates to Feast; see the module docstring."""

    def __init__(self, client: redis.Redis, store: Callable[[], FeatureWriter], *,
                 on_items: Callable[[list[str]], None] = lambda ids: None) -> None:
        self.client = client
        self.store = store
        self.on_items = on_items  # these items' flags must be republished

    def handle(self, entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        rejected: dict[str, str] = {}
        latest: dict[str, dict[str, Update]] = {kind: {} for kind in KINDS}
        for entry in entries:  # stream order: a later update wins, field by field
            try:
                update = parse_entry(entry)
            except (ValueError, BadRequest) as exc:
                rejected[entry.id] = str(exc)
                continue
            before = latest[update.kind].get(update.id)
            if before is not None:
                update = Update(update.kind, update.id, {**before.fields, **update.fields},
                                update.at)
            latest[update.kind][update.id] = update
        if not any(latest.values()):
            return rejected
        try:
            store = self.store()
            applied = {kind: self._push(store, kind, updates)
                       for kind, updates in latest.items() if updates}
        except Unavailable as exc:
            pending = sum(len(u) for u in latest.values())
            log.warning("feast unavailable: %d updates stay pending and will be retried: %s",
                        pending, exc)
            raise FeastUnavailable(f"feast unavailable, updates stay pending: {exc}") from exc
        users = applied.get("user", {})
        if users:
            # Outside the ack transaction on purpose: the overrides must be published
            # now, and writing the same values again after a redelivery is harmless.
            record_overrides(self.client, {u: (row.get("segment"), at)
                                           for u, (row, at) in users.items()})
            publish_overrides(self.client)
        if applied.get("item"):
            self.on_items(list(applied["item"]))
        return rejected

    def _push(self, store: FeatureWriter, kind: str, updates: dict[str, Update]
              ) -> dict[str, tuple[dict[str, Any], float]]:
        """Push one kind's updates; each entity's resulting row and its time."""
        key, source, view = KINDS[kind]
        names = list(FIELDS[kind])
        current = store.online_features([f"{view}:{n}" for n in names],
                                        [{key: i} for i in updates], with_timestamps=True)
        rows: list[dict[str, Any]] = []
        result: dict[str, tuple[dict[str, Any], float]] = {}
        for (entity_id, update), held in zip(updates.items(), current, strict=True):
            stamps = [t for n in names if (t := held.get(n + TIMESTAMP_SUFFIX)) is not None]
            newest = max(stamps).timestamp() if stamps else None
            values = {n: held.get(n) for n in names}
            # Feast keeps whole seconds: only a strictly newer row supersedes this update.
            if newest is not None and newest > math.floor(update.at):
                result[entity_id] = (values, newest)
                continue
            row = {**values, **update.fields}
            rows.append({key: entity_id, **row,
                         "event_timestamp": datetime.fromtimestamp(update.at, UTC)})
            result[entity_id] = (row, update.at)
        if rows:
            started = time.perf_counter()
            store.push(source, pd.DataFrame(rows), to="online")
            log.info("pushed %d %s updates to feast in %.0f ms", len(rows), kind,
                     (time.perf_counter() - started) * 1000)
        return result
