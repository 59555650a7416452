"""Velocity features: how fast a card, device and merchant have been transacting.

One feature function (``velocity_features``) over the recent history of a transaction's
card, device and merchant; two stores of that history with the same semantics:

- ``RedisVelocityStore``: shared by every replica. One Lua script call reads the prior
  history of each transaction of a request and records it, in order and atomically (one
  command per request up to ``CHUNK`` transactions; larger batches pipeline the chunks;
  ``observe_in_parts`` sends a batch's two halves at once, so the service scores the
  first while Redis counts the second), so concurrent replicas see a consistent serial
  order.
  On a Redis Cluster the card's, merchant's and device's keys live on different masters:
  the store claims each transaction's guard first, then runs one script per entity (see
  ``RedisVelocityStore._observe_cluster``); the card keys carry the card id as their hash
  tag (``v:cw:{<card>}``, ``v:ch:{<card>}``) so the card's window and stats stay one script.
- ``MemoryVelocityStore``: in process, for replaying history offline (training, replay).

Both return the same ``History`` for the same sequence of transactions, so online and
offline feature vectors are identical (tests/fraud/test_velocity.py shows it).

State per entity (keys under the service prefix; the note above ``_LIB``):
- ``v:cw:<card>``     string: the card's records (ts, id, amount, merchant, country), 25 h
- ``v:ch:<card>``     hash: n, amount total in milli-units, last timestamp, seen devices/countries
- ``v:dw:<device>``   string: the device's records (ts, id, card), 25 h
- ``v:mm:<merchant>`` sorted set, score = timestamp in ms, member = id (25 h)

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
from collections.abc import Callable, Sequence
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
    # Comprehensions over the (few, or for a hot card dozens of) records: each a C loop.
    events = h.card_events
    amounts_24h = [e[1] for e in events]
    amounts_1h = [e[1] for e in events if e[0] >= lo1h]
    amounts_1m = [e[1] for e in events if e[0] >= lo1m] if amounts_1h else []
    merchants = {e[2] for e in events}
    countries = {e[3] for e in events}
    last = max([e[0] for e in events]) if events else -math.inf
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

# A card's and a device's window is one string: the text of its smallest record
# timestamp, then its records in arrival order, each REC followed by its fields joined by
# SEP (card: ts, transaction id, amount, merchant, country; device: ts, transaction id,
# card). One GET reads a window and one SET writes
# it back: a sorted set cost a range read with scores, a ZADD and an EXPIRE, and its
# small (listpack) encoding re-parses every 17-digit score on each read.
REC = "\x1e"  # never in an identifier either


def _card_record(e: Event) -> str:
    return f"{REC}{e.timestamp!r}{SEP}{e.transaction_id}{SEP}{e.amount!r}{SEP}" \
           f"{e.merchant_id}{SEP}{e.country}"


def _device_record(e: Event) -> str:
    return f"{REC}{e.timestamp!r}{SEP}{e.transaction_id}{SEP}{e.card_id}"


def _milli(amount: float) -> int:
    """An amount in milli-units, clamped to [0, MAX_TOTAL_MILLI]."""
    return min(max(int(round(amount * 1000.0)), 0), MAX_TOTAL_MILLI) \
        if math.isfinite(amount) else MAX_TOTAL_MILLI


def _ms(ts: float) -> int:
    """A timestamp in whole milliseconds: a merchant window's score. An integer score is
    stored as one in a small sorted set, so ZCOUNT compares integers instead of parsing
    a 17-digit decimal per member; the memory store counts the same integers.

    >>> _ms(1000.0), _ms(1000.0005), _ms(-0.0005)
    (1000000, 1000000, -1)
    """
    return math.floor(ts * 1000.0)


_W1M_MS, _W1H_MS, _W24H_MS = (int(WINDOWS[w] * 1000) for w in ("1m", "1h", "24h"))
_TRIM_MS = int(TRIM * 1000)


def _added(total: int, milli: int) -> int:
    """What adding ``milli`` to a card's ``total`` adds once clamped at MAX_TOTAL_MILLI."""
    return max(min(milli, MAX_TOTAL_MILLI - total), 0)


