"""The decision log: every decision with its feature vector, durable and joinable.

Each scored transaction appends one record (``Decision.to_record``: JSON with the
score, decision, reasons, model state and the feature vector) to the decision stream
``<prefix>decisions`` (the audit trail), and points ``<prefix>tx:<transaction_id>`` at
that entry for ``decision_ttl_seconds``, so a label arriving days later joins the exact
features the model saw (no leakage, no skew). The record is stored once, in the stream;
a request's decisions are written by one script call (atomic: all or none).

The stream must keep entries at least as long as the key TTL (``decision_stream_maxlen``
0, the default, keeps everything: archive and trim it out of band).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["Decision", "DecisionLog"]

# One encoder for every record: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(slots=True)
class Decision:
    """The answer for one transaction, and what it was based on."""

    transaction_id: str
    timestamp: float
    score: float
    decision: str
    reasons: list[dict[str, Any]]
    model_version: str
    model_labels: int  # labels the online model had learned when it scored
    review_threshold: float
    features: dict[str, float]
    scored_at: float
    duplicate: bool = False

    def to_response(self) -> dict[str, Any]:
        out = {
            "transaction_id": self.transaction_id,
            "score": round(self.score, 6),
            "decision": self.decision,
            "reasons": self.reasons,
            "model_version": self.model_version,
            "model_labels": self.model_labels,
        }
        if self.duplicate:
            out["duplicate"] = True
        return out

    def to_record(self) -> str:
        return _encode({
            "transaction_id": self.transaction_id,
            "timestamp": self.timestamp,
            "score": self.score,
            "decision": self.decision,
            "reasons": self.reasons,
            "model_version": self.model_version,
            "model_labels": self.model_labels,
            "review_threshold": self.review_threshold,
            "scored_at": self.scored_at,
            "features": self.features,
        })

    @classmethod
    def from_record(cls, text: str | bytes) -> Decision:
        d = json.loads(text)
        return cls(
            transaction_id=d["transaction_id"], timestamp=d["timestamp"], score=d["score"],
            decision=d["decision"], reasons=d["reasons"], model_version=d["model_version"],
            model_labels=d["model_labels"], review_threshold=d["review_threshold"],
            features=d["features"], scored_at=d["scored_at"],
        )


# KEYS: stream, then one transaction key per decision.
# ARGV: ttl seconds, maxlen ('' = none), then per decision: transaction id, record.
# One call appends a whole request's decisions: atomic, one command to send and parse.
_APPEND = """
local ttl, maxlen = ARGV[1], ARGV[2]
local ids = {}
for i = 2, #KEYS do
  local a = 2 * i - 1
  local id
  if maxlen ~= '' then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
                    'transaction_id', ARGV[a], 'record', ARGV[a + 1])
  else
    id = redis.call('XADD', KEYS[1], '*', 'transaction_id', ARGV[a], 'record', ARGV[a + 1])
  end
  redis.call('SET', KEYS[i], id, 'EX', ttl)
  ids[i - 1] = id
end
return ids
"""


class DecisionLog:
    """Writes decisions to the stream and the per-transaction keys; reads them back."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int,
                 stream_maxlen: int = 0) -> None:
        self._redis = client
        self.prefix = prefix
        self.stream = f"{prefix}decisions"
        self._key_prefix = f"{prefix}tx:"
        self._ttl = str(ttl_seconds)
        self._maxlen = str(stream_maxlen) if stream_maxlen else ""
        self._sha = client.register_script(_APPEND).sha

    def key(self, transaction_id: str) -> str:
        return self._key_prefix + transaction_id

    def record(self, decisions: Sequence[Decision]) -> list[str]:
        """Append ``decisions`` atomically (one script call: all or, on failure, none);
        their stream ids."""
        if not decisions:
            return []
        kp = self._key_prefix
        keys = [self.stream]
        args = [self._ttl, self._maxlen]
        for d in decisions:
            keys.append(kp + d.transaction_id)
            args += (d.transaction_id, d.to_record())
        try:
            ids = self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # A restarted Redis lost its scripts: nothing was applied.
            self._sha = self._redis.script_load(_APPEND)
            ids = self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def fetch(self, transaction_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records (JSON bytes) of ``transaction_ids``; None where unknown."""
        if not transaction_ids:
            return []
        ids = self._redis.mget([self.key(t) for t in transaction_ids])
        found = [i for i in ids if i is not None]
        if not found:
            return [None] * len(ids)
        pipe = self._redis.pipeline(transaction=False)
        for entry in found:
            pipe.xrange(self.stream, entry, entry, count=1)
        entries = iter(pipe.execute())
        out: list[bytes | None] = []
        for i in ids:
            if i is None:
                out.append(None)
                continue
            hit = next(entries)
            out.append(hit[0][1][b"record"] if hit else None)  # None: trimmed away
        return out
