"""Velocity features: how fast a card, device and merchant have been transacting.

One feature function (``velocity_features``) over the recent history of a transaction's
card, device and merchant; two stores of that history with the same semantics:

- ``RedisVelocityStore``: shared by every replica. One Lua script call reads the prior
  history of each transaction of a request and records it, in order and atomically (one
  command per request up to ``CHUNK`` transactions; larger batches pipeline the chunks),
  so concurrent replicas see a consistent serial order.
- ``MemoryVelocityStore``: in process, for replaying history offline (training, replay).

Both return the same ``History`` for the same sequence of transactions, so online and
offline feature vectors are identical (tests/fraud/test_velocity.py shows it).

State per entity (keys under the service prefix):
- ``v:c:<card>``   sorted set, score = timestamp, member = id|amount|merchant|country (24 h)
- ``v:ch:<card>``  hash: n, amount total in milli-units, last timestamp, seen devices/countries
- ``v:d:<device>`` sorted set, member = id|card (24 h)
- ``v:m:<merchant>`` sorted set, member = id (24 h)

Amounts are summed as integers (milli-units) and window sums with ``math.fsum`` so the
result does not depend on the order Redis returns ties in.

>>> store = MemoryVelocityStore()
>>> e = lambda i, ts, amt: Event(f"t{i}", ts, "c1", "m1", amt, "FR", "d1")
>>> [h] = store.observe([e(1, 1000.0, 10.0)]); [h] = store.observe([e(2, 1030.0, 20.0)])
>>> f = velocity_features(e(2, 1030.0, 20.0), h)
>>> f["card_count_1m"], f["card_amount_1h"], f["card_secs_since_prev"], f["card_new_device"]
(1.0, 10.0, 30.0, 0.0)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

__all__ = [
    "Event",
    "History",
    "Claimed",
    "MAX_TOTAL_MILLI",
    "VelocityStore",
    "MemoryVelocityStore",
    "RedisVelocityStore",
    "velocity_features",
    "seed",
    "VELOCITY_FEATURES",
    "WINDOWS",
]

WINDOWS: dict[str, float] = {"1m": 60.0, "1h": 3600.0, "24h": 86400.0}
HORIZON = 86400.0
# Entries this much older than the newest transaction of an entity are dropped.
TRIM = HORIZON + 3600.0
# A card never seen before: "seconds since previous" is this cap (30 days).
NO_PREVIOUS = 30 * 86400.0
SEP = "\x1f"  # never in an identifier (schema) nor in a float's repr
WINDOW_KEY_TTL = int(2 * HORIZON)
# A card's amount total (milli-units) stops growing here: exact in a double (Lua numbers)
# and far inside int64, so HINCRBY never overflows (2**53 - 1 milli = 9e12 units).
MAX_TOTAL_MILLI = 2**53 - 1
CARD_KEY_TTL = 400 * 86400

VELOCITY_FEATURES: tuple[str, ...] = (
    "card_count_1m", "card_count_1h", "card_count_24h",
    "card_amount_1m", "card_amount_1h", "card_amount_24h",
    "card_distinct_merchants_24h", "card_distinct_countries_24h",
    "card_secs_since_prev", "card_amount_vs_usual", "card_history_count",
    "card_new_device", "card_new_country", "card_new_merchant_24h",
    "device_count_1h", "device_count_24h", "device_distinct_cards_24h",
    "merchant_count_1m", "merchant_count_1h", "merchant_count_24h",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """What the velocity state needs from a transaction."""

    transaction_id: str
    timestamp: float
    card_id: str
    merchant_id: str
    amount: float
    country: str
    device_id: str | None


@dataclass(slots=True)
class History:
    """State of a transaction's card, device and merchant just before it."""

    card_events: list[tuple[float, float, str, str]]  # (ts, amount, merchant, country), 24 h
    card_n: int  # transactions of the card ever (within the state's retention)
    card_amount_milli: int
    card_last_ts: float | None
    device_known: bool  # the card used this device before (False when there is no device)
    country_known: bool
    merchant_counts: tuple[int, int, int]  # 1 m, 1 h, 24 h
    device_events: list[tuple[float, str]]  # (ts, card) of the device's transactions, 24 h
    # Redis only: what the observe changed, for ``RedisVelocityStore.undo`` (the amount
    # added, the raw previous stats, the members its trim removed).
    undo: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """An event not observed because its guard key exists: ``held`` is the guard's value
    (a pending marker of a request scoring it now, or the decision's stream id)."""

    held: str


