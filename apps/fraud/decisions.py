"""The decision log: every decision with its feature vector, durable and joinable.

Each scored transaction appends one record (``Decision.to_record``: JSON with the
score, decision, reasons, model state and the feature vector) to the decision stream
``<prefix>decisions`` (the audit trail), opens a review case for a ``review`` decision
(``<prefix>reviews:open``, in the same script), and points ``<prefix>tx:<transaction_id>`` at
that entry, so a label arriving days later joins the exact features the model saw (no
leakage, no skew). The record is stored once, in the stream; a request's decisions are
written by one script call (atomic: all or none).

The stream is appended without a bound: the fraud worker's retention archives entries
to the lake and trims them after ``stream_retention_seconds``. The per-transaction key
lives as long as its entry (the retention plus a margin for the archiver's schedule):
while it exists a retried transaction gets its stored decision. A label for a decision
already trimmed from Redis joins it from the lake, up to ``decision_ttl_seconds``.

On a Redis Cluster the stream is partitioned by transaction id (``mlplatform.streams``:
``{p<k>}:<prefix>decisions``, ``CLUSTER_PARTITIONS`` of them), and a transaction's key
and the open review cases of its partition carry the same hash tag
(``{p<k>}:<prefix>tx:<id>``, ``{p<k>}:<prefix>reviews:open``), so one script still
appends a decision, points its key at it and opens its case. A request's decisions are
then one script call per partition (pipelined): atomic per partition, not per request.
If one partition's call fails, the service takes back the velocity of every transaction
whose key still holds its pending marker and answers an error; the retry finds the
recorded ones by their key (answered as duplicates, never counted twice) and scores the
others. On a single server there is one partition under the plain names: nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis

from mlplatform.lake import Lake, id_ms
from mlplatform.redisdb import is_cluster, partition
from mlplatform.streams import partition_count, partition_key, partition_keys, partition_tag

__all__ = ["Decision", "DecisionLog", "PENDING", "fingerprint_of", "mget", "stream_id"]

# The per-transaction key holds "?<fingerprint>" while a request scores the transaction
# (claimed by the velocity script), then "<stream id>/<fingerprint>" (written by _APPEND).
# The fingerprint identifies the payload: a reused id with another payload is refused.
PENDING = "?"


def stream_id(value: str) -> str | None:
    """The stream id a transaction key's value points at; None while pending.

    >>> stream_id("1735689600000-0/3f2a"), stream_id("?3f2a"), stream_id("1735689600000-0")
    ('1735689600000-0', None, '1735689600000-0')
    """
    if value.startswith(PENDING):
        return None
    return value.partition("/")[0]


def fingerprint_of(value: str) -> str:
    """The payload fingerprint a transaction key's value carries ('' when unknown).

    >>> fingerprint_of("1735689600000-0/3f2a"), fingerprint_of("?3f2a"), fingerprint_of("1-0")
    ('3f2a', '3f2a', '')
    """
    if value.startswith(PENDING):
        return value[1:]
    return value.partition("/")[2]

# msgspec encodes a record (about 55 features) in ~3 us where json takes ~30 us: at
# thousands of decisions a second that is a tenth of a core.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


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

    def to_record(self) -> bytes:
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
        d = _decode(text)
        return cls(
            transaction_id=d["transaction_id"], timestamp=d["timestamp"], score=d["score"],
            decision=d["decision"], reasons=d["reasons"], model_version=d["model_version"],
            model_labels=d["model_labels"], review_threshold=d["review_threshold"],
            features=d["features"], scored_at=d["scored_at"],
        )


# KEYS: stream, open review cases (one partition's: the transaction keys share their hash
# tag). ARGV: ttl seconds, the transaction keys' prefix (partition tag + key prefix), then
# one argument per decision, its fields joined by SEP: transaction id, payload
# fingerprint (what its pending marker carried), review case score ('' = not a review),
# record (JSON: a raw SEP never occurs in it). One call appends a whole request's
# decisions and opens its review cases: atomic, one command to send and parse, one
# argument per decision (redis-py encodes and frames each argument: ~1 us). A decision
# whose key already points at a stream entry is not appended again: the same call sent
# twice (a client's retry after a connection reset) answers the first run's ids.
# No MAXLEN: approximate trimming would drop entries nobody archived (the worker trims).
_APPEND = """
local ttl, keys = ARGV[1], ARGV[2]
local stream, open = KEYS[1], KEYS[2]
local match = string.match
local F = '([^\\031]*)\\031'
local fields = '^' .. F .. F .. F .. '(.*)$'
local ids = {}
for i = 3, #ARGV do
  local tid, fp, review, record = match(ARGV[i], fields)
  if not tid then
    return redis.error_reply('decisions: argument ' .. i .. ' must be 4 fields joined by '
                             .. 'the separator')
  end
  -- Recorded already ("<id>/<fp>", not the pending marker): this is the same call sent
  -- again (a connection reset after the server ran it, and the client's retry), so the
  -- first run's id is the answer and nothing is appended twice.
  local held = redis.call('GET', keys .. tid)
  local done = held and string.sub(held, 1, 1) ~= '@PENDING@' and match(held, '^([^/]*)/')
  if done then
    ids[i - 2] = done
  else
    local id = redis.call('XADD', stream, '*', 'transaction_id', tid, 'record', record)
    redis.call('SET', keys .. tid, id .. '/' .. fp, 'EX', ttl)
    if review ~= '' then redis.call('ZADD', open, review, tid) end
    ids[i - 2] = id
  end
end
return ids
""".replace("@PENDING@", PENDING)
SEP = "\x1f"


class DecisionLog:
    """Writes decisions to the stream and the per-transaction keys; reads them back
    (from Redis, or from the lake once the stream entry was archived and trimmed)."""

    def __init__(self, client: redis.Redis, prefix: str, key_ttl_seconds: int,
                 lake: Lake | None = None, commands: Any = None) -> None:
        self._redis = client
        # What sends a single call (``RedisVelocityStore``'s ``commands``).
        self._commands = commands or client
        self.prefix = prefix
        # The stream's name (its partitions' base name on a cluster: ``stream_key``).
        self.stream = f"{prefix}decisions"
        self.partitions = partition_count(client)
        self._key_prefix = f"{prefix}tx:"
        # A review decision opens a case in its partition's set (``reviews_open_key``,
        # fraud.reviews.ReviewQueue).
        self.reviews_open = f"{prefix}reviews:open"
        self.key_ttl_seconds = int(key_ttl_seconds)
        self._ttl = str(self.key_ttl_seconds)
        self._lake = lake
        self._sha = client.register_script(_APPEND).sha

    def partition_of(self, transaction_id: str) -> int:
        return partition(transaction_id, self.partitions)

    def tag(self, transaction_id: str) -> str:
        """The key prefix of the transaction's partition ("" on a single server)."""
        return partition_tag(self.partition_of(transaction_id), self.partitions)

    def key(self, transaction_id: str) -> str:
        return self.tag(transaction_id) + self._key_prefix + transaction_id

    def stream_key(self, transaction_id: str) -> str:
        """The stream (partition) holding the transaction's decision."""
        return partition_key(self.stream, self.partition_of(transaction_id), self.partitions)

    @property
    def stream_keys(self) -> list[str]:
        """Every partition of the stream (its one name on a single server)."""
        return partition_keys(self.stream, self.partitions)

    def reviews_open_key(self, part: int) -> str:
        return partition_tag(part, self.partitions) + self.reviews_open

    def record(self, decisions: Sequence[Decision], fingerprints: Sequence[str]) -> list[str]:
        """Append ``decisions`` atomically (one script call: all or, on failure, none;
        on a cluster one per partition, see the module's note); their stream ids.
        ``fingerprints``: each transaction's payload fingerprint (its pending marker's),
        which its key keeps beside the stream id. Sent again after its first run (a
        retry), a call appends nothing and answers the same ids."""
        if not decisions:
            return []
        sep = SEP
        if self.partitions == 1:
            groups: dict[int, list[int]] = {0: list(range(len(decisions)))}
        else:
            groups = {}
            for n, d in enumerate(decisions):
                groups.setdefault(self.partition_of(d.transaction_id), []).append(n)
        calls = []
        for part, members in groups.items():
            keys = [partition_key(self.stream, part, self.partitions),
                    self.reviews_open_key(part)]
            args: list[Any] = [self._ttl,
                               partition_tag(part, self.partitions) + self._key_prefix]
            for n in members:
                d = decisions[n]
                review = repr(d.scored_at) if d.decision == "review" else ""
                args.append(f"{d.transaction_id}{sep}{fingerprints[n]}{sep}{review}{sep}".encode()
                            + d.to_record())
            calls.append((members, keys, args))
        if len(calls) == 1:
            replies = [self._eval(calls[0][1], calls[0][2])]
        else:
            replies = self._eval_many([(keys, args) for _, keys, args in calls])
        out = [""] * len(decisions)
        for (members, _, _), ids in zip(calls, replies):
            for n, i in zip(members, ids):
                out[n] = i.decode() if isinstance(i, bytes) else str(i)
        return out

    def _eval(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._commands.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # A restarted Redis lost its scripts: nothing was applied.
            self._sha = self._redis.script_load(_APPEND)
            return self._commands.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)

    def _eval_many(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One script call per partition, pipelined (one round trip per master). Calls
        that met NOSCRIPT (a restarted node: nothing ran) are sent again after a load;
        any other error is raised once the others ran (see the module's note)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for k in todo:
                keys, args = calls[k]
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            for k, reply in zip(todo, pipe.execute(raise_on_error=False)):
                replies[k] = reply
            todo = [k for k in todo if isinstance(replies[k], redis.exceptions.NoScriptError)]
            if not todo or attempt:
                break
            self._redis.script_load(_APPEND)
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        return replies

    def fetch(self, transaction_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records (JSON bytes) of transactions whose key still exists (a
        retried transaction); None where unknown."""
        return [None if hit is None else hit[1]
                for hit in self._entries(transaction_ids, archived_too=False)]

    def lookup(self, transaction_ids: Sequence[str], max_age_seconds: float,
               now: float | None = None) -> list[bytes | None]:
        """The records of ``transaction_ids`` decided at most ``max_age_seconds`` ago,
        from Redis or else the lake (a late label); None where unknown or older."""
        cutoff = (time.time() if now is None else now) - max_age_seconds
        cutoff_ms = cutoff * 1000
        return [None if hit is None or id_ms(hit[0]) < cutoff_ms else hit[1]
                for hit in self._entries(transaction_ids, archived_too=True, since=cutoff)]

    def _entries(self, transaction_ids: Sequence[str], archived_too: bool,
                 since: float | None = None) -> list[tuple[str, bytes] | None]:
        """(stream id, record) per transaction: the key's entry in the stream; from the
        lake when that entry was trimmed, or (``archived_too``) when the key is gone."""
        if not transaction_ids:
            return []
        values = mget(self._redis, [self.key(t) for t in transaction_ids])
        ids: list[str | None] = [None if v is None else stream_id(v.decode())
                                 for v in values]
        out: list[tuple[str, bytes] | None] = [None] * len(ids)
        found = [(n, i) for n, i in enumerate(ids) if i is not None]
        if found:
            pipe = self._redis.pipeline(transaction=False)
            for n, entry in found:
                pipe.xrange(self.stream_key(transaction_ids[n]), entry, entry, count=1)
            for (n, entry), hit in zip(found, pipe.execute()):
                if hit:
                    out[n] = (entry, hit[0][1][b"record"])
        archived = [n for n, hit in enumerate(out)
                    if hit is None and (archived_too or ids[n] is not None)]
        if archived and self._lake is not None:
            # Only the days that can hold them: a key lives key_ttl_seconds at most.
            oldest = since if since is not None else time.time() - self.key_ttl_seconds
            # Each partition is archived under its own key (mlplatform.worker.retain).
            by_stream: dict[str, list[str]] = {}
            for n in archived:
                by_stream.setdefault(self.stream_key(transaction_ids[n]), []).append(
                    transaction_ids[n])
            rows: dict[str, dict[str, str]] = {}
            for stream, wanted in by_stream.items():
                rows.update(self._lake.find(stream, "transaction_id", wanted,
                                            since=datetime.fromtimestamp(oldest, UTC)))
            for n in archived:
                row = rows.get(transaction_ids[n])
                if row is not None and row.get("record") is not None:
                    out[n] = (str(row["stream_id"]), str(row["record"]).encode())
        return out


def mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    """The values of ``keys`` in order: one MGET on a single server; on a cluster, where
    an MGET serves one slot, one per node (``mget_nonatomic``: not one snapshot, which
    no reader here needs)."""
    if not keys:
        return []
    if is_cluster(client):
        cluster: Any = client
        return list(cluster.mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))
