"""Business outcomes of fraud decisions, counted when a label meets its decision record.

The consumer group "business-metrics" on the label stream (run by ``mlsuite worker
fraud``) reads each label with the decision record logged at scoring time and adds the
transaction's amount to one outcome of the model version that decided it:

============  ==========================  ==========================================
decision      proved fraud                proved legitimate
============  ==========================  ==========================================
decline       loss prevented              false decline
review        loss prevented              (nothing: the analyst releases it)
approve       loss                        (nothing: the normal case)
============  ==========================  ==========================================

A ``review`` holds the payment for an analyst, whose verdict is usually the label
itself: a fraud caught there was stopped (loss prevented), and a legitimate one was
delayed, not declined, so it is no false decline. This matches the rollout guards
(``fraud.rollout``), where review and decline both count as flagged.

Each transaction counts once, at its first label. The label stream already holds one
entry per verdict (``fraud.labels``: a repeated identical label is never appended), and a
changed verdict arrives as an entry marked ``correction``: a Prometheus counter cannot
move an amount from one outcome to another, so corrections are not counted again here
(``mlsuite_fraud_label_corrections_total`` counts them). The label lag (label time minus
decision time) is observed for the same first labels.

Amounts are the transaction's ``amount`` as recorded in the decision's features, in the
transaction's own currency units (no conversion).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fraud import metrics
from fraud.config import FraudConfig
from fraud.keys import Keys
from mlplatform.streams import Consumer, Entry

__all__ = ["BUSINESS_GROUP", "Outcome", "business_consumer", "business_handler", "outcome_of",
           "read_outcome"]

log = logging.getLogger(__name__)

BUSINESS_GROUP = "business-metrics"
# (decision, proved fraud) -> outcome; the table in the module docstring.
_OUTCOMES = {
    ("decline", True): "loss_prevented",
    ("review", True): "loss_prevented",
    ("approve", True): "loss",
    ("decline", False): "false_decline",
}
_COUNTERS = {
    "loss_prevented": metrics.LOSS_PREVENTED,
    "loss": metrics.LOSS,
    "false_decline": metrics.FALSE_DECLINES,
}


def outcome_of(decision: str, is_fraud: bool) -> str | None:
    """The business outcome of a labelled decision (None: nothing to count).

    >>> [outcome_of(d, True) for d in ("decline", "review", "approve")]
    ['loss_prevented', 'loss_prevented', 'loss']
    >>> [outcome_of(d, False) for d in ("decline", "review", "approve")]
    ['false_decline', None, None]
    """
    return _OUTCOMES.get((decision, is_fraud))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one first label adds: an amount to an outcome of a model version, and a lag."""

    model_version: str
    outcome: str | None
    amount: float
    lag_seconds: float | None


def read_outcome(fields: dict[bytes, bytes] | Any) -> Outcome | None:
    """The outcome of a label entry's fields; None for a correction or an entry that is
    not a labelled decision (the learner's group dead-letters those: filing the same
    entry twice would say nothing more).

    >>> record = {"decision": "decline", "model_version": "fraud-online:v3+12",
    ...           "scored_at": 100.0, "features": {"amount": 250.5}}
    >>> read_outcome({b"is_fraud": b"1", b"labelled_at": b"160.0",
    ...               b"decision": json.dumps(record).encode()})
    Outcome(model_version='fraud-online:v3', outcome='loss_prevented', amount=250.5, lag_seconds=60.0)
    """
    if fields.get(b"correction") == b"1":
        return None
    try:
        record = json.loads(fields[b"decision"])
        is_fraud = fields[b"is_fraud"] == b"1"
        decision = str(record["decision"])
        # "fraud-online:v3+12" (an online layer's label count) is still version 3: a
        # label per count would make a new series per label.
        version = str(record["model_version"]).split("+", 1)[0]
        amount = float(record.get("features", {}).get("amount", math.nan))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    if not math.isfinite(amount) or amount < 0:
        amount = 0.0
    lag: float | None = None
    try:
        lag = float(fields[b"labelled_at"]) - float(record["scored_at"])
    except (KeyError, ValueError, TypeError):
        pass
    if lag is not None and not math.isfinite(lag):
        lag = None
    # A label dated before its decision (a clock apart) is a lag of zero, not negative.
    return Outcome(version, outcome_of(decision, is_fraud), amount,
                   None if lag is None else max(lag, 0.0))


def business_handler() -> Any:
    """The label stream handler adding amounts to the business outcome counters.

    It never raises (a raising handler is retried entry by entry, and counters already
    incremented would count twice) and rejects nothing (see ``read_outcome``). Counts are
    added after the whole batch is read, just before the consumer commits the acks; only
    a failed commit (Redis gone at that instant) hands the batch out again and counts it
    twice, which counters, unlike a ledger, tolerate.
    """

    def handle(entries: Sequence[Entry], tx: redis.client.Pipeline) -> dict[str, str]:
        amounts: dict[tuple[str, str], float] = {}
        lags: list[float] = []
        for entry in entries:
            found = read_outcome(entry.fields)
            if found is None:
                continue
            if found.outcome is not None:
                key = (found.outcome, found.model_version)
                amounts[key] = amounts.get(key, 0.0) + found.amount
            if found.lag_seconds is not None:
                lags.append(found.lag_seconds)
        for (outcome, version), amount in amounts.items():
            _COUNTERS[outcome].labels(version).inc(amount)
        for lag in lags:
            metrics.LABEL_LAG.observe(lag)
        return {}

    return handle


def business_consumer(client: redis.Redis, config: FraudConfig, **options: Any) -> Consumer:
    """The consumer the fraud worker runs so labels feed the business metrics."""
    keys = Keys(config.key_prefix, config.model_name)
    return Consumer(client, keys.labels, BUSINESS_GROUP, business_handler(),
                    keys.dead_letters, **options)