class VelocityStore(Protocol):
    def observe(self, events: Sequence[Event]) -> list[History]:
        """Record each event in order, returning the history each one saw."""
        ...


def velocity_features(event: Event, h: History) -> dict[str, float]:
    """The velocity feature values of ``event`` given the ``History`` it saw."""
    ts = event.timestamp
    lo1m, lo1h = ts - WINDOWS["1m"], ts - WINDOWS["1h"]
    amounts_1m: list[float] = []
    amounts_1h: list[float] = []
    amounts_24h: list[float] = []
    merchants: set[str] = set()
    countries: set[str] = set()
    last = -math.inf
    for ets, amount, merchant, country in h.card_events:
        amounts_24h.append(amount)
        if ets >= lo1h:
            amounts_1h.append(amount)
            if ets >= lo1m:
                amounts_1m.append(amount)
        merchants.add(merchant)
        countries.add(country)
        last = max(last, ets)
    if last == -math.inf and h.card_last_ts is not None:
        last = h.card_last_ts
    since = NO_PREVIOUS if last == -math.inf else min(max(ts - last, 0.0), NO_PREVIOUS)
    usual = h.card_amount_milli / 1000.0 / h.card_n if h.card_n else event.amount
    cards = {card for _, card in h.device_events}
    cards.discard(event.card_id)
    has_device = event.device_id is not None
    m1, m60, m1440 = h.merchant_counts
    return {
        "card_count_1m": float(len(amounts_1m)),
        "card_count_1h": float(len(amounts_1h)),
        "card_count_24h": float(len(amounts_24h)),
        "card_amount_1m": math.fsum(amounts_1m),
        "card_amount_1h": math.fsum(amounts_1h),
        "card_amount_24h": math.fsum(amounts_24h),
        "card_distinct_merchants_24h": float(len(merchants)),
        "card_distinct_countries_24h": float(len(countries)),
        "card_secs_since_prev": since,
        "card_amount_vs_usual": (event.amount + 1.0) / (usual + 1.0),
        "card_history_count": float(h.card_n),
        "card_new_device": 1.0 if has_device and not h.device_known else 0.0,
        "card_new_country": 0.0 if h.country_known else 1.0,
        "card_new_merchant_24h": 0.0 if event.merchant_id in merchants else 1.0,
        "device_count_1h": float(sum(1 for dts, _ in h.device_events if dts >= lo1h)),
        "device_count_24h": float(len(h.device_events)),
        "device_distinct_cards_24h": float(len(cards)),
        "merchant_count_1m": float(m1),
        "merchant_count_1h": float(m60),
        "merchant_count_24h": float(m1440),
    }


# ------------------------------------------------------------------------ shared encoding


def _card_member(e: Event) -> str:
    return f"{e.transaction_id}{SEP}{e.amount!r}{SEP}{e.merchant_id}{SEP}{e.country}"


def _device_member(e: Event) -> str:
    return f"{e.transaction_id}{SEP}{e.card_id}"


def _milli(amount: float) -> int:
    """An amount in milli-units, clamped to [0, MAX_TOTAL_MILLI]."""
    return min(max(int(round(amount * 1000.0)), 0), MAX_TOTAL_MILLI) \
        if math.isfinite(amount) else MAX_TOTAL_MILLI


def _added(total: int, milli: int) -> int:
    """What adding ``milli`` to a card's ``total`` adds once clamped at MAX_TOTAL_MILLI."""
    return max(min(milli, MAX_TOTAL_MILLI - total), 0)


def _decode_card(member: str, score: float) -> tuple[float, float, str, str]:
    _, amount, merchant, country = member.split(SEP)
    return (score, float(amount), merchant, country)


# ------------------------------------------------------------------------------ in memory


