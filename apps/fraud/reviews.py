"""The review queue: a ``review`` decision opens a case; an analyst's verdict closes it
and becomes a label, learned like a chargeback.

Keys (under the service prefix, ``MLSUITE_FRAUD_KEY_PREFIX``):

- ``<prefix>reviews:open``: sorted set, member = transaction id, score = ``scored_at``.
  The scorer adds every ``review`` decision in the same script that records the decision
  (``ZADD <prefix>reviews:open <scored_at> <transaction_id>``): a case exists exactly
  when its decision does. ``ReviewQueue.open_key(prefix)`` names it.
- ``<prefix>reviews:closed``: sorted set, member = transaction id, score = ``closed_at``.
- ``<prefix>review:<transaction_id>``: hash of a closed case (outcome, analyst, note,
  opened_at, closed_at), kept as long as decisions stay labellable.

The case's data is its decision record (``fraud.decisions.DecisionLog``): score, reasons,
features, model version. Closing is one script call (open -> closed, outcome stored:
atomic, so two analysts cannot both close a case); the verdict is then appended to the
label stream (``FraudService.add_labels(..., where="review")``). If that append fails,
the case is opened again, so a verdict is never lost between the two.

On a Redis Cluster each of the decision stream's partitions has its own sets and case
keys, tagged like the transaction's decision key (``{p<k>}:<prefix>reviews:open``,
``{p<k>}:<prefix>review:<id>``), so the scorer's script and ``_CLOSE`` stay in one slot;
counts and listings read every partition and merge them. A single server has one
partition under the plain names.

>>> ReviewQueue.open_key("fraud:"), ReviewQueue.closed_key("fraud:")
('fraud:reviews:open', 'fraud:reviews:closed')
>>> parse_verdict({"outcome": "fraud", "analyst": "ana"})
('fraud', 'ana', '')
>>> parse_verdict({"outcome": "maybe", "analyst": "ana"})
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: outcome must be one of fraud, legit, got "maybe"
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import msgspec
import redis

from fraud import metrics
from fraud.decisions import DecisionLog
from fraud.labels import Label
from mlplatform.errors import BadRequest, Conflict, NotFound
from mlplatform.http import check_id
from mlplatform.openapi import ID_REGEX, ID_RULE, convert
from mlplatform.streams import partition_tag

__all__ = ["ReviewQueue", "OUTCOMES", "STATUSES", "Verdict", "parse_verdict"]

log = logging.getLogger(__name__)

OUTCOMES = ("fraud", "legit")
STATUSES = ("open", "closed")
_MAX_NOTE = 1000

# KEYS: open, closed, case. ARGV: transaction id, outcome, analyst, note, now, ttl.
# -> {"ok", opened_at} | {"closed", case fields...} | {"unknown"}
_CLOSE = """
local opened = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not opened then
  local case = redis.call('HGETALL', KEYS[3])
  if #case > 0 then return {'closed', case} end
  return {'unknown'}
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[3], 'transaction_id', ARGV[1], 'outcome', ARGV[2], 'analyst', ARGV[3],
           'note', ARGV[4], 'opened_at', opened, 'closed_at', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[5]) - tonumber(ARGV[6])))
return {'ok', opened}
"""

# KEYS: open, closed, case. ARGV: transaction id, opened_at. Undo a close whose label
# could not be appended (only if the case is still the one this close wrote).
_REOPEN = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[3])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
return 1
"""


class Verdict(msgspec.Struct, forbid_unknown_fields=True):
    """An analyst's verdict on a review case: it becomes the transaction's label."""

    outcome: Annotated[Literal["fraud", "legit"], msgspec.Meta(
        description="one of " + ", ".join(OUTCOMES))]
    analyst: Annotated[str, msgspec.Meta(pattern=ID_REGEX,
                                         description="a string id: " + ID_RULE)]
    note: Annotated[str, msgspec.Meta(max_length=_MAX_NOTE)] | None = None


