"""API keys: created once, stored hashed in Redis, scoped, revocable on every replica.

A key is ``mls_<id>_<secret>``: the id names it in lists and logs, the secret (32 random
bytes) is what makes it a credential. Only the SHA-256 of the whole key is stored: keys
have 256 bits of entropy, so a fast hash is enough (a slow password hash protects
guessable passwords, not random tokens). ``mlsuite keys create`` prints the key once.

>>> key = new_key()
>>> key.startswith("mls_") and len(key) > 50, key_id(key) == key.split("_")[1]
(True, True)
>>> parse_scopes("score, label")
('label', 'score')
>>> parse_scopes("score,fly")
Traceback (most recent call last):
...
ValueError: unknown scope 'fly'; expected some of recommend, events, catalogue, score, label, review, lists, admin
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from mlplatform.redisdb import is_cluster

__all__ = ["SCOPES", "ApiKey", "KeyStore", "new_key", "key_id", "digest", "parse_scopes", "bearer",
           "run_key", "local_key", "KEY_FILE"]

# What each scope lets a key do (the admin scope also sees salts and thresholds).
SCOPES = ("recommend", "events", "catalogue", "score", "label", "review", "lists", "admin")
KEYS_HASH = "mlsuite:auth:keys"  # field: sha256 of the key -> JSON ApiKey
IDS_HASH = "mlsuite:auth:ids"  # field: key id -> sha256 (revoke and list by id)
# Where a run that made a key for its clients (``mlsuite demo``) leaves it, readable by
# its owner only, so commands run beside it (traffic, load tests) find it.
KEY_FILE = "api-key"
CACHE_SECONDS = 1.0
# With Redis down, a key this replica saw valid within this many seconds keeps working,
# so reads degrade instead of failing. A revocation needs Redis too: none can be made
# during the outage; one made in the last second before it applies when Redis is back.
STALE_SECONDS = 300.0  # a revoked key stops working on every replica within this (+ a request)


def new_key() -> str:
    return f"mls_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_id(key: str) -> str:
    parts = key.split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == "mls" else ""


def bearer(key: str | None) -> dict[str, str]:
    """The request header that carries ``key`` (none without a key).

    >>> bearer("mls_ab_cd"), bearer(None)
    ({'Authorization': 'Bearer mls_ab_cd'}, {})
    """
    return {"Authorization": f"Bearer {key}"} if key else {}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = {s.strip() for s in text.split(",") if s.strip()}
    for s in sorted(scopes):
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; expected some of {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"at least one scope is needed; expected some of {', '.join(SCOPES)}")
    return tuple(sorted(scopes))


@dataclass(frozen=True)
class ApiKey:
    """What is stored of a key (never the key itself)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    rate_per_second: float = 0.0  # 0: no limit
    revoked_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "scopes": list(self.scopes)})

    @classmethod
    def from_json(cls, text: str | bytes) -> ApiKey:
        d = json.loads(text)
        return cls(id=d["id"], name=d["name"], scopes=tuple(d["scopes"]),
                   created_at=float(d["created_at"]),
                   rate_per_second=float(d.get("rate_per_second") or 0.0),
                   revoked_at=d.get("revoked_at"), extra=d.get("extra") or {})


class KeyStore:
    """Keys in Redis, with a per-process cache of lookups (``CACHE_SECONDS``)."""

    def __init__(self, client: redis.Redis, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.client = client
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, scopes: tuple[str, ...], *, rate_per_second: float = 0.0
               ) -> tuple[str, ApiKey]:
        """A new key: returns ``(the key, its record)``; the key is not stored anywhere."""
        if not name.strip():
            raise ValueError("a key needs a name (who or what uses it)")
        key = new_key()
        record = ApiKey(id=key_id(key), name=name.strip(), scopes=scopes,
                        created_at=time.time(), rate_per_second=max(rate_per_second, 0.0))
        sha = digest(key)
        # One MULTI on a single server. On a cluster the two hashes may sit on different
        # masters: the id goes first, so a crash between leaves an id naming no key
        # (ignored by listing and revoking), never a key that cannot be revoked by id.
        pipe = self.client.pipeline(transaction=not is_cluster(self.client))
        pipe.hset(IDS_HASH, record.id, sha)
        pipe.hset(KEYS_HASH, sha, record.to_json())
        pipe.execute()
        return key, record

    def lookup(self, key: str) -> ApiKey | None:
        """The active record of ``key``, or None (unknown or revoked); cached briefly."""
        now = time.monotonic()
        sha = digest(key)
        hit = self._cache.get(sha)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        try:
            raw = self.client.hget(KEYS_HASH, sha)
        except redis.RedisError:
            if hit is not None and hit[1] is not None and now - hit[0] < STALE_SECONDS:
                return hit[1]
            raise
        record = ApiKey.from_json(raw) if raw else None  # type: ignore[arg-type]
        if record is not None and not record.active:
            record = None
        with self._lock:
            if len(self._cache) > 10_000:  # unknown keys from a scanner must not grow it
                self._cache.clear()
            self._cache[sha] = (now, record)
        return record

    def all(self) -> list[ApiKey]:
        raw: dict[bytes, bytes] = self.client.hgetall(KEYS_HASH)  # type: ignore[assignment]
        return sorted((ApiKey.from_json(v) for v in raw.values()), key=lambda k: k.created_at)

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        """Revoke the key with this id, or every active key with this name."""
        revoked: list[ApiKey] = []
        now = time.time()
        for record in self.all():
            if record.active and id_or_name in (record.id, record.name):
                sha = self.client.hget(IDS_HASH, record.id)
                if sha is None:
                    continue
                done = ApiKey(**{**asdict(record), "revoked_at": now})
                self.client.hset(KEYS_HASH, sha, done.to_json())  # type: ignore[arg-type]
                revoked.append(done)
        return revoked


@contextmanager
def run_key(client: redis.Redis, name: str, *, enabled: bool = True) -> Iterator[str | None]:
    """An admin key for one run's own clients (bench, a load test), revoked after it;
    None when ``enabled`` is false (API keys off)."""
    if not enabled:
        yield None
        return
    store = KeyStore(client)
    key, record = store.create(name, ("admin",))
    try:
        yield key
    finally:
        try:
            store.revoke(record.id)
        except redis.RedisError:  # Redis went first: nothing left to protect
            pass


def local_key(settings: Any) -> str | None:
    """The key a command-line client sends: MLSUITE_API_KEY, else the key of a demo or
    ``mlsuite up`` running on this data folder (``<data_dir>/run/<run>/api-key``), else None."""
    if settings.api_key:
        return str(settings.api_key)
    for run in ("demo", "up"):
        try:
            return (Path(settings.data_dir) / "run" / run / KEY_FILE).read_text().strip() or None
        except OSError:
            continue
    return None
