"""Leases: one holder at a time for jobs that must not run twice (a stream's archiver, the
one writer of an online model), however many worker processes run.

A lease is a Redis key holding the holder's random token with an expiry: ``acquire``
sets it only if absent (``SET NX PX``) or renews it if this holder has it; ``release``
deletes it only if this holder still has it. A holder that stops renewing (crashed,
killed) loses the lease after ``ttl_seconds`` and another worker takes over.
"""

from __future__ import annotations

import os
from typing import Any

import redis

__all__ = ["Lease"]

# Renew only our own lease (compare-and-expire), atomically.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """An expiring, renewable claim on ``key`` by this object."""

    def __init__(self, client: redis.Redis, key: str, *, ttl_seconds: float = 10.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = os.urandom(12).hex()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.held = False

    def acquire(self) -> bool:
        """Take the lease if free, renew it if ours; whether we hold it now."""
        if self.held and self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        got: Any = self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        self.held = bool(got)
        return self.held

    def release(self) -> None:
        if self.held:
            self._release(keys=[self.key], args=[self.token])
            self.held = False

    def holder(self) -> str | None:
        raw: Any = self.client.get(self.key)
        return raw.decode() if raw else None
