"""Entity updates, the write side: validated, queued on a stream, pushed to Feast in batches.

``PUT /v1/items/<id>`` and ``PUT /v1/users/<id>`` validate the body (``parse_update``:
partial updates, unknown fields rejected, errors naming the field) and append it to
``mlsuite:rec:updates`` (``UpdateQueue``): a 202 means durably queued. The worker's
"feast-push" consumer (``FeastPusher``) turns each batch into one Feast push per kind,
fills the fields an update leaves out from Feast's current row, skips updates older than
what Feast holds (redelivery, two workers: the online store keeps the newest), then
has the catalogue snapshot republished and records users' new segments as overrides
(``OVERRIDES_KEY``) that request workers consult before their segment cache.

Feast down: the handler raises ``FeastUnavailable`` (a ``mlplatform.streams.Retry``: not
the entries' fault), nothing is acked, and the consumer retries the same entries.

>>> parse_update("item", {"in_stock": False, "price": 12})
{'in_stock': False, 'price': 12.0}
>>> parse_update("user", {"country": "de"})
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: country must be 2 upper-case letters (ISO 3166), got 'de'
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from mlplatform.errors import BadRequest, Unavailable
from mlplatform.snapshots import Snapshot, SnapshotStore

__all__ = [
    "KINDS",
    "OVERRIDES_KEY",
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
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or value != value.strip():
        raise BadRequest(f"{name} must be a non-empty string of at most 64 characters without "
                         f"surrounding spaces, got {value!r}", field=name)
    return value


def _price(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a number >= 0, got {value!r}", field=name)
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}", field=name)
    return value


def _country(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _COUNTRY.match(value):
        raise BadRequest(f"{name} must be 2 upper-case letters (ISO 3166), got {value!r}",
                         field=name)
    return value


# kind -> field -> validator; also the Feast push source and view of each kind.
FIELDS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "item": {"category": _text, "price": _price, "in_stock": _flag},
    "user": {"segment": _text, "country": _country},
}
KINDS: dict[str, tuple[str, str, str]] = {  # kind -> (join key, push source, feature view)
    "item": ("item_id", "item_catalogue_push", "item_catalogue"),
    "user": ("user_id", "user_profile_push", "user_profile"),
}


def parse_update(kind: str, body: Any) -> dict[str, Any]:
    """The validated fields of a PUT body for ``kind``; BadRequest names the bad field."""
    fields = FIELDS[kind]
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object with some of {', '.join(fields)}, "
                         f"got {type(body).__name__}", field="body")
    unknown = [k for k in body if k not in fields]
    if unknown:
        raise BadRequest(f"{unknown[0]} is not a field of {kind}s; expected some of "
                         f"{', '.join(fields)}", field=str(unknown[0]))
    if not body:
        raise BadRequest(f"body must set at least one of {', '.join(fields)}", field="body")
    return {name: fields[name](value, name) for name, value in body.items()}


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