class _Window:
    """A sorted (timestamp, member) list with Redis ZSET range semantics (inclusive)."""

    __slots__ = ("scores", "members", "index")

    def __init__(self) -> None:
        self.scores: list[float] = []
        self.members: list[str] = []
        self.index: set[str] = set()

    def range(self, lo: float, hi: float) -> tuple[list[float], list[str]]:
        i = bisect.bisect_left(self.scores, lo)
        j = bisect.bisect_right(self.scores, hi)
        return self.scores[i:j], self.members[i:j]

    def count(self, lo: float, hi: float) -> int:
        return bisect.bisect_right(self.scores, hi) - bisect.bisect_left(self.scores, lo)

    def add(self, score: float, member: str) -> None:
        if member in self.index:  # a ZADD of an existing member moves it
            k = self.members.index(member)
            del self.scores[k], self.members[k]
        self.index.add(member)
        k = bisect.bisect_right(self.scores, score)
        self.scores.insert(k, score)
        self.members.insert(k, member)

    def trim(self, before: float) -> None:
        k = bisect.bisect_left(self.scores, before)
        if k:
            self.index.difference_update(self.members[:k])
            del self.scores[:k], self.members[:k]


class MemoryVelocityStore:
    """Velocity state in this process (offline replay); same semantics as the Redis store."""

    def __init__(self) -> None:
        self._cards: dict[str, _Window] = {}
        self._card_stats: dict[str, dict[str, object]] = {}
        self._devices: dict[str, _Window] = {}
        self._merchants: dict[str, _Window] = {}

    def observe(self, events: Sequence[Event]) -> list[History]:
        return [self._observe_one(e) for e in events]

    def _observe_one(self, e: Event) -> History:
        ts = e.timestamp
        lo = ts - HORIZON
        trim = ts - TRIM
        card = self._cards.setdefault(e.card_id, _Window())
        scores, members = card.range(lo, ts)
        card_events = [_decode_card(m, s) for s, m in zip(scores, members)]
        card.add(ts, _card_member(e))
        card.trim(trim)

        stats = self._card_stats.setdefault(e.card_id, {"n": 0, "amt": 0, "last": None})
        device_field = f"d:{e.device_id}" if e.device_id is not None else None
        country_field = f"c:{e.country}"
        n, amt, last = stats["n"], stats["amt"], stats["last"]
        device_known = device_field is not None and device_field in stats
        country_known = country_field in stats
        stats["n"] = int(n) + 1  # type: ignore[call-overload]
        stats["amt"] = int(amt) + _added(int(amt), _milli(e.amount))  # type: ignore[call-overload]
        stats["last"] = ts
        if device_field is not None:
            stats[device_field] = ts
        stats[country_field] = ts

        merchant = self._merchants.setdefault(e.merchant_id, _Window())
        counts = (
            merchant.count(ts - WINDOWS["1m"], ts),
            merchant.count(ts - WINDOWS["1h"], ts),
            merchant.count(lo, ts),
        )
        merchant.add(ts, e.transaction_id)
        merchant.trim(trim)

        device_events: list[tuple[float, str]] = []
        if e.device_id is not None:
            device = self._devices.setdefault(e.device_id, _Window())
            dscores, dmembers = device.range(lo, ts)
            device_events = [(s, m.split(SEP)[1]) for s, m in zip(dscores, dmembers)]
            device.add(ts, _device_member(e))
            device.trim(trim)
        return History(
            card_events=card_events,
            card_n=int(n),  # type: ignore[call-overload]
            card_amount_milli=int(amt),  # type: ignore[call-overload]
            card_last_ts=None if last is None else float(last),  # type: ignore[arg-type]
            device_known=device_known,
            country_known=country_known,
            merchant_counts=counts,
            device_events=device_events,
        )


# --------------------------------------------------------------------------------- Redis

