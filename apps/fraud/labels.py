"""The label stream: late fraud verdicts (chargebacks, analysts), in one global order.

``POST /v1/labels`` validates every label of the request, checks that each transaction
is in the decision log, and only then appends them all in one MULTI transaction (nothing
is half-applied). Each stream entry carries the decision record logged at scoring time,
so a learner trains on exactly the features the model saw, and the stream alone is
enough to rebuild a model (snapshot + tail) even after the per-transaction keys expired.

A label (JSON)::

    {"transaction_id": "t0000042", "is_fraud": true, "labelled_at": "2025-01-09T10:00:00Z"}

``labelled_at`` is optional (default: now).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fraud.decisions import DecisionLog
from fraud.schema import parse_timestamp
from mlplatform.errors import BadRequest, NotFound
from mlplatform.http import check_id

__all__ = ["Label", "LabelEntry", "LabelStream", "parse_labels"]

_FIELDS = ("transaction_id", "is_fraud", "labelled_at")


@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    is_fraud: bool
    labelled_at: float


@dataclass(frozen=True, slots=True)
class LabelEntry:
    """A label read back from the stream, with the decision it refers to."""

    offset: str
    label: Label
    features: dict[str, float]
    score: float
    review_threshold: float


def parse_labels(body: Any, *, max_items: int) -> list[Label]:
    """One label object, a list of them, or ``{"labels": [...]}``; all validated first."""
    if isinstance(body, dict) and "labels" in body:
        if len(body) > 1:
            extra = next(k for k in body if k != "labels")
            raise BadRequest(f"{extra} is not expected next to labels", field=extra)
        items, name = body["labels"], "labels"
    elif isinstance(body, list):
        items, name = body, "labels"
    else:
        return [_parse_one(body, "")]
    if not isinstance(items, list) or not items:
        raise BadRequest("labels must be a non-empty list of labels", field="labels")
    if len(items) > max_items:
        raise BadRequest(f"labels holds {len(items)} items; at most {max_items} per request",
                         field="labels")
    return [_parse_one(item, f"{name}[{i}].") for i, item in enumerate(items)]


def _parse_one(item: Any, where: str) -> Label:
    if not isinstance(item, dict):
        name = where.rstrip(".") or "body"
        raise BadRequest(f"{name} must be a JSON object (a label)", field=name)
    for name in item:
        if name not in _FIELDS:
            raise BadRequest(f"{where}{name} is not a label field; expected "
                             + ", ".join(_FIELDS), field=where + name)
    if item.get("transaction_id") is None:
        raise BadRequest(f"{where}transaction_id is required", field=where + "transaction_id")
    if "is_fraud" not in item:
        raise BadRequest(f"{where}is_fraud is required", field=where + "is_fraud")
    if not isinstance(item["is_fraud"], bool):
        raise BadRequest(f"{where}is_fraud must be true or false, got {item['is_fraud']!r}",
                         field=where + "is_fraud")
    labelled = item.get("labelled_at")
    return Label(
        transaction_id=check_id(item["transaction_id"], where + "transaction_id"),
        is_fraud=item["is_fraud"],
        labelled_at=time.time() if labelled is None
        else parse_timestamp(labelled, where + "labelled_at"),
    )


class LabelStream:
    """Appends labels (joined to their decisions) and reads them back in order."""

    def __init__(self, client: redis.Redis, decisions: DecisionLog) -> None:
        self._redis = client
        self._decisions = decisions
        self.stream = f"{decisions.prefix}labels"

    def append(self, labels: Sequence[Label], *, where: str = "labels") -> list[str]:
        """Append ``labels`` after checking every transaction was decided; returns offsets.

        An unknown transaction raises ``NotFound`` naming it, and nothing is appended.
        """
        records = self._decisions.fetch([lb.transaction_id for lb in labels])
        for i, (label, record) in enumerate(zip(labels, records)):
            if record is None:
                field = f"{where}[{i}].transaction_id" if len(labels) > 1 else "transaction_id"
                raise NotFound(
                    f"transaction {label.transaction_id!r} has no decision to label: unknown "
                    "transaction, or decided longer ago than the decision retention",
                    field=field, code="unknown_transaction",
                )
        pipe = self._redis.pipeline(transaction=True)
        for label, record in zip(labels, records):
            pipe.xadd(self.stream, {
                "transaction_id": label.transaction_id,
                "is_fraud": "1" if label.is_fraud else "0",
                "labelled_at": repr(label.labelled_at),
                "decision": record,  # type: ignore[dict-item]
            })
        return [o.decode() if isinstance(o, bytes) else str(o) for o in pipe.execute()]

    def read(self, after: str, count: int, block_ms: int | None) -> list[LabelEntry]:
        """Entries after offset ``after`` (``"0-0"``: from the start), oldest first."""
        reply: Any = self._redis.xread({self.stream: after}, count=count, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return [self._decode(offset, fields) for offset, fields in entries]

    def last_offset(self) -> str:
        info = self._redis.xinfo_stream(self.stream) if self._redis.exists(self.stream) else None
        if not info:
            return "0-0"
        last = info["last-generated-id"]
        return last.decode() if isinstance(last, bytes) else str(last)

    @staticmethod
    def _decode(offset: bytes | str, fields: dict[bytes, bytes]) -> LabelEntry:
        record = json.loads(fields[b"decision"])
        return LabelEntry(
            offset=offset.decode() if isinstance(offset, bytes) else offset,
            label=Label(
                transaction_id=fields[b"transaction_id"].decode(),
                is_fraud=fields[b"is_fraud"] == b"1",
                labelled_at=float(fields[b"labelled_at"]),
            ),
            features=record["features"],
            score=float(record["score"]),
            review_threshold=float(record["review_threshold"]),
        )