def _fields(blob: bytes | str) -> list[str]:
    """A window's fields in one list: '', then each record's fields in turn (one split
    and column slices: a hot card's dozens of records cost a few C loops)."""
    text = blob.decode() if isinstance(blob, bytes) else blob
    return text.replace(REC, SEP).split(SEP)


def _between(ts: list[float], rows: list[Any], lo: float, hi: float) -> list[Any]:
    """``rows`` (``ts`` their timestamps) in [lo, hi]."""
    if min(ts) < lo or max(ts) > hi:
        return [r for r in rows if lo <= r[0] <= hi]
    return rows


def _card_window(blob: bytes | str | None, lo: float, hi: float
                 ) -> list[tuple[float, float, str, str]]:
    """The (ts, amount, merchant, country) records of a card window in [lo, hi]."""
    if not blob:
        return []
    f = _fields(blob)  # 5 fields per record
    ts = list(map(float, f[1::5]))
    return _between(ts, list(zip(ts, map(float, f[3::5]), f[4::5], f[5::5])), lo, hi)


def _device_window(blob: bytes | str | None, lo: float, hi: float) -> list[tuple[float, str]]:
    """The (ts, card) records of a device window in [lo, hi]."""
    if not blob:
        return []
    f = _fields(blob)  # 3 fields per record
    ts = list(map(float, f[1::3]))
    return _between(ts, list(zip(ts, f[3::3])), lo, hi)


# ------------------------------------------------------------------------------ in memory


class _Window:
    """A sorted (score, member) list with Redis ZSET range semantics (inclusive)."""

    __slots__ = ("scores", "members", "index")

    def __init__(self) -> None:
        self.scores: list[int] = []
        self.members: list[str] = []
        self.index: set[str] = set()

    def count(self, lo: int, hi: int) -> int:
        return bisect.bisect_right(self.scores, hi) - bisect.bisect_left(self.scores, lo)

    def add(self, score: int, member: str) -> None:
        if member in self.index:  # a ZADD of an existing member moves it
            k = self.members.index(member)
            del self.scores[k], self.members[k]
        self.index.add(member)
        k = bisect.bisect_right(self.scores, score)
        self.scores.insert(k, score)
        self.members.insert(k, member)

    def trim(self, before: int) -> None:
        k = bisect.bisect_left(self.scores, before)
        if k:
            self.index.difference_update(self.members[:k])
            del self.scores[:k], self.members[:k]


def _trimmed(records: list[Any], before: float) -> list[Any]:
    """A window's records without those older than ``before`` (as the script's trim)."""
    if any(r[0] < before for r in records):
        return [r for r in records if r[0] >= before]
    return records