# One script call observes a whole chunk of transactions, in order (one command to pack,
# send and parse instead of one per transaction; each chunk is atomic).
# KEYS, 5 per transaction: card window, card stats, merchant window, device window
#   ('' = none), guard ('' = none)
# ARGV: window ttl, card ttl, guard ttl, then 12 per transaction: ts, 24h lower bound,
#   1h lower bound, 1m lower bound, trim bound, card member, merchant member, device
#   member, amount (milli), device field, country field, guard value (pending marker)
# Every number arrives as a string made by Python (Lua's tostring would lose digits).
# Every argument is checked before the first write: a bad one fails the call and applies
# nothing. A free guard is claimed (SET to the pending marker) in the same atomic step that
# counts the transaction, so two concurrent requests for one id count it once; the other
# gets {'dup', <guard value>}.
# Reply per transaction: card window, previous stats, merchant counts, device window,
# amount added (clamped), then what the trims removed (card, merchant, device).
_OBSERVE = """
local wttl, cttl, gttl = ARGV[1], ARGV[2], ARGV[3]
local cap = 9007199254740991
for i = 0, #KEYS / 5 - 1 do
  local a = 3 + i * 12
  for j = 1, 5 do
    if not tonumber(ARGV[a + j]) then
      return redis.error_reply('velocity: argument ' .. (a + j) .. ' must be a number')
    end
  end
  local milli = tonumber(ARGV[a + 9])
  if not milli or milli < 0 or milli > cap or milli ~= math.floor(milli) then
    return redis.error_reply('velocity: amount must be an integer in [0, 2^53), got '
                             .. ARGV[a + 9])
  end
end
local function trim(key, bound)
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', bound, 'WITHSCORES')
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', bound) end
  return gone
end
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local k, a = i * 5, 3 + i * 12
  local held = false
  if KEYS[k + 5] ~= '' then
    held = redis.call('GET', KEYS[k + 5])
    if not held then redis.call('SET', KEYS[k + 5], ARGV[a + 12], 'EX', gttl) end
  end
  if held then
    out[i + 1] = {'dup', held}
  else
    local ts, lo = ARGV[a + 1], ARGV[a + 2]
    local bound = '(' .. ARGV[a + 5]
    local card = redis.call('ZRANGEBYSCORE', KEYS[k + 1], lo, ts, 'WITHSCORES')
    redis.call('ZADD', KEYS[k + 1], ts, ARGV[a + 6])
    local gone_card = trim(KEYS[k + 1], bound)
    redis.call('EXPIRE', KEYS[k + 1], wttl)
    local stats
    if ARGV[a + 10] ~= '' then
      stats = redis.call('HMGET', KEYS[k + 2], 'n', 'amt', 'last', ARGV[a + 11], ARGV[a + 10])
      redis.call('HSET', KEYS[k + 2], 'last', ts, ARGV[a + 11], ts, ARGV[a + 10], ts)
    else
      stats = redis.call('HMGET', KEYS[k + 2], 'n', 'amt', 'last', ARGV[a + 11])
      redis.call('HSET', KEYS[k + 2], 'last', ts, ARGV[a + 11], ts)
    end
    local total = tonumber(stats[2]) or 0
    local add = tonumber(ARGV[a + 9])
    if total + add > cap then add = cap - total end
    if add < 0 then add = 0 end
    redis.call('HINCRBY', KEYS[k + 2], 'n', 1)
    redis.call('HINCRBY', KEYS[k + 2], 'amt', string.format('%d', add))
    redis.call('EXPIRE', KEYS[k + 2], cttl)
    local m1 = redis.call('ZCOUNT', KEYS[k + 3], ARGV[a + 4], ts)
    local m60 = redis.call('ZCOUNT', KEYS[k + 3], ARGV[a + 3], ts)
    local m1440 = redis.call('ZCOUNT', KEYS[k + 3], lo, ts)
    redis.call('ZADD', KEYS[k + 3], ts, ARGV[a + 7])
    local gone_merchant = trim(KEYS[k + 3], bound)
    redis.call('EXPIRE', KEYS[k + 3], wttl)
    local dev, gone_device = {}, {}
    if KEYS[k + 4] ~= '' then
      dev = redis.call('ZRANGEBYSCORE', KEYS[k + 4], lo, ts, 'WITHSCORES')
      redis.call('ZADD', KEYS[k + 4], ts, ARGV[a + 8])
      gone_device = trim(KEYS[k + 4], bound)
      redis.call('EXPIRE', KEYS[k + 4], wttl)
    end
    out[i + 1] = {card, stats, {m1, m60, m1440}, dev, add, gone_card, gone_merchant,
                  gone_device}
  end
end
return out
"""

