"""Velocity features: how fast a card, device and merchant have been transacting.

One feature function (``velocity_features``) over the recent history of a transaction's
card, device and merchant; two stores of that history with the same semantics:

- ``RedisVelocityStore``: shared by every replica. One Lua script call reads the prior
  history of each transaction of a request and records it, in order and atomically (one
  command per request up to ``CHUNK`` transactions; larger batches pipeline the chunks),
  so concurrent replicas see a consistent serial order.
  On a Redis Cluster the card's, merchant's and device's keys live on different masters:
  the store claims each transaction's guard first, then runs one script per entity (see
  ``RedisVelocityStore._observe_cluster``); the card keys carry the card id as their hash
  tag (``v:c:{<card>}``, ``v:ch:{<card>}``) so the card's window and stats stay one script.
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
import hashlib
import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis

from mlplatform.redisdb import is_cluster

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
    if not h.card_events and not h.device_events:
        return _first_features(event, h)
    return _window_features(event, h)


def _window_features(event: Event, h: History) -> dict[str, float]:
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


def _first_features(event: Event, h: History) -> dict[str, float]:
    """``velocity_features`` when the card and the device have no transaction in 24 h
    (most transactions of most cards): the same values without the window walk."""
    last = h.card_last_ts
    since = NO_PREVIOUS if last is None else min(max(event.timestamp - last, 0.0), NO_PREVIOUS)
    usual = h.card_amount_milli / 1000.0 / h.card_n if h.card_n else event.amount
    m1, m60, m1440 = h.merchant_counts
    return {
        "card_count_1m": 0.0, "card_count_1h": 0.0, "card_count_24h": 0.0,
        "card_amount_1m": 0.0, "card_amount_1h": 0.0, "card_amount_24h": 0.0,
        "card_distinct_merchants_24h": 0.0, "card_distinct_countries_24h": 0.0,
        "card_secs_since_prev": since,
        "card_amount_vs_usual": (event.amount + 1.0) / (usual + 1.0),
        "card_history_count": float(h.card_n),
        "card_new_device": 1.0 if event.device_id is not None and not h.device_known else 0.0,
        "card_new_country": 0.0 if h.country_known else 1.0,
        "card_new_merchant_24h": 1.0,
        "device_count_1h": 0.0, "device_count_24h": 0.0, "device_distinct_cards_24h": 0.0,
        "merchant_count_1m": float(m1), "merchant_count_1h": float(m60),
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
# Each transaction is one argument, its fields joined by SEP: redis-py encodes and frames
# every argument on its own (about 1 us each), so the 17 strings a transaction used to be
# cost more than the script ran; the script splits them with one pattern match.
# No KEYS: the script derives the keys from the prefix (a single server only: the cluster
# path, ``_observe_cluster``, declares every key of its per-entity scripts).
# ARGV: key prefix, window ttl, card ttl, guard ttl, reply ('' = the histories, 'count' =
#   only how many transactions were applied: a seed reads nothing back), then one per
#   transaction:
#   ts, transaction id, card, merchant, device ('' = none, else 'd' + the id), amount,
#   country, amount (milli), guard key ('' = none), guard value (pending marker)
# The window bounds (24 h, 1 h, 1 m, trim) are computed here from ts, as Python's
# ``ts - HORIZON`` (the same IEEE double subtraction), and passed to Redis with 17
# significant digits, which parse back to that exact double (Lua's tostring keeps 14).
# ts, the amount and the scores Redis stores stay the strings Python made.
# Every argument is checked before the first write: a bad one fails the call and applies
# nothing. A free guard is claimed (SET to the pending marker) in the same atomic step that
# counts the transaction, so two concurrent requests for one id count it once; the other
# gets {'dup', <guard value>}.
# Reply per transaction: card window, previous stats, merchant counts, device window,
# amount added (clamped), then what the trims removed (card, merchant, device); with
# reply 'count', the number of transactions instead.
_OBSERVE = """
local prefix, wttl, cttl, gttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local histories = ARGV[5] ~= 'count'
local cap = 9007199254740991
local S = '\\031'
local F = '([^' .. S .. ']*)'
local pattern = '^' .. F .. string.rep(S .. F, 9) .. '$'
local match, format, tonumber = string.match, string.format, tonumber
local txs = {}
for i = 6, #ARGV do
  local ts, tid, card, merchant, dev, amount, country, milli, guard, marker =
    match(ARGV[i], pattern)
  if not ts then
    return redis.error_reply('velocity: argument ' .. i .. ' must be 10 fields joined by '
                             .. 'the separator, got ' .. ARGV[i])
  end
  local t = tonumber(ts)
  if not t or t ~= t then
    return redis.error_reply('velocity: timestamp must be a number, got ' .. ts)
  end
  local m = tonumber(milli)
  if not m or m < 0 or m > cap or m ~= math.floor(m) then
    return redis.error_reply('velocity: amount must be an integer in [0, 2^53), got '
                             .. milli)
  end
  txs[#txs + 1] = {ts, t, tid, card, merchant, dev, amount, country, m, guard, marker}
end
local function trim(key, bound)
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', bound, 'WITHSCORES')
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', bound) end
  return gone
end
-- A card's or device's window [lo, ts] and what the trim will remove (score < trim, the
-- added member aside: its ZADD moves it to ts) from one read of everything up to ts,
-- then the ZADD and the trim only when there is something to remove: one call less
-- than a read, a ZADD and a trim read. The scores Redis replies parse back to the exact
-- doubles it compares (17 digits), so the split is the one Redis's ranges would make.
local function observe_window(key, member, ts, lo_t, trim_t, bound)
  local all = redis.call('ZRANGEBYSCORE', key, '-inf', ts, 'WITHSCORES')
  local seen, gone = {}, {}
  for j = 1, #all, 2 do
    local s = tonumber(all[j + 1])
    if s >= lo_t then
      seen[#seen + 1] = all[j]
      seen[#seen + 1] = all[j + 1]
    elseif s < trim_t and all[j] ~= member then
      gone[#gone + 1] = all[j]
      gone[#gone + 1] = all[j + 1]
    end
  end
  redis.call('ZADD', key, ts, member)
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', bound) end
  return seen, gone
end
local out = {}
for i, tx in ipairs(txs) do
  local ts, t, tid, card, merchant, dev, amount, country, milli, guard, marker = unpack(tx)
  local held = false
  -- SET NX claims a free guard in one call; only a taken one is read (GET).
  if guard ~= '' and not redis.call('SET', guard, marker, 'NX', 'EX', gttl) then
    held = redis.call('GET', guard)
  end
  if held then
    out[i] = {'dup', held}
  else
    local lo_t, trim_t = t - @HORIZON@, t - @TRIM@
    local lo = format('%.17g', lo_t)
    local bound = '(' .. format('%.17g', trim_t)
    local ckey, skey = prefix .. 'v:c:' .. card, prefix .. 'v:ch:' .. card
    local mkey = prefix .. 'v:m:' .. merchant
    local cards, gone_card = observe_window(
      ckey, tid .. S .. amount .. S .. merchant .. S .. country, ts, lo_t, trim_t, bound)
    redis.call('EXPIRE', ckey, wttl)
    local stats = dev ~= ''
      and redis.call('HMGET', skey, 'n', 'amt', 'last', 'c:' .. country,
                     'd:' .. string.sub(dev, 2))
      or redis.call('HMGET', skey, 'n', 'amt', 'last', 'c:' .. country)
    local total = tonumber(stats[2]) or 0
    local add = milli
    if total + add > cap then add = cap - total end
    if add < 0 then add = 0 end
    -- n and amt written with the other fields (one HSET, not HSET + 2 HINCRBY): the
    -- script is atomic, so read-then-write is the increment. An amount added keeps the
    -- total <= cap (exact in a double); none leaves the stored value as it was.
    local n = format('%d', (tonumber(stats[1]) or 0) + 1)
    local amt = add > 0 and format('%d', total + add) or (stats[2] or '0')
    if dev ~= '' then
      redis.call('HSET', skey, 'last', ts, 'c:' .. country, ts, 'd:' .. string.sub(dev, 2), ts,
                 'n', n, 'amt', amt)
    else
      redis.call('HSET', skey, 'last', ts, 'c:' .. country, ts, 'n', n, 'amt', amt)
    end
    redis.call('EXPIRE', skey, cttl)
    local m1 = redis.call('ZCOUNT', mkey, format('%.17g', t - @W1M@), ts)
    local m60 = redis.call('ZCOUNT', mkey, format('%.17g', t - @W1H@), ts)
    local m1440 = redis.call('ZCOUNT', mkey, lo, ts)
    redis.call('ZADD', mkey, ts, tid)
    local gone_merchant = trim(mkey, bound)
    redis.call('EXPIRE', mkey, wttl)
    local devs, gone_device = {}, {}
    if dev ~= '' then
      local dkey = prefix .. 'v:d:' .. string.sub(dev, 2)
      devs, gone_device = observe_window(dkey, tid .. S .. card, ts, lo_t, trim_t, bound)
      redis.call('EXPIRE', dkey, wttl)
    end
    if histories then
      out[i] = {cards, stats, {m1, m60, m1440}, devs, add, gone_card, gone_merchant,
                gone_device}
    end
  end
end
if not histories then return #txs end
return out
""".replace("@HORIZON@", repr(HORIZON)).replace("@TRIM@", repr(TRIM)) \
    .replace("@W1H@", repr(WINDOWS["1h"])).replace("@W1M@", repr(WINDOWS["1m"]))

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
# ------------------------------------------------------------------- Redis Cluster path
#
# A cluster runs a script only on keys of one slot, so a transaction's velocity update is
# split: its guard (the decision key, in the decision partition's slot) is claimed first
# with SET NX GET, then one script per entity (card: window + stats under the card's hash
# tag; merchant; device), pipelined without MULTI (one round trip per master). Each script
# validates its arguments before writing, and they all get the same ones (made by Python
# from the same Event), so one fails only on a Redis error.
#
# Idempotency and partial failure:
# - The guard is claimed before anything is counted, so a retried or concurrent request
#   for one id finds it (pending marker, then the decision) and counts nothing: never
#   double-counted while the claiming process lives.
# - If an entity script answers an error (raised before its first write), the ones that
#   succeeded are undone (per-entity undo scripts) and the guards this call claimed are
#   freed, so the request fails with nothing counted and a retry counts once.
# - If the process dies between the guard and the scripts (or between the scripts), or a
#   connection drops so that which scripts ran is unknown (the error is raised, nothing is
#   taken back: taking back a script that did not run would corrupt the counts), the
#   pending guard expires after its TTL (service.PENDING_TTL_SECONDS); a retry after that
#   may count the entities that were applied twice. That is the single-server path's rule
#   for a process that dies before recording its decision, and the same trade: a payment
#   is never refused for longer than the TTL.
# - A card's window and stats are one script, so a card's state is never half updated.

# KEYS: card window, card stats. ARGV: window ttl, card ttl, ts, 24h lower bound, trim
# bound, card member, amount (milli), device field ('' = none), country field.
# Reply: card window, previous stats, amount added, what the trim removed.
_CARD = """
for j = 3, 5 do
  if not tonumber(ARGV[j]) then
    return redis.error_reply('velocity: argument ' .. j .. ' must be a number')
  end
end
local cap = 9007199254740991
local milli = tonumber(ARGV[7])
if not milli or milli < 0 or milli > cap or milli ~= math.floor(milli) then
  return redis.error_reply('velocity: amount must be an integer in [0, 2^53), got ' .. ARGV[7])
end
local ts, lo, bound = ARGV[3], ARGV[4], '(' .. ARGV[5]
local card = redis.call('ZRANGEBYSCORE', KEYS[1], lo, ts, 'WITHSCORES')
redis.call('ZADD', KEYS[1], ts, ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound, 'WITHSCORES')
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', bound) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local stats
if ARGV[8] ~= '' then
  stats = redis.call('HMGET', KEYS[2], 'n', 'amt', 'last', ARGV[9], ARGV[8])
  redis.call('HSET', KEYS[2], 'last', ts, ARGV[9], ts, ARGV[8], ts)
else
  stats = redis.call('HMGET', KEYS[2], 'n', 'amt', 'last', ARGV[9])
  redis.call('HSET', KEYS[2], 'last', ts, ARGV[9], ts)
end
local total = tonumber(stats[2]) or 0
local add = milli
if total + add > cap then add = cap - total end
if add < 0 then add = 0 end
redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('HINCRBY', KEYS[2], 'amt', string.format('%d', add))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {card, stats, add, gone}
"""

# KEYS: a merchant's or a device's window. ARGV: window ttl, ts, 24h, 1h, 1m lower
# bounds, trim bound, member, 'm' (reply the 1m/1h/24h counts) or 'd' (reply the window).
# Reply: counts or window, what the trim removed.
_WINDOW = """
for j = 2, 6 do
  if not tonumber(ARGV[j]) then
    return redis.error_reply('velocity: argument ' .. j .. ' must be a number')
  end
end
local ts, lo, bound = ARGV[2], ARGV[3], '(' .. ARGV[6]
local seen
if ARGV[8] == 'm' then
  seen = {redis.call('ZCOUNT', KEYS[1], ARGV[5], ts), redis.call('ZCOUNT', KEYS[1], ARGV[4], ts),
          redis.call('ZCOUNT', KEYS[1], lo, ts)}
else
  seen = redis.call('ZRANGEBYSCORE', KEYS[1], lo, ts, 'WITHSCORES')
end
redis.call('ZADD', KEYS[1], ts, ARGV[7])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound, 'WITHSCORES')
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', bound) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {seen, gone}
"""

# Undo of _CARD (as _UNDO's card part). KEYS: card window, card stats. ARGV: member, ts,
# amount added, previous n, amt, last, country value, device value ('' = absent), device
# field, country field, then a count and that many (member, score) pairs the trim removed.
_CARD_UNDO = """
redis.call('ZREM', KEYS[1], ARGV[1])
local p = 12
for _ = 1, tonumber(ARGV[11]) do
  redis.call('ZADD', KEYS[1], ARGV[p + 1], ARGV[p])
  p = p + 2
end
local h, ts = KEYS[2], ARGV[2]
local n = redis.call('HINCRBY', h, 'n', -1)
redis.call('HINCRBY', h, 'amt', '-' .. ARGV[3])
if ARGV[4] == '' and n <= 0 then redis.call('HDEL', h, 'n', 'amt') end
local function restore(field, previous)
  if redis.call('HGET', h, field) == ts then
    if previous == '' then redis.call('HDEL', h, field)
    else redis.call('HSET', h, field, previous) end
  end
end
restore('last', ARGV[6])
restore(ARGV[10], ARGV[7])
if ARGV[9] ~= '' then restore(ARGV[9], ARGV[8]) end
return 1
"""

# Undo of _WINDOW. KEYS: the window. ARGV: member, then a count and that many (member,
# score) pairs the trim removed.
_WINDOW_UNDO = """
redis.call('ZREM', KEYS[1], ARGV[1])
local p = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('ZADD', KEYS[1], ARGV[p + 1], ARGV[p])
  p = p + 2
end
return 1
"""

# Claims a guard: nil when it was free (now set to ARGV[1] for ARGV[2] seconds), else its
# value. (SET NX GET needs Redis 7; the bundled server is 6.2.) KEYS: guard.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# Frees a guard only while it still holds this request's pending marker (its decision
# was not recorded meanwhile). KEYS: guard. ARGV: marker.
_FREE_GUARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_CLUSTER_SCRIPTS = {"claim": _CLAIM, "card": _CARD, "window": _WINDOW,
                    "card_undo": _CARD_UNDO, "window_undo": _WINDOW_UNDO,
                    "free": _FREE_GUARD}

# Transactions per script call: bounds how long one call holds Redis (~50 us each).
CHUNK = 256
# Transactions per pipeline of a load (``RedisVelocityStore.load``).
LOAD_BATCH = 8 * CHUNK
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
        self._cluster = is_cluster(client)
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest()
                      for name, src in _CLUSTER_SCRIPTS.items()}

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
        if self._cluster:
            return self._observe_cluster(events, guards, markers, guard_ttl)
        head = [self._prefix, *_TTLS, str(int(guard_ttl)), ""]
        packed = self._pack(events, guards, markers)
        commands = [[*head, *packed[start:start + CHUNK]]
                    for start in range(0, len(events), CHUNK)]
        if len(commands) == 1:
            replies = self._eval(commands[0])
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

    def load(self, events: Sequence[Event]) -> int:
        """Record ``events`` in order without reading back what each one saw (``seed``):
        the script answers a count, and the next chunks are packed while Redis runs the
        previous ones (a worker thread sends them, in order). Not all or nothing: on an
        error, what ran before it stays applied (as ``seed`` has always left it), and the
        error is raised."""
        if self._cluster:  # per-entity scripts: the observe path, one batch at a time
            for start in range(0, len(events), LOAD_BATCH):
                self.observe(events[start:start + LOAD_BATCH])
            return len(events)
        head = [self._prefix, *_TTLS, "0", "count"]
        in_flight: deque[Future[list[Any]]] = deque()

        def wait() -> None:
            failed = next((r for r in in_flight.popleft().result()
                           if isinstance(r, Exception)), None)
            if failed is not None:
                for later in in_flight:
                    later.cancel()
                raise failed

        with ThreadPoolExecutor(1, thread_name_prefix="velocity-load") as sender:
            for start in range(0, len(events), LOAD_BATCH):
                packed = self._pack(events[start:start + LOAD_BATCH], None, None)
                in_flight.append(sender.submit(
                    self._pipeline, [[*head, *packed[i:i + CHUNK]]
                                     for i in range(0, len(packed), CHUNK)]))
                if len(in_flight) > 2:  # one running, one ready: memory stays bounded
                    wait()
            while in_flight:
                wait()
        return len(events)

    def undo(self, events: Sequence[Event], observed: Sequence[History | Claimed],
             guards: Sequence[str] | None = None, markers: Sequence[str] | None = None
             ) -> int:
        """Take back what ``observe_guarded`` applied for ``events`` (its results in
        ``observed``; ``Claimed`` slots are skipped), newest first; how many were undone.

        A transaction whose guard no longer holds its marker (its decision was recorded)
        is kept. The windows' and stats' expiry times stay as the observe refreshed them."""
        if self._cluster:
            return self._undo_cluster(events, observed, guards, markers)
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for i in reversed(range(len(events))):
            h = observed[i]
            if not isinstance(h, History) or h.undo is None:
                continue
            e = events[i]
            keys = self._keys(e, guards[i] if guards else "")
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

    def card_stats_key(self, card_id: str) -> str:
        """The key of a card's stats hash (tagged with the card id on a cluster)."""
        return f"{self._prefix}v:ch:{{{card_id}}}" if self._cluster \
            else f"{self._prefix}v:ch:{card_id}"

    # -- Redis Cluster (the note above _CARD) --------------------------------------------

    def _entity_keys(self, e: Event) -> tuple[str, str, str, str | None]:
        """Card window, card stats, merchant window, device window (None: no device) on a
        cluster: the card's two keys share the card id as hash tag (one script)."""
        p = self._prefix
        return (f"{p}v:c:{{{e.card_id}}}", f"{p}v:ch:{{{e.card_id}}}",
                f"{p}v:m:{e.merchant_id}",
                None if e.device_id is None else f"{p}v:d:{e.device_id}")

    def _observe_cluster(
        self, events: Sequence[Event], guards: Sequence[str] | None,
        markers: Sequence[str] | None, guard_ttl: int,
    ) -> list[History | Claimed]:
        n = len(events)
        held: list[Any] = [None] * n
        claimed = [bool(guards and guards[i]) for i in range(n)]
        if guards and any(claimed):
            # The guards first, in order: a transaction id twice in one request finds the
            # first one's marker, as on a single server.
            ttl = str(int(guard_ttl))
            held = self._run([("claim", [guards[i]], [markers[i] if markers else "1", ttl])
                              if claimed[i] else None for i in range(n)])
            failed = next((r for r in held if isinstance(r, Exception)), None)
            if failed is not None:
                self._free([(guards[i], markers[i] if markers else "1")
                            for i in range(n) if claimed[i] and held[i] is None])
                raise failed
        fresh = [i for i in range(n) if held[i] is None]
        wttl, cttl = _TTLS
        commands: list[tuple[str, list[str], list[str]] | None] = []
        for i in fresh:
            e = events[i]
            card, stats, merchant, device = self._entity_keys(e)
            ts = e.timestamp
            bounds = [repr(ts), repr(ts - HORIZON), repr(ts - _W1H), repr(ts - _W1M),
                      repr(ts - TRIM)]
            commands.append(("card", [card, stats], [
                wttl, cttl, bounds[0], bounds[1], bounds[4], _card_member(e),
                str(_milli(e.amount)), "" if device is None else f"d:{e.device_id}",
                f"c:{e.country}"]))
            commands.append(("window", [merchant], [wttl, *bounds, e.transaction_id, "m"]))
            commands.append(None if device is None else
                            ("window", [device], [wttl, *bounds, _device_member(e), "d"]))
        replies = self._run(commands) if commands else []
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            self._take_back(events, fresh, commands, replies)
            if guards:
                self._free([(guards[i], markers[i] if markers else "1")
                            for i in fresh if claimed[i]])
            raise failed
        out: list[History | Claimed] = []
        k = 0
        for i in range(n):
            if held[i] is not None:
                out.append(Claimed(_text(held[i])))
                continue
            card_r, merchant_r, device_r = replies[k], replies[k + 1], replies[k + 2]
            k += 3
            dev, gone_dev = device_r if device_r is not None else ([], [])
            # The single-server script's reply shape, so one decoder reads both.
            out.append(self._decode([card_r[0], card_r[1], merchant_r[0], dev, card_r[2],
                                     card_r[3], merchant_r[1], gone_dev]))
        return out

    def _take_back(self, events: Sequence[Event], fresh: Sequence[int],
                   commands: Sequence[tuple[str, list[str], list[str]] | None],
                   replies: Sequence[Any]) -> None:
        """Undo the entity scripts that succeeded in a failed ``_observe_cluster``."""
        undo: list[tuple[str, list[str], list[str]] | None] = []
        for k, (command, reply) in enumerate(zip(commands, replies)):
            if command is None or reply is None or isinstance(reply, Exception):
                continue
            e = events[fresh[k // 3]]
            name, keys, args = command
            if name == "card":
                undo.append(("card_undo", keys, self._card_undo_args(e, reply[2], reply[1],
                                                                      reply[3])))
            else:
                undo.append(("window_undo", keys, [args[6], *_gone_args(reply[1])]))
        self._run(list(reversed(undo)))

    def _card_undo_args(self, e: Event, added: Any, stats: Sequence[Any],
                        gone: Sequence[Any]) -> list[Any]:
        device = stats[4] if len(stats) > 4 else None
        return [_card_member(e), repr(e.timestamp), str(int(added)),
                *(b"" if v is None else v for v in (*stats[:4], device)),
                f"d:{e.device_id}" if e.device_id is not None else "", f"c:{e.country}",
                *_gone_args(gone)]

    def _undo_cluster(self, events: Sequence[Event], observed: Sequence[History | Claimed],
                      guards: Sequence[str] | None, markers: Sequence[str] | None) -> int:
        """``undo`` on a cluster: the transactions whose guard still holds their marker
        (or that have none) are taken back entity by entity, then their guards freed."""
        todo = [i for i, h in enumerate(observed[:len(events)])
                if isinstance(h, History) and h.undo is not None]
        if guards:
            wanted = [guards[i] for i in todo if guards[i]]
            # MGET serves one slot on a cluster; the non-atomic one asks each node.
            client: Any = self._redis
            values: list[Any] = client.mget_nonatomic(wanted) if wanted else []
            current = iter(values)
            mine = []
            for i in todo:
                if not guards[i]:
                    mine.append(i)
                elif _text(next(current) or b"") == (markers[i] if markers else "1"):
                    mine.append(i)
            todo = mine
        commands: list[tuple[str, list[str], list[str]] | None] = []
        for i in reversed(todo):
            e, h = events[i], cast(History, observed[i])
            added, stats, gone_card, gone_merchant, gone_device = cast(tuple[Any, ...], h.undo)
            card, cstats, merchant, device = self._entity_keys(e)
            commands.append(("card_undo", [card, cstats],
                             self._card_undo_args(e, added, stats, gone_card)))
            commands.append(("window_undo", [merchant],
                             [e.transaction_id, *_gone_args(gone_merchant)]))
            if device is not None:
                commands.append(("window_undo", [device],
                                 [_device_member(e), *_gone_args(gone_device)]))
        failed = next((r for r in self._run(commands) if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        if guards:
            self._free([(guards[i], markers[i] if markers else "1") for i in todo
                        if guards[i]])
        return len(todo)

    def _free(self, guards: Sequence[tuple[str, str]]) -> None:
        """Free ``guards`` (key, marker) still holding their marker."""
        if guards:
            self._run([("free", [key], [marker]) for key, marker in guards])

    def _run(self, commands: Sequence[tuple[str, list[str], list[Any]] | None]) -> list[Any]:
        """Run cluster ``commands`` (script name, keys, args; None = skipped, reply None)
        in one non-transactional pipeline; replies in order, errors as exceptions.

        A node that lost its scripts (restarted) answers NOSCRIPT without running
        anything: the scripts are loaded on every master and only those commands resent,
        so nothing runs twice."""
        replies: list[Any] = [None] * len(commands)
        todo = [k for k, c in enumerate(commands) if c is not None]
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for k in todo:
                name, keys, args = commands[k]  # type: ignore[misc]
                pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
            for k, reply in zip(todo, pipe.execute(raise_on_error=False)):
                replies[k] = reply
            todo = [k for k in todo if isinstance(replies[k], redis.exceptions.NoScriptError)]
            if not todo or attempt:
                break
            for name in {commands[k][0] for k in todo}:  # type: ignore[index]
                self._redis.script_load(_CLUSTER_SCRIPTS[name])
        return replies

    def _eval(self, args: list[str]) -> Any:
        try:
            return self._redis.execute_command("EVALSHA", self._sha, 0, *args)
        except redis.exceptions.NoScriptError:
            self._sha = self._redis.script_load(_OBSERVE)
            return self._redis.execute_command("EVALSHA", self._sha, 0, *args)

    def _pipeline(self, commands: list[list[str]]) -> list[Any]:
        # Not MULTI: each script is atomic on its own, and the pipeline keeps their order.
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command("EVALSHA", self._sha, 0, *args)
            replies = pipe.execute(raise_on_error=False)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                if attempt:
                    raise next(r for r in replies if isinstance(r, Exception))
                # Without the script nothing ran: load it and send the chunks again.
                self._sha = self._redis.script_load(_OBSERVE)
                continue
            return replies  # type: ignore[no-any-return]
        raise AssertionError("unreachable")

    @staticmethod
    def _pack(events: Sequence[Event], guards: Sequence[str] | None,
              markers: Sequence[str] | None) -> list[str]:
        """One ``_OBSERVE`` argument per event (its fields joined by SEP)."""
        s = SEP
        milli = _milli
        if guards is None:
            return [f"{e.timestamp!r}{s}{e.transaction_id}{s}{e.card_id}{s}{e.merchant_id}{s}"
                    f"{'' if e.device_id is None else 'd' + e.device_id}{s}{e.amount!r}{s}"
                    f"{e.country}{s}{milli(e.amount)}{s}{s}1" for e in events]
        marks = markers if markers is not None else ["1"] * len(events)
        return [f"{e.timestamp!r}{s}{e.transaction_id}{s}{e.card_id}{s}{e.merchant_id}{s}"
                f"{'' if e.device_id is None else 'd' + e.device_id}{s}{e.amount!r}{s}"
                f"{e.country}{s}{milli(e.amount)}{s}{g}{s}{m}"
                for e, g, m in zip(events, guards, marks)]

    def _keys(self, e: Event, guard: str) -> list[str]:
        """The keys ``_OBSERVE`` derives for ``e`` (``_UNDO`` declares them)."""
        p = self._prefix
        return [f"{p}v:c:{e.card_id}", f"{p}v:ch:{e.card_id}", f"{p}v:m:{e.merchant_id}",
                "" if e.device_id is None else f"{p}v:d:{e.device_id}", guard]

    @staticmethod
    def _decode(reply: Any) -> History | Claimed:
        if len(reply) == 2:  # {'dup', value}: the guard key exists
            held = reply[1]
            return Claimed(held.decode() if isinstance(held, bytes) else str(held))
        card, stats, counts, dev = reply[0], reply[1], reply[2], reply[3]
        events = [(float(score), float(amount), merchant, country)
                  for score, (_, amount, merchant, country)
                  in zip(card[1::2], (m.decode().split(SEP) for m in card[::2]))] if card else []
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
            device_events=[(float(score), m.decode().split(SEP)[1])
                           for m, score in zip(dev[::2], dev[1::2])] if dev else [],
            undo=(reply[4], stats, reply[5], reply[6], reply[7]),
        )


def _gone_args(gone: Sequence[Any]) -> list[Any]:
    """What a trim removed (flat member, score pairs) as undo arguments: count, pairs."""
    return [str(len(gone) // 2), *gone]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def seed(store: VelocityStore, events: Sequence[Event], chunk: int = 2000) -> int:
    """Load history into ``store`` (e.g. Redis before a service first starts), so the
    first live transaction of each card is compared with its past, not with nothing."""
    load = getattr(store, "load", None)
    if load is not None:
        return int(load(events))
    for start in range(0, len(events), chunk):
        store.observe(events[start:start + chunk])
    return len(events)