class MemoryVelocityStore:
    """Velocity state in this process (offline replay); same semantics as the Redis store."""

    def __init__(self) -> None:
        self._cards: dict[str, list[tuple[float, float, str, str]]] = {}
        self._card_stats: dict[str, dict[str, object]] = {}
        self._devices: dict[str, list[tuple[float, str]]] = {}
        self._merchants: dict[str, _Window] = {}

    def observe(self, events: Sequence[Event]) -> list[History]:
        return [self._observe_one(e) for e in events]

    def _observe_one(self, e: Event) -> History:
        ts = e.timestamp
        lo = ts - HORIZON
        trim = ts - TRIM
        card = _trimmed(self._cards.get(e.card_id, []), trim)
        card_events = [r for r in card if lo <= r[0] <= ts]
        self._cards[e.card_id] = [*card, (ts, e.amount, e.merchant_id, e.country)]

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

        ms = _ms(ts)
        merchant = self._merchants.setdefault(e.merchant_id, _Window())
        counts = (merchant.count(ms - _W1M_MS, ms), merchant.count(ms - _W1H_MS, ms),
                  merchant.count(ms - _W24H_MS, ms))
        merchant.trim(ms - _TRIM_MS)
        merchant.add(ms, e.transaction_id)

        device_events: list[tuple[float, str]] = []
        if e.device_id is not None:
            device = _trimmed(self._devices.get(e.device_id, []), trim)
            device_events = [r for r in device if lo <= r[0] <= ts]
            self._devices[e.device_id] = [*device, (ts, e.card_id)]
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
#
# State per entity (keys under the service prefix; on a cluster the card's two keys
# carry the card id as hash tag, ``v:cw:{<card>}``, so the card stays one script):
# - ``v:cw:<card>``   string: the card's window records (24 h + the trim margin)
# - ``v:ch:<card>``   hash: n, amount total in milli-units, last timestamp, and one field
#                     per device (``d:<id>``) and country (``c:<code>``) the card used
# - ``v:mm:<merchant>`` sorted set, score = timestamp in ms, member = transaction id
# - ``v:dw:<device>`` string: the device's window records
#
# The scripts are made of one Lua library (_LIB: parsing and one function per entity),
# so the single-server script (every entity of a chunk of transactions in one call) and
# the cluster's per-entity scripts run the same code.
#
# A transaction is one argument, its fields joined by SEP (redis-py encodes and frames
# every argument on its own, about 1 us each): ts, transaction id, card, merchant,
# device ('' = none, else 'd' + the id), amount, country, amount (milli), ts (ms), guard
# key ('' = none), guard value (pending marker). Every argument is checked before the
# first write: a bad one fails the call and applies nothing.
# ts and the amount stay the strings Python made (repr: they parse back to the same
# doubles), so a window bound computed here (t - TRIM) is Python's ``ts - TRIM``.
_LIB = """
local S, R = '\\031', '\\030'
local F = '([^' .. S .. ']*)'
local PATTERN = '^' .. F .. string.rep(S .. F, 10) .. '$'
local TS = R .. '([^' .. S .. ']*)'
local RECORD = R .. '[^' .. R .. ']*'
local HEAD = '^[^' .. R .. ']*'
local cap = 9007199254740991
local match, gmatch, format, sub, tonumber, concat, floor =
  string.match, string.gmatch, string.format, string.sub, tonumber, table.concat, math.floor

local function parse(arg, i)
  local ts, tid, card, merchant, dev, amount, country, milli, ms, guard, marker =
    match(arg, PATTERN)
  if not ts then
    return nil, 'velocity: argument ' .. i .. ' must be 11 fields joined by the '
                .. 'separator, got ' .. arg
  end
  local t = tonumber(ts)
  if not t or t ~= t then return nil, 'velocity: timestamp must be a number, got ' .. ts end
  local m = tonumber(milli)
  if not m or m < 0 or m > cap or m ~= floor(m) then
    return nil, 'velocity: amount must be an integer in [0, 2^53), got ' .. milli
  end
  local tms = tonumber(ms)
  if not tms or tms ~= floor(tms) or tms > cap or tms < -cap then
    return nil, 'velocity: ms must be an integer, got ' .. ms
  end
  return {ts = ts, t = t, tid = tid, card = card, merchant = merchant, dev = dev,
          device = sub(dev, 2), amount = amount, country = country, milli = m, ms = tms,
          guard = guard, marker = marker}
end

local function parse_all(first)
  local txs = {}
  for i = first, #ARGV do
    local tx, err = parse(ARGV[i], i)
    if not tx then return nil, err end
    txs[#txs + 1] = tx
  end
  return txs
end

-- A window string: the text of its smallest record timestamp, then its records. The
-- head makes the trim check one comparison: a hot card's or device's window (a
-- card-testing burst) costs Redis a copy, not a parse of every record per transaction.
-- Returns the records before this one (those older than the trim bound removed) and the
-- removed ones, then stores the window with this record added.
local function lowest(body)
  local low, lowt = '', nil
  for ts in gmatch(body, TS) do
    local t = tonumber(ts)
    if not lowt or t < lowt then low, lowt = ts, t end
  end
  return low
end

local function window(key, record, tx, trim_t, ttl)
  local blob = redis.call('GET', key) or ''
  local low = match(blob, HEAD)
  local body = sub(blob, #low + 1)
  local gone = ''
  if low ~= '' and tonumber(low) < trim_t then
    local kept, lost = {}, {}
    for r in gmatch(body, RECORD) do
      if tonumber(match(r, TS)) < trim_t then lost[#lost + 1] = r
      else kept[#kept + 1] = r end
    end
    body, gone = concat(kept), concat(lost)
    low = lowest(body)
  end
  if low == '' or tx.t < tonumber(low) then low = tx.ts end
  redis.call('SET', key, low .. body .. record, 'EX', ttl)
  return body, gone
end

-- The card: its window, then its stats (previous values read, then written in one
-- HSET: the script is atomic, so read-then-write is the increment). The amount added
-- keeps the total <= cap (exact in a double); none leaves the stored value as it was.
local function card(wkey, skey, tx, wttl, cttl)
  local seen, gone = window(wkey, R .. tx.ts .. S .. tx.tid .. S .. tx.amount .. S
                            .. tx.merchant .. S .. tx.country, tx, tx.t - @TRIM@, wttl)
  local cf = 'c:' .. tx.country
  local stats
  if tx.dev ~= '' then
    stats = redis.call('HMGET', skey, 'n', 'amt', 'last', cf, 'd:' .. tx.device)
  else
    stats = redis.call('HMGET', skey, 'n', 'amt', 'last', cf)
  end
  local total = tonumber(stats[2]) or 0
  local add = tx.milli
  if total + add > cap then add = cap - total end
  if add < 0 then add = 0 end
  local n = format('%d', (tonumber(stats[1]) or 0) + 1)
  local amt = add > 0 and format('%d', total + add) or (stats[2] or '0')
  if tx.dev ~= '' then
    redis.call('HSET', skey, 'last', tx.ts, cf, tx.ts, 'd:' .. tx.device, tx.ts, 'n', n,
               'amt', amt)
  else
    redis.call('HSET', skey, 'last', tx.ts, cf, tx.ts, 'n', n, 'amt', amt)
  end
  redis.call('EXPIRE', skey, cttl)
  return {seen, gone, stats[1], stats[2], stats[3], stats[4], stats[5] or false, add}
end

-- The merchant: its 1 m, 1 h and 24 h counts up to ts, then the transaction added and
-- the window trimmed. Reply: the counts, what the trim removed (member, score pairs).
local function merchant(key, tx, wttl)
  local ms = tx.ms
  local hi = format('%d', ms)
  local counts = {redis.call('ZCOUNT', key, format('%d', ms - @W1M@), hi),
                  redis.call('ZCOUNT', key, format('%d', ms - @W1H@), hi),
                  redis.call('ZCOUNT', key, format('%d', ms - @W24H@), hi)}
  local bound = '(' .. format('%d', ms - @TRIMMS@)
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', bound, 'WITHSCORES')
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', bound) end
  redis.call('ZADD', key, hi, tx.tid)
  redis.call('EXPIRE', key, wttl)
  counts[4] = gone
  return counts
end

local function device(key, tx, wttl)
  local seen, gone = window(key, R .. tx.ts .. S .. tx.tid .. S .. tx.card, tx,
                            tx.t - @TRIM@, wttl)
  return {seen, gone}
end

-- Undo: a window without this record (the last match of the whole record), with what
-- its trim removed put back in front and its head recomputed; deleted when empty.
local function unwindow(key, record, gone)
  local blob = redis.call('GET', key) or ''
  local body = sub(blob, #match(blob, HEAD) + 1)
  local at, from = nil, 1
  while true do
    local i, j = string.find(body, record, from, true)
    if not i then break end
    local after = sub(body, j + 1, j + 1)
    if after == '' or after == R then at = i end
    from = i + 1
  end
  if at then body = sub(body, 1, at - 1) .. sub(body, at + #record) end
  body = gone .. body
  if body == '' then redis.call('DEL', key)
  else redis.call('SET', key, lowest(body) .. body, 'KEEPTTL') end
end

-- Undo of card(): subtracts the count and the amount added (a concurrent request's
-- increments stay) and restores the fields it set unless another transaction set them
-- since. ARGV from ``first``: record, trim removed, ts, amount added, previous n, amt,
-- last, country value, device value ('' = absent), country field, device field ('' =
-- no device).
local function card_undo(wkey, skey, a)
  unwindow(wkey, a[1], a[2])
  local ts = a[3]
  local n = redis.call('HINCRBY', skey, 'n', -1)
  redis.call('HINCRBY', skey, 'amt', '-' .. a[4])
  if a[5] == '' and n <= 0 then redis.call('HDEL', skey, 'n', 'amt') end
  local function restore(field, previous)
    if redis.call('HGET', skey, field) == ts then
      if previous == '' then redis.call('HDEL', skey, field)
      else redis.call('HSET', skey, field, previous) end
    end
  end
  restore('last', a[7])
  restore(a[10], a[8])
  if a[11] ~= '' then restore(a[11], a[9]) end
end

-- Undo of merchant(): ARGV from ``first``: member, then (member, score) pairs removed.
local function merchant_undo(key, a)
  redis.call('ZREM', key, a[1])
  for p = 2, #a, 2 do redis.call('ZADD', key, a[p + 1], a[p]) end
end

local function slice(from, to)
  local out = {}
  for i = from, to do out[#out + 1] = ARGV[i] end
  return out
end
""".replace("@TRIM@", repr(TRIM)).replace("@W1M@", str(_W1M_MS)) \
    .replace("@W1H@", str(_W1H_MS)).replace("@W24H@", str(_W24H_MS)) \
    .replace("@TRIMMS@", str(_TRIM_MS))