# Takes back one observed transaction (a score that failed after the observe): removes
# its members, puts back what its trims removed, subtracts its count and amount (so a
# concurrent request's increments stay), restores the fields it set unless another
# transaction set them since, and frees its guard. Does nothing when the guard no longer
# holds this request's pending marker (the decision was recorded after all).
# KEYS: as _OBSERVE's 5. ARGV: card member, merchant member, device member, device
#   field, country field, ts, amount added, previous n, amt, last, country value, device
#   value ('' = absent), pending marker, then per window (card, merchant, device) a count
#   and that many (member, score) pairs.
_UNDO = """
local g = KEYS[5]
if g ~= '' and redis.call('GET', g) ~= ARGV[13] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
if KEYS[4] ~= '' then redis.call('ZREM', KEYS[4], ARGV[3]) end
local p = 14
for _, key in ipairs({KEYS[1], KEYS[3], KEYS[4]}) do
  local count = tonumber(ARGV[p])
  p = p + 1
  for _ = 1, count do
    redis.call('ZADD', key, ARGV[p + 1], ARGV[p])
    p = p + 2
  end
end
local h, ts = KEYS[2], ARGV[6]
local n = redis.call('HINCRBY', h, 'n', -1)
redis.call('HINCRBY', h, 'amt', '-' .. ARGV[7])
if ARGV[8] == '' and n <= 0 then redis.call('HDEL', h, 'n', 'amt') end
local function restore(field, previous)
  if redis.call('HGET', h, field) == ts then
    if previous == '' then redis.call('HDEL', h, field)
    else redis.call('HSET', h, field, previous) end
  end
end
restore('last', ARGV[10])
restore(ARGV[5], ARGV[11])
if ARGV[4] ~= '' then restore(ARGV[4], ARGV[12]) end
if g ~= '' then redis.call('DEL', g) end
return 1
"""
# Transactions per script call: bounds how long one call holds Redis (~50 us each).
CHUNK = 256
_TTLS = (str(WINDOW_KEY_TTL), str(CARD_KEY_TTL))
_W1H, _W1M = WINDOWS["1h"], WINDOWS["1m"]


