"""Per-key rate limits shared by every replica: GCRA (generic cell rate algorithm) in Redis.

One key, one Redis value: the "theoretical arrival time" of the next request. A request
is allowed when it is not earlier than that time minus the burst tolerance; otherwise the
answer says how long to wait. One script call per request, only for keys with a limit.

>>> decide(tat=0.0, now=10.0, interval=0.1, burst=1.0)
(True, 10.1, 0.0)
>>> decide(tat=11.0, now=10.0, interval=0.1, burst=1.0)
(True, 11.1, 0.0)
>>> decide(tat=11.05, now=10.0, interval=0.1, burst=1.0)
(False, 11.05, 0.15)
"""

from __future__ import annotations

import math

import redis

__all__ = ["RateLimiter", "decide"]

PREFIX = "mlsuite:auth:rate:"


def decide(tat: float, now: float, interval: float, burst: float) -> tuple[bool, float, float]:
    """GCRA on plain numbers: ``(allowed, new tat, seconds to wait)``."""
    tat = max(tat, now)
    if tat - now > burst:
        return False, tat, round(tat - now - burst + interval, 6)
    return True, tat + interval, 0.0


# The same rule in Lua, on Redis's clock (replicas' clocks may differ).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > burst then
  return {0, tostring(tat - now - burst + interval)}
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now + burst) * 1000) + 1000)
return {1, '0'}
"""


class RateLimiter:
    """``allow(key_id, rate)`` -> seconds to wait (0: allowed); burst = one second's worth."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_GCRA)

    def allow(self, key_id: str, rate_per_second: float) -> float:
        if rate_per_second <= 0:
            return 0.0
        interval = 1.0 / rate_per_second
        burst = max(1.0, rate_per_second) * interval  # a second's worth at once
        allowed, wait = self._script(keys=[PREFIX + key_id], args=[repr(interval), repr(burst)])
        return 0.0 if int(allowed) else max(float(wait), 0.001)


def retry_after(wait: float) -> str:
    """Retry-After in whole seconds (at least 1), as HTTP wants it."""
    return str(max(1, math.ceil(wait)))