# One script call observes a whole chunk of transactions, in order, atomically. No KEYS:
# the keys are derived from the prefix (a single server only; the cluster's per-entity
# scripts declare theirs). ARGV: key prefix, window ttl, card ttl, guard ttl, reply (''
# = the histories, 'count' = how many transactions were applied: a seed reads nothing
# back), then one packed transaction each.
# A free guard is claimed (SET NX to the pending marker) in the same atomic step that
# counts the transaction, so two concurrent requests for one id count it once; the other
# gets {'dup', <guard value>}.
# Reply per transaction: the card's reply (window, trim removed, previous n, amt, last,
# country, device, amount added), the merchant's (1 m, 1 h, 24 h, trim removed), the
# device's (window, trim removed; {} without a device).
_OBSERVE = _LIB + """
local prefix, wttl, cttl, gttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local histories = ARGV[5] ~= 'count'
local txs, err = parse_all(6)
if not txs then return redis.error_reply(err) end
local out = {}
for i, tx in ipairs(txs) do
  local held = false
  -- SET NX claims a free guard in one call; only a taken one is read (GET).
  if tx.guard ~= '' and not redis.call('SET', tx.guard, tx.marker, 'NX', 'EX', gttl) then
    held = redis.call('GET', tx.guard)
  end
  if held then
    out[i] = {'dup', held}
  else
    local c = card(prefix .. 'v:cw:' .. tx.card, prefix .. 'v:ch:' .. tx.card, tx, wttl, cttl)
    local m = merchant(prefix .. 'v:mm:' .. tx.merchant, tx, wttl)
    local d = {}
    if tx.dev ~= '' then d = device(prefix .. 'v:dw:' .. tx.device, tx, wttl) end
    if histories then out[i] = {c, m, d} end
  end
end
if not histories then return #txs end
return out
"""