class RedisVelocityStore:
    """Velocity state in Redis, shared by every replica; one script call per chunk of
    transactions (a request of up to ``CHUNK`` transactions is one command)."""

    def __init__(self, client: redis.Redis, prefix: str = "fraud:") -> None:
        self._redis = client
        self._prefix = prefix
        self._sha = client.register_script(_OBSERVE).sha
        self._undo = client.register_script(_UNDO)

    def observe(self, events: Sequence[Event]) -> list[History]:
        return self.observe_guarded(events, None)  # type: ignore[return-value]

    def observe_guarded(
        self, events: Sequence[Event], guards: Sequence[str] | None,
        markers: Sequence[str] | None = None, guard_ttl: int = WINDOW_KEY_TTL,
    ) -> list[History | Claimed]:
        """Record ``events`` in order, claiming each one's guard key (set to its marker,
        ``"1"`` by default, for ``guard_ttl`` seconds). An event whose guard key already
        exists is left untouched: its slot holds ``Claimed`` with the guard's value (a
        retry, or a concurrent request, of the same transaction).

        All or nothing: if a chunk fails (e.g. a bad argument), the chunks already
        applied are undone and the error raised."""
        commands = []
        for start in range(0, len(events), CHUNK):
            keys: list[str] = []
            args: list[str] = [*_TTLS, str(int(guard_ttl))]
            for i in range(start, min(start + CHUNK, len(events))):
                self._call(events[i], guards[i] if guards else "",
                           markers[i] if markers else "1", keys, args)
            commands.append((keys, args))
        if len(commands) == 1:
            keys, args = commands[0]
            replies = self._eval(keys, args)
        else:
            chunks = self._pipeline(commands)
            failed = next((r for r in chunks if isinstance(r, Exception)), None)
            if failed is not None:
                done = [(start, r) for start, r in zip(range(0, len(events), CHUNK), chunks)
                        if not isinstance(r, Exception)]
                for start, chunk in done:
                    part = slice(start, start + len(chunk))
                    self.undo(events[part], [self._decode(r) for r in chunk],
                              guards[part] if guards else None,
                              markers[part] if markers else None)
                raise failed
            replies = [r for chunk in chunks for r in chunk]
        decode = self._decode
        return [decode(r) for r in replies]

    def undo(self, events: Sequence[Event], observed: Sequence[History | Claimed],
             guards: Sequence[str] | None = None, markers: Sequence[str] | None = None
             ) -> int:
        """Take back what ``observe_guarded`` applied for ``events`` (its results in
        ``observed``; ``Claimed`` slots are skipped), newest first; how many were undone.

        A transaction whose guard no longer holds its marker (its decision was recorded)
        is kept. The windows' and stats' expiry times stay as the observe refreshed them."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for i in reversed(range(len(events))):
            h = observed[i]
            if not isinstance(h, History) or h.undo is None:
                continue
            e = events[i]
            keys: list[str] = []
            self._call(e, guards[i] if guards else "", markers[i] if markers else "1",
                       keys, [])
            added, stats, gone_card, gone_merchant, gone_device = h.undo
            n, amt, last, country = stats[0], stats[1], stats[2], stats[3]
            device = stats[4] if len(stats) > 4 else None
            tid, card = e.transaction_id, e.card_id
            args: list[Any] = [
                _card_member(e), tid,
                f"{tid}{SEP}{card}" if e.device_id is not None else "",
                f"d:{e.device_id}" if e.device_id is not None else "", f"c:{e.country}",
                repr(e.timestamp), str(int(added)),
                *(b"" if v is None else v for v in (n, amt, last, country, device)),
                markers[i] if markers and guards else "1",
            ]
            for gone in (gone_card, gone_merchant, gone_device):
                args.append(str(len(gone) // 2))
                args += gone
            self._undo(keys=keys, args=args, client=pipe)
            count += 1
        if count:
            return sum(int(r) for r in pipe.execute())
        return 0

    def _eval(self, keys: list[str], args: list[str]) -> Any:
        try:
            return self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._sha = self._redis.script_load(_OBSERVE)
            return self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)

    def _pipeline(self, commands: list[tuple[list[str], list[str]]]) -> list[Any]:
        # Not MULTI: each script is atomic on its own, and the pipeline keeps their order.
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in commands:
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                if attempt:
                    raise next(r for r in replies if isinstance(r, Exception))
                # Without the script nothing ran: load it and send the chunks again.
                self._sha = self._redis.script_load(_OBSERVE)
                continue
            return replies  # type: ignore[no-any-return]
        raise AssertionError("unreachable")

    def _call(self, e: Event, guard: str, marker: str, keys: list[str], args: list[str]
              ) -> None:
        p = self._prefix
        ts = e.timestamp
        card, device = e.card_id, e.device_id
        tid = e.transaction_id
        if device is None:
            keys += (f"{p}v:c:{card}", f"{p}v:ch:{card}", f"{p}v:m:{e.merchant_id}", "", guard)
            dmember = dfield = ""
        else:
            keys += (f"{p}v:c:{card}", f"{p}v:ch:{card}", f"{p}v:m:{e.merchant_id}",
                     f"{p}v:d:{device}", guard)
            dmember, dfield = f"{tid}{SEP}{card}", f"d:{device}"
        args += (
            repr(ts), repr(ts - HORIZON), repr(ts - _W1H), repr(ts - _W1M), repr(ts - TRIM),
            f"{tid}{SEP}{e.amount!r}{SEP}{e.merchant_id}{SEP}{e.country}",
            tid, dmember, str(_milli(e.amount)), dfield, f"c:{e.country}", marker,
        )

    @staticmethod
    def _decode(reply: Any) -> History | Claimed:
        if len(reply) == 2:  # {'dup', value}: the guard key exists
            held = reply[1]
            return Claimed(held.decode() if isinstance(held, bytes) else str(held))
        card, stats, counts, dev = reply[0], reply[1], reply[2], reply[3]
        events = [
            _decode_card(card[i].decode(), float(card[i + 1])) for i in range(0, len(card), 2)
        ]
        n, amt, last, country = stats[0], stats[1], stats[2], stats[3]
        device = stats[4] if len(stats) > 4 else None
        return History(
            card_events=events,
            card_n=int(n) if n is not None else 0,
            card_amount_milli=int(amt) if amt is not None else 0,
            card_last_ts=float(last) if last is not None else None,
            device_known=device is not None,
            country_known=country is not None,
            merchant_counts=(int(counts[0]), int(counts[1]), int(counts[2])),
            device_events=[
                (float(dev[i + 1]), dev[i].decode().split(SEP)[1]) for i in range(0, len(dev), 2)
            ],
            undo=(reply[4], stats, reply[5], reply[6], reply[7]),
        )


def seed(store: VelocityStore, events: Sequence[Event], chunk: int = 2000) -> int:
    """Load history into ``store`` (e.g. Redis before a service first starts), so the
    first live transaction of each card is compared with its past, not with nothing."""
    for start in range(0, len(events), chunk):
        store.observe(events[start:start + chunk])
    return len(events)