def parse_verdict(body: Any) -> tuple[str, str, str]:
    """(outcome, analyst, note) from ``{"outcome": "fraud"|"legit", "analyst": "...",
    "note": "..."}`` (decoded JSON), else BadRequest naming the field."""
    try:
        verdict = convert(body, Verdict)
    except BadRequest as exc:
        if exc.field == "outcome":  # a missing outcome says which there are
            raise BadRequest(f"{exc.message}: one of {', '.join(OUTCOMES)}" if
                             exc.message.endswith("required") else exc.message,
                             field="outcome") from None
        raise
    return verdict.outcome, verdict.analyst, verdict.note or ""


class ReviewQueue:
    """Open and closed review cases of one fraud deployment."""

    def __init__(self, client: redis.Redis, prefix: str, decisions: DecisionLog,
                 add_labels: Callable[..., list[str]], *, decision_ttl_seconds: float,
                 max_age_seconds: float) -> None:
        self.client = client
        self.prefix = prefix
        self.decisions = decisions
        self._add_labels = add_labels
        self.decision_ttl_seconds = decision_ttl_seconds
        self.max_age_seconds = max_age_seconds
        self.open_set = self.open_key(prefix)
        self.closed_set = self.closed_key(prefix)
        # Per partition of the decision stream (one on a single server: the plain names).
        self._tags = [partition_tag(p, decisions.partitions)
                      for p in range(decisions.partitions)]
        self.open_sets = [t + self.open_set for t in self._tags]
        self.closed_sets = [t + self.closed_set for t in self._tags]
        self._close = client.register_script(_CLOSE)
        self._reopen = client.register_script(_REOPEN)

    @staticmethod
    def open_key(prefix: str) -> str:
        """The sorted set of open cases: the scorer's script ZADDs review decisions here."""
        return f"{prefix}reviews:open"

    @staticmethod
    def closed_key(prefix: str) -> str:
        return f"{prefix}reviews:closed"

    def case_key(self, transaction_id: str) -> str:
        return f"{self.decisions.tag(transaction_id)}{self.prefix}review:{transaction_id}"

    def _keys(self, transaction_id: str) -> list[str]:
        """The open set, closed set and case key of the transaction's partition."""
        part = self.decisions.partition_of(transaction_id)
        return [self.open_sets[part], self.closed_sets[part], self.case_key(transaction_id)]

    def open(self, transaction_id: str, scored_at: float) -> None:
        """Open a case (what the scorer's decision script does for a review decision)."""
        self.client.zadd(self._keys(transaction_id)[0], {transaction_id: scored_at}, nx=True)

    # -- reading -------------------------------------------------------------------------

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """(open cases, open cases older than ``max_age_seconds``): one round trip."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        for key in self.open_sets:
            pipe.zcard(key)
            pipe.zcount(key, "-inf", f"({now - self.max_age_seconds}")
        replies = pipe.execute()
        return sum(int(r) for r in replies[0::2]), sum(int(r) for r in replies[1::2])

    def update_metrics(self) -> None:
        """Set the open and overdue gauges (on a /metrics scrape)."""
        n_open, overdue = self.counts()
        metrics.REVIEWS_OPEN.set(n_open)
        metrics.REVIEWS_OVERDUE.set(overdue)

    def list(self, status: str = "open", limit: int = 50, now: float | None = None
             ) -> dict[str, Any]:
        """Open cases oldest first (the queue's order), or closed ones newest first."""
        if status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}, got {status!r}",
                             field="status")
        now = time.time() if now is None else now
        n_open, overdue = self.counts(now)
        # The first ``limit`` of each partition, merged: enough for the first ``limit``.
        pipe = self.client.pipeline(transaction=False)
        if status == "open":
            for key in self.open_sets:
                pipe.zrange(key, 0, limit - 1, withscores=True)
        else:
            for key in self.closed_sets:
                pipe.zrevrange(key, 0, limit - 1, withscores=True)
                pipe.zcard(key)
        replies: list[Any] = pipe.execute()
        if status == "open":
            total, parts = n_open, replies
        else:
            total, parts = sum(int(r) for r in replies[1::2]), replies[0::2]
        merged = [(_text(m), float(at)) for part in parts for m, at in part]
        merged.sort(key=lambda row: row[1], reverse=status == "closed")
        rows: list[tuple[str, float]] = merged[:limit]
        ids = [tid for tid, _ in rows]
        records = self.decisions.lookup(ids, self.decision_ttl_seconds, now=now)
        closed: Sequence[dict[bytes, bytes]] = []
        if status == "closed" and ids:
            pipe = self.client.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.case_key(i))
            closed = pipe.execute()
        cases = []
        for n, (tid, at) in enumerate(rows):
            case = _case(tid, records[n])
            if status == "open":
                case.update(status="open", opened_at=round(at, 3),
                            age_seconds=round(now - at, 3))
            else:
                case.update(status="closed", **_closed_fields(closed[n]))
            cases.append(case)
        return {"status": status, "count": total, "open": n_open, "overdue": overdue,
                "max_age_seconds": self.max_age_seconds, "cases": cases}

    # -- closing -------------------------------------------------------------------------

    def close(self, transaction_id: Any, body: Any) -> dict[str, Any]:
        """Close a case with an analyst's verdict and append it as a label."""
        tid = check_id(transaction_id, "transaction_id")
        outcome, analyst, note = parse_verdict(body)
        now = time.time()
        ttl = int(self.decision_ttl_seconds)
        reply = self._close(keys=self._keys(tid),
                            args=[tid, outcome, analyst, note, repr(now), ttl])
        state = _text(reply[0])
        if state == "unknown":
            raise NotFound(f"no review case for transaction {tid!r}: it was not decided "
                           "review, or its case expired", field="transaction_id")
        if state == "closed":
            fields = _closed_fields(_pairs(reply[1]))
            raise Conflict(f"the review case of {tid!r} is already closed ({fields['outcome']} "
                           f"by {fields['analyst']})", field="transaction_id",
                           details=fields)
        opened_at = float(reply[1])
        try:
            offsets = self._add_labels([Label(tid, outcome == "fraud", now)], where="review")
        except BaseException:
            self._undo_close(tid, opened_at)
            raise
        offset = offsets[0] if offsets else None  # None: the same label was already given
        metrics.REVIEWS_CLOSED.labels(outcome).inc()
        log.info("review of %s closed: %s by %s, label %s", tid, outcome, analyst, offset)
        return {"transaction_id": tid, "status": "closed", "outcome": outcome,
                "analyst": analyst, "note": note, "opened_at": round(opened_at, 3),
                "closed_at": round(now, 3), "label_offset": offset}


    def _undo_close(self, tid: str, opened_at: float) -> None:
        try:
            self._reopen(keys=self._keys(tid), args=[tid, repr(opened_at)])
            log.warning("review of %s opened again: its label could not be appended", tid)
        except redis.RedisError as exc:
            log.error("review of %s is closed without its label (redis: %s); post the "
                      "label again with POST /v1/labels", tid, exc)


def _case(transaction_id: str, record: bytes | None) -> dict[str, Any]:
    """A case's decision fields (None when the decision is no longer held)."""
    if record is None:
        return {"transaction_id": transaction_id, "decision": None}
    d = json.loads(record)
    features = d.get("features") or {}
    return {"transaction_id": transaction_id, "timestamp": d.get("timestamp"),
            "amount": features.get("amount"), "score": round(float(d["score"]), 6),
            "decision": d.get("decision"), "reasons": d.get("reasons", []),
            "model_version": d.get("model_version"), "scored_at": d.get("scored_at"),
            "features": features}


def _closed_fields(fields: dict[bytes, bytes]) -> dict[str, Any]:
    get = {_text(k): _text(v) for k, v in fields.items()}
    out: dict[str, Any] = {"outcome": get.get("outcome"), "analyst": get.get("analyst"),
                           "note": get.get("note", "")}
    for name in ("opened_at", "closed_at"):
        out[name] = round(float(get[name]), 3) if get.get(name) else None
    return out


def _pairs(flat: Sequence[Any]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