# Takes back one observed transaction (a score that failed after the observe), and frees
# its guard. Does nothing when the guard no longer holds this request's pending marker
# (the decision was recorded after all).
# KEYS: card window, card stats, merchant window, device window ('' = none), guard ('' =
#   none). ARGV: marker, then the card's 11 undo arguments (``card_undo``), the device's
#   record and trim removed, then the merchant's (``merchant_undo``).
_UNDO = _LIB + """
local g = KEYS[5]
if g ~= '' and redis.call('GET', g) ~= ARGV[1] then return 0 end
card_undo(KEYS[1], KEYS[2], slice(2, 12))
if KEYS[4] ~= '' then unwindow(KEYS[4], ARGV[13], ARGV[14]) end
merchant_undo(KEYS[3], slice(15, #ARGV))
if g ~= '' then redis.call('DEL', g) end
return 1
"""

# ------------------------------------------------------------------- Redis Cluster path
#
# A cluster runs a script only on keys of one slot, so a transaction's velocity update is
# split: its guard (the decision key, in the decision partition's slot) is claimed first,
# then one script per entity (card: window + stats under the card's hash tag; merchant;
# device), pipelined without MULTI (one round trip per master). Each script validates the
# same packed argument before writing, so one fails only on a Redis error.
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

# KEYS: card window, card stats. ARGV: window ttl, card ttl, the packed transaction.
_CARD = _LIB + """
local tx, err = parse(ARGV[3], 3)
if not tx then return redis.error_reply(err) end
return card(KEYS[1], KEYS[2], tx, ARGV[1], ARGV[2])
"""

