"""Entity updates, the write side: validated, queued on a stream, pushed to Feast in batches.

``PUT /v1/items/<id>`` and ``PUT /v1/users/<id>`` decode the body as its typed model
(``recommender.contract.ItemUpdate``/``UserUpdate``: partial updates, unknown fields
rejected, errors naming the field; ``parse_update`` keeps the fields it sets) and append
it to ``mlsuite:rec:updates`` (``UpdateQueue``): a 202 means durably queued. The worker's
"feast-push" consumer (``FeastPusher``) turns each batch into one Feast push per kind,
fills the fields an update leaves out from Feast's current row, skips updates older than
what Feast holds (redelivery, two workers: the online store keeps the newest), then
has the catalogue snapshot republished and records users' new segments as overrides
(``OVERRIDES_KEY``) that request workers consult before their segment cache.

Feast down: the handler raises ``FeastUnavailable`` (a ``mlplatform.streams.Retry``: not
the entries' fault), nothing is acked, and the consumer retries the same entries.

>>> parse_update("item", {"in_stock": False, "price": 12})
{'price': 12.0, 'in_stock': False}
>>> parse_update("user", {"country": "de"})
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: country must be 2 upper-case letters (ISO 3166), got "de"
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import redis

from mlplatform import openapi
from mlplatform.errors import BadRequest, Unavailable
from mlplatform.snapshots import Snapshot, SnapshotStore
from recommender.contract import ItemUpdate, UserUpdate

__all__ = [
    "FIELDS",
    "KINDS",
    "OVERRIDES_KEY",
    "UPDATES",
    "UPDATES_STREAM",
    "UpdateQueue",
    "decode_overrides",
    "parse_update",
    "publish_overrides",
    "record_overrides",
]

UPDATES_STREAM = "mlsuite:rec:updates"
OVERRIDES_KEY = "mlsuite:rec:snapshot:user-overrides"
OVERRIDES_HASH = "mlsuite:rec:user-overrides"
# Overrides outlive any request worker's cached segment (RECOMMENDER_SEGMENT_CACHE_SECONDS,
# 300 s by default): once one is dropped, a cache entry older than the edit has expired.
OVERRIDE_SECONDS = 900.0
MAX_OVERRIDES = 20_000

# kind -> the typed body of its PUT (recommender.contract: the rules per field).
UPDATES: dict[str, type[ItemUpdate] | type[UserUpdate]] = {"item": ItemUpdate,
                                                           "user": UserUpdate}
# kind -> its fields, in the Feast view's order.
FIELDS: dict[str, tuple[str, ...]] = {kind: t.__struct_fields__ for kind, t in UPDATES.items()}
KINDS: dict[str, tuple[str, str, str]] = {  # kind -> (join key, push source, feature view)
    "item": ("item_id", "item_catalogue_push", "item_catalogue"),
    "user": ("user_id", "user_profile_push", "user_profile"),
}


def parse_update(kind: str, body: Any) -> dict[str, Any]:
    """The fields a PUT body for ``kind`` sets: ``body`` decoded already (``typed_body``)
    or a JSON document (a queued entry); BadRequest names the bad field."""
    type_ = UPDATES[kind]
    update = body if isinstance(body, type_) else openapi.convert(body, type_)
    fields = {name: value for name in FIELDS[kind]
              if (value := getattr(update, name)) is not msgspec.UNSET}
    if not fields:
        raise BadRequest(f"body must set at least one of {', '.join(FIELDS[kind])}",
                         field="body")
    return fields


class UpdateQueue:
    """Appends validated updates to the updates stream (the request side)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def put(self, kind: str, entity_id: str, fields: Mapping[str, Any], *,
            request_id: str = "") -> str:
        """Queue one update; its stream id. Unbounded XADD: the worker archives, then trims."""
        try:
            sid: Any = self.client.xadd(UPDATES_STREAM, {
                "kind": kind, "id": entity_id, "fields": json.dumps(dict(fields)),
                "at": f"{time.time():.6f}", "request_id": request_id})
        except redis.RedisError as exc:
            raise Unavailable(f"redis is unavailable, update not queued: {exc}",
                              dependency="redis") from exc
        return sid.decode() if isinstance(sid, bytes) else str(sid)


# -- users' recent segment changes ------------------------------------------------------

def record_overrides(client: redis.Redis, segments: Mapping[str, tuple[str | None, float]]
                     ) -> None:
    """Remember users' new segments (user -> (segment, changed at)) for the overrides."""
    if segments:
        client.hset(OVERRIDES_HASH, mapping={
            u: json.dumps({"segment": s, "at": at}) for u, (s, at) in segments.items()})


def publish_overrides(client: redis.Redis, now: float | None = None) -> int:
    """Publish the recent segment changes (dropping expired ones); how many there are."""
    now = time.time() if now is None else now
    raw: Any = client.hgetall(OVERRIDES_HASH)
    entries = sorted(((json.loads(v), k.decode()) for k, v in raw.items()),
                     key=lambda e: e[0]["at"], reverse=True)
    keep = [(e, u) for e, u in entries if now - e["at"] < OVERRIDE_SECONDS][:MAX_OVERRIDES]
    kept = {u for _, u in keep}
    stale = [u for _, u in entries if u not in kept]
    if stale:
        client.hdel(OVERRIDES_HASH, *stale)
    body = json.dumps({"segments": {u: e["segment"] for e, u in keep}}).encode()
    SnapshotStore(client, OVERRIDES_KEY).publish(body, {"users": len(keep), "at": now})
    return len(keep)


def decode_overrides(snapshot: Snapshot) -> dict[str, str | None]:
    """user -> segment of a published overrides snapshot (plain JSON, never pickle)."""
    segments = json.loads(snapshot.body)["segments"]
    if not isinstance(segments, dict):
        raise ValueError("overrides snapshot: segments must be an object")
    return {str(u): None if s is None else str(s) for u, s in segments.items()}
