"""The label stream: late fraud verdicts (chargebacks, analysts), in one global order.

``POST /v1/labels`` validates every label of the request, checks that each transaction
is in the decision log (Redis, or the lake for decisions already trimmed from it), and
only then appends them in one script call (nothing is half-applied). Each
stream entry carries the decision record logged at scoring time, so the fraud worker's
learner trains on exactly the features the model saw, and the stream alone is enough to
rebuild a model (checkpoint + tail) even after the per-transaction keys expired.

A label (JSON)::

    {"transaction_id": "t0000042", "is_fraud": true, "labelled_at": "2025-01-09T10:00:00Z"}

``labelled_at`` is optional (default: now).

A transaction's label is learned once (a flood of one label must not outweigh the rest of
the stream): ``<prefix>labelled:<transaction_id>`` keeps the last label appended for it
(for ``decision_ttl_seconds``), and one script call appends only labels that are new or
changed. A repeated identical label is ignored; a changed one is appended with
``correction=1`` (the learner learns it like any entry; the metric
``mlsuite_fraud_label_corrections_total`` counts them). Within one request, a transaction
labelled several times keeps its last label (the others count as ignored).

On a Redis Cluster the label stream stays one stream (the learner applies labels in one
global order and checkpoints one offset; labels arrive at a chargeback's pace, not a
payment's), and the "labelled" keys take the stream's name as their hash tag
(``{<prefix>labels}:labelled:<id>``): a key ``{x}...`` hashes like the key ``x``, so they
share the stream's slot and the append stays one script without renaming the stream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import redis

from fraud.decisions import DecisionLog
from mlplatform.errors import BadRequest, NotFound
from mlplatform.openapi import Id, Timestamp, convert, timestamp_seconds
from mlplatform.redisdb import is_cluster

__all__ = ["Appended", "Label", "LabelBatch", "LabelBody", "LabelEntry", "LabelStream",
           "parse_labels", "decode_label"]

# KEYS: stream, then the "labelled" key of each label. ARGV: ttl, then per label:
# transaction id, is_fraud ("1"/"0"), labelled_at, decision record.
# Reply: {stream ids ('' = ignored, same label as before), correction flags (1/0)}.
_APPEND = """
local ttl = ARGV[1]
local ids, fixes = {}, {}
for i = 2, #KEYS do
  local a = 4 * (i - 2) + 1
  local previous = redis.call('GET', KEYS[i])
  if previous == ARGV[a + 2] then
    ids[i - 1], fixes[i - 1] = '', 0
  else
    local fields = {'transaction_id', ARGV[a + 1], 'is_fraud', ARGV[a + 2],
                    'labelled_at', ARGV[a + 3], 'decision', ARGV[a + 4]}
    if previous then
      fields[#fields + 1] = 'correction'
      fields[#fields + 1] = '1'
    end
    ids[i - 1] = redis.call('XADD', KEYS[1], '*', unpack(fields))
    fixes[i - 1] = previous and 1 or 0
    redis.call('SET', KEYS[i], ARGV[a + 2], 'EX', ttl)
  end
end
return {ids, fixes}
"""

@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    is_fraud: bool
    labelled_at: float


@dataclass(frozen=True, slots=True)
class Appended:
    """What one ``LabelStream.add`` call did: the labels appended (their offsets, in
    order), the ones ignored (repeats), and how many appended labels were corrections."""

    offsets: list[str]
    labels: list[Label]  # the appended ones, as offsets
    ignored: int
    corrections: int


@dataclass(frozen=True, slots=True)
class LabelEntry:
    """A label read back from the stream, with the decision it refers to."""

    offset: str
    label: Label
    features: dict[str, float]
    score: float
    review_threshold: float


class LabelBody(msgspec.Struct, forbid_unknown_fields=True):
    """A label: whether a scored transaction was fraud, and when that became known."""

    transaction_id: Id
    is_fraud: bool
    labelled_at: Timestamp | None = None


class LabelBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Several labels; all are checked before any is appended."""

    labels: Annotated[list[LabelBody], msgspec.Meta(min_length=1)]


_LABEL_LIST = Annotated[list[LabelBody], msgspec.Meta(min_length=1)]


def parse_labels(body: Any, *, max_items: int) -> list[Label]:
    """One label object, a list of them, or ``{"labels": [...]}`` (decoded JSON); all
    validated first, errors naming the field (``labels[2].is_fraud``)."""
    items: list[LabelBody]
    if isinstance(body, dict) and "labels" in body:
        items = convert(body, LabelBatch).labels
    elif isinstance(body, list):
        items = convert(body, _LABEL_LIST, root="labels")
    else:
        items = [convert(body, LabelBody)]
        return [_label(items[0], "")]
    if len(items) > max_items:
        raise BadRequest(f"labels holds {len(items)} items; at most {max_items} per request",
                         field="labels")
    return [_label(item, f"labels[{i}].") for i, item in enumerate(items)]


def _label(item: LabelBody, where: str) -> Label:
    labelled = item.labelled_at
    return Label(item.transaction_id, item.is_fraud,
                 time.time() if labelled is None
                 else timestamp_seconds(labelled, where + "labelled_at"))


class LabelStream:
    """Appends labels joined to their decisions, in one global order."""

    def __init__(self, client: redis.Redis, decisions: DecisionLog,
                 decision_ttl_seconds: float) -> None:
        self._redis = client
        self._decisions = decisions
        self._max_age = decision_ttl_seconds
        self.stream = f"{decisions.prefix}labels"
        # In the stream's slot on a cluster (module docstring); the plain name otherwise.
        self._labelled = (f"{{{self.stream}}}:labelled:" if is_cluster(client)
                          else f"{decisions.prefix}labelled:")
        self._ttl = str(int(decision_ttl_seconds))
        self._script = client.register_script(_APPEND)

    def append(self, labels: Sequence[Label], *, where: str = "labels") -> list[str]:
        """Append the new or changed ``labels`` (see ``add``); their offsets."""
        return self.add(labels, where=where).offsets

    def add(self, labels: Sequence[Label], *, where: str = "labels") -> Appended:
        """Append ``labels`` after checking every transaction was decided: each one only
        if it is new or changes the transaction's last label (then flagged a correction).

        A transaction repeated within ``labels`` keeps its last label. An unknown
        transaction raises ``NotFound`` naming it, and nothing is appended.
        """
        last: dict[str, int] = {}
        for i, label in enumerate(labels):
            last.pop(label.transaction_id, None)  # keeps the order of the last ones
            last[label.transaction_id] = i
        index = list(last.values())
        kept = [labels[i] for i in index]
        records = self._decisions.lookup([lb.transaction_id for lb in kept], self._max_age)
        for i, label, record in zip(index, kept, records):
            if record is None:
                field = f"{where}[{i}].transaction_id" if len(labels) > 1 else "transaction_id"
                raise NotFound(
                    f"transaction {label.transaction_id!r} has no decision to label: unknown "
                    "transaction, or decided longer ago than the decision retention",
                    field=field, code="unknown_transaction",
                )
        keys = [self.stream, *(self._labelled + lb.transaction_id for lb in kept)]
        args: list[Any] = [self._ttl]
        for label, record in zip(kept, records):
            # No MAXLEN: the worker archives, then trims (and never what it has not learned).
            args += (label.transaction_id, "1" if label.is_fraud else "0",
                     repr(label.labelled_at), record)
        ids, fixes = self._script(keys=keys, args=args)
        offsets, appended = [], []
        for label, entry in zip(kept, ids):
            if entry:
                offsets.append(entry.decode() if isinstance(entry, bytes) else str(entry))
                appended.append(label)
        return Appended(offsets=offsets, labels=appended, ignored=len(labels) - len(offsets),
                        corrections=sum(int(f) for f in fixes))

    def last_offset(self) -> str:
        """The id of the last label ever appended ("0-0": none)."""
        try:
            info: Any = self._redis.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such stream yet
            return "0-0"
        last = info["last-generated-id"]
        return last.decode() if isinstance(last, bytes) else str(last)


def decode_label(offset: str, fields: Mapping[bytes, bytes]) -> LabelEntry:
    """A label stream entry, checked: ``ValueError`` naming what is wrong otherwise (the
    learner sends such an entry to the dead letters instead of learning from it)."""
    try:
        record = json.loads(fields[b"decision"])
        is_fraud = fields[b"is_fraud"]
        transaction_id = fields[b"transaction_id"].decode()
        labelled_at = float(fields[b"labelled_at"])
    except KeyError as exc:
        raise ValueError(f"label entry has no {exc.args[0].decode()!r} field") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"label entry's decision is not a JSON decision record: {exc}") from None
    if is_fraud not in (b"0", b"1"):
        raise ValueError(f"is_fraud must be 0 or 1, got {is_fraud!r}")
    if not isinstance(record, dict) or not isinstance(record.get("features"), dict):
        raise ValueError("label entry's decision has no features object")
    features: dict[str, float] = {}
    for name, value in record["features"].items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ValueError(f"feature {name} must be a finite number, got {value!r}")
        features[name] = float(value)
    numbers = {}
    for name in ("score", "review_threshold"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"decision {name} must be a number in [0, 1], got {value!r}")
        numbers[name] = float(value)
    if not math.isfinite(labelled_at):
        raise ValueError(f"labelled_at must be a finite epoch time, got {labelled_at!r}")
    return LabelEntry(offset=offset,
                      label=Label(transaction_id, is_fraud == b"1", labelled_at),
                      features=features, score=numbers["score"],
                      review_threshold=numbers["review_threshold"])