# KEYS: a merchant's or a device's window. ARGV: window ttl, the packed transaction.
_MERCHANT = _LIB + """
local tx, err = parse(ARGV[2], 2)
if not tx then return redis.error_reply(err) end
return merchant(KEYS[1], tx, ARGV[1])
"""
_DEVICE = _LIB + """
local tx, err = parse(ARGV[2], 2)
if not tx then return redis.error_reply(err) end
return device(KEYS[1], tx, ARGV[1])
"""

# Undo of _CARD (KEYS as _CARD; ARGV: card_undo's 11), _MERCHANT (KEYS: the merchant's
# window; ARGV: merchant_undo's) and _DEVICE (KEYS: the device's window; ARGV: record,
# trim removed).
_CARD_UNDO = _LIB + "card_undo(KEYS[1], KEYS[2], ARGV)\nreturn 1\n"
_MERCHANT_UNDO = _LIB + "merchant_undo(KEYS[1], ARGV)\nreturn 1\n"
_DEVICE_UNDO = _LIB + "unwindow(KEYS[1], ARGV[1], ARGV[2])\nreturn 1\n"

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
_CLUSTER_SCRIPTS = {"claim": _CLAIM, "card": _CARD, "merchant": _MERCHANT, "device": _DEVICE,
                    "card_undo": _CARD_UNDO, "merchant_undo": _MERCHANT_UNDO,
                    "device_undo": _DEVICE_UNDO, "free": _FREE_GUARD}

# Transactions per script call: bounds how long one call holds Redis.
CHUNK = 256
# ``observe_in_parts`` splits a request of at least twice this many transactions.
PART_MIN = 16
# Transactions per pipeline of a load (``RedisVelocityStore.load``).
LOAD_BATCH = 8 * CHUNK
_TTLS = (str(WINDOW_KEY_TTL), str(CARD_KEY_TTL))


class RedisVelocityStore:
    """Velocity state in Redis, shared by every replica; one script call per chunk of
    transactions (a request of up to ``CHUNK`` transactions is one command).
    ``commands``: what sends a single call (``mlplatform.redisdb.DirectCommands`` on a
    service's request path; the client by default)."""

    def __init__(self, client: redis.Redis, prefix: str = "fraud:",
                 commands: Any = None) -> None:
        self._redis = client
        self._commands = commands or client
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
                    self.undo(events[part], [_decode(e, r) for e, r in zip(events[part], chunk)],
                              guards[part] if guards else None,
                              markers[part] if markers else None)
                raise failed
            replies = [r for chunk in chunks for r in chunk]
        return [_decode(e, r) for e, r in zip(events, replies)]

    def observe_in_parts(
        self, events: Sequence[Event], guards: Sequence[str], markers: Sequence[str],
        guard_ttl: int, consume: Callable[[int, int], None],
        into: list[History | Claimed | None],
    ) -> None:
        """``observe_guarded`` into ``into``, calling ``consume(lo, hi)`` as soon as the
        events ``lo:hi`` are observed, while Redis counts the later ones: a request
        scores its first half as Redis counts the second (a batch's worker otherwise
        idles for the whole script). Two script calls sent at once on a single server
        with ``commands`` that can ``send`` (``DirectCommands``) and at least
        ``2 * PART_MIN`` events (up to ``CHUNK``); otherwise ``observe_guarded`` and one
        ``consume``.

        On an error (a part's reply, or ``consume`` raising), the later parts' replies
        are still read, ``into`` holds what every part applied (None where nothing was),
        and the error is raised: the caller takes back what ``into`` holds (``undo``).
        If the connection fails, what its unread parts applied is unknown; their guards
        stay pending until their TTL, as a request whose process dies."""
        n = len(events)
        send = None if self._cluster else getattr(self._commands, "send", None)
        if send is None or n < 2 * PART_MIN or n > CHUNK:
            into[:] = self.observe_guarded(events, guards, markers, guard_ttl)
            consume(0, n)
            return
        head = [self._prefix, *_TTLS, str(int(guard_ttl)), ""]
        packed = self._pack(events, guards, markers)
        half = (n + 1) // 2
        parts = [(0, half), (half, n)]
        receive = send([["EVALSHA", self._sha, 0, *head, *packed[lo:hi]] for lo, hi in parts])

        def note(lo: int, hi: int, reply: Any) -> None:  # what the part lo:hi applied
            into[lo:hi] = [_decode(e, r) for e, r in zip(events[lo:hi], reply)]

        read = 0
        try:
            for lo, hi in parts:
                reply = receive()
                read += 1
                if isinstance(reply, redis.exceptions.NoScriptError) and lo == 0:
                    # A restarted Redis lost the script: read the other part's answer (also
                    # NOSCRIPT unless the script was loaded in between), then one call.
                    other = receive()
                    read += 1
                    if not isinstance(other, Exception):
                        note(half, n, other)
                        raise reply
                    self._sha = self._redis.script_load(_OBSERVE)
                    into[:] = self.observe_guarded(events, guards, markers, guard_ttl)
                    consume(0, n)
                    return
                if isinstance(reply, Exception):
                    raise reply
                note(lo, hi, reply)
                consume(lo, hi)
        except BaseException:
            for lo, hi in parts[read:]:  # keep the connection in step, note what ran
                try:
                    reply = receive()
                except redis.RedisError:
                    break
                if not isinstance(reply, Exception):
                    note(lo, hi, reply)
            raise

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
        ``observed``), newest first; an event whose guard no longer holds its marker (its
        decision was recorded) is kept. The windows' and stats' expiry times stay as the
        observe refreshed them."""
        if self._cluster:
            return self._undo_cluster(events, observed, guards, markers)
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for i in reversed(range(len(events))):
            h = observed[i]
            if not isinstance(h, History) or h.undo is None:
                continue
            e = events[i]
            card, stats, merchant, device = self._entity_keys(e)
            gone_device = h.undo[4]
            args: list[Any] = [markers[i] if markers and guards else "1",
                               *_card_undo_args(e, h.undo),
                               _device_record(e) if device else "", gone_device or b"",
                               *_merchant_undo_args(e, h.undo)]
            self._undo(keys=[card, stats, merchant, device or "",
                             guards[i] if guards else ""], args=args, client=pipe)
            count += 1
        if count:
            return sum(int(r) for r in pipe.execute())
        return 0

    def card_stats_key(self, card_id: str) -> str:
        """The key of a card's stats hash (tagged with the card id on a cluster)."""
        return self._entity_keys(Event("", 0.0, card_id, "", 0.0, "", None))[1]

    def _entity_keys(self, e: Event) -> tuple[str, str, str, str | None]:
        """Card window, card stats, merchant window, device window (None: no device); on
        a cluster the card's two keys share the card id as hash tag (one script)."""
        p = self._prefix
        card = f"{{{e.card_id}}}" if self._cluster else e.card_id
        return (f"{p}v:cw:{card}", f"{p}v:ch:{card}", f"{p}v:mm:{e.merchant_id}",
                None if e.device_id is None else f"{p}v:dw:{e.device_id}")

    # -- Redis Cluster (the note above _CARD) --------------------------------------------

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
        packed = self._pack([events[i] for i in fresh], None, None)
        commands: list[tuple[str, list[str], list[str]] | None] = []
        for i, arg in zip(fresh, packed):
            card, stats, merchant, device = self._entity_keys(events[i])
            commands.append(("card", [card, stats], [wttl, cttl, arg]))
            commands.append(("merchant", [merchant], [wttl, arg]))
            commands.append(None if device is None else ("device", [device], [wttl, arg]))
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
            # The single-server script's reply shape, so one decoder reads both.
            out.append(_decode(events[i], [replies[k], replies[k + 1], replies[k + 2] or []]))
            k += 3
        return out

    def _take_back(self, events: Sequence[Event], fresh: Sequence[int],
                   commands: Sequence[tuple[str, list[str], list[str]] | None],
                   replies: Sequence[Any]) -> None:
        """Undo the entity scripts that succeeded in a failed ``_observe_cluster``."""
        undo: list[tuple[str, list[str], list[Any]] | None] = []
        for k, (command, reply) in enumerate(zip(commands, replies)):
            if command is None or reply is None or isinstance(reply, Exception):
                continue
            e = events[fresh[k // 3]]
            name, keys, _ = command
            if name == "card":
                undo.append(("card_undo", keys, _card_undo_args(e, (reply[7], reply[2:7],
                                                                     reply[1], None))))
            elif name == "merchant":
                undo.append(("merchant_undo", keys, [e.transaction_id, *reply[3]]))
            else:
                undo.append(("device_undo", keys, [_device_record(e), reply[1]]))
        self._run(list(reversed(undo)))

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
        commands: list[tuple[str, list[str], list[Any]] | None] = []
        for i in reversed(todo):
            e, h = events[i], cast(History, observed[i])
            undo = cast(tuple[Any, ...], h.undo)
            card, cstats, merchant, device = self._entity_keys(e)
            commands.append(("card_undo", [card, cstats], _card_undo_args(e, undo)))
            commands.append(("merchant_undo", [merchant], _merchant_undo_args(e, undo)))
            if device is not None:
                commands.append(("device_undo", [device], [_device_record(e), undo[4] or b""]))
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
            return self._commands.execute_command("EVALSHA", self._sha, 0, *args)
        except redis.exceptions.NoScriptError:
            self._sha = self._redis.script_load(_OBSERVE)
            return self._commands.execute_command("EVALSHA", self._sha, 0, *args)

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
        """One packed argument per event (its fields joined by SEP, _LIB's ``parse``)."""
        s = SEP
        milli, ms = _milli, _ms
        if guards is None:
            return [f"{e.timestamp!r}{s}{e.transaction_id}{s}{e.card_id}{s}{e.merchant_id}{s}"
                    f"{'' if e.device_id is None else 'd' + e.device_id}{s}{e.amount!r}{s}"
                    f"{e.country}{s}{milli(e.amount)}{s}{ms(e.timestamp)}{s}{s}1"
                    for e in events]
        marks = markers if markers is not None else ["1"] * len(events)
        return [f"{e.timestamp!r}{s}{e.transaction_id}{s}{e.card_id}{s}{e.merchant_id}{s}"
                f"{'' if e.device_id is None else 'd' + e.device_id}{s}{e.amount!r}{s}"
                f"{e.country}{s}{milli(e.amount)}{s}{ms(e.timestamp)}{s}{g}{s}{m}"
                for e, g, m in zip(events, guards, marks)]


def _decode(e: Event, reply: Any) -> History | Claimed:
    """The History ``e`` saw from its script reply ({card, merchant, device} replies), or
    Claimed for {'dup', guard value}."""
    if len(reply) == 2:  # {'dup', value}: the guard key exists
        return Claimed(_text(reply[1]))
    card, merchant, device = reply
    seen, gone, n, amt, last, country, device_value, added = card
    ts = e.timestamp
    lo = ts - HORIZON
    stats = [n, amt, last, country, device_value]
    return History(
        card_events=_card_window(seen, lo, ts),
        card_n=int(n) if n is not None else 0,
        card_amount_milli=int(amt) if amt is not None else 0,
        card_last_ts=float(last) if last is not None else None,
        device_known=device_value is not None,
        country_known=country is not None,
        merchant_counts=(int(merchant[0]), int(merchant[1]), int(merchant[2])),
        device_events=_device_window(device[0], lo, ts) if device else [],
        undo=(added, stats, gone, merchant[3], device[1] if device else b""),
    )


def _card_undo_args(e: Event, undo: tuple[Any, ...]) -> list[Any]:
    """``card_undo``'s arguments (_LIB) from a History's ``undo``."""
    added, stats, gone = undo[0], undo[1], undo[2]
    return [_card_record(e), gone or b"", repr(e.timestamp), str(int(added)),
            *(b"" if v is None else v for v in stats),
            f"c:{e.country}", "" if e.device_id is None else f"d:{e.device_id}"]


def _merchant_undo_args(e: Event, undo: tuple[Any, ...]) -> list[Any]:
    """``merchant_undo``'s arguments (_LIB): the member, then the pairs its trim removed."""
    return [e.transaction_id, *undo[3]]


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
