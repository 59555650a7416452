"""The fraud service's HTTP contract: the request and response types of every endpoint
(msgspec Structs), as ``/openapi.json`` publishes them.

Every request body is decoded as its type where it is parsed: transactions (the hot
path) in ``fraud.schema``, labels in ``fraud.labels``, list entries in ``fraud.lists``,
verdicts in ``fraud.reviews``, profiles in ``fraud.profile_updates``; this module names
them all for the document. Responses are built as dicts on the request path (no
per-request object churn); tests/fraud/test_fraud_contract_types.py converts each one to
its type, and the schemathesis run checks them over HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from fraud.labels import LabelBatch, LabelBody
from fraud.lists import LISTS, ListEntryBody
from fraud.profile_updates import CardProfile, MerchantProfile
from fraud.reviews import STATUSES, Verdict
from mlplatform.openapi import Param

__all__ = [
    "BatchScore", "CardProfile", "Degraded", "LabelBatch", "LabelBody", "LabelsAccepted", "ListChange", "AllLists",
    "ListEntryBody", "MerchantProfile", "ModelInfo", "ProfileQueued", "ReviewClosed",
    "Reason", "ReviewCase", "Reviews", "RuleInfo", "Rules", "Score", "Verdict", "LIST_PARAMS", "MODEL_PARAMS", "REVIEW_PARAMS",
]

Country = Annotated[str, msgspec.Meta(
    pattern=r"^[A-Z]{2}$", description="an ISO 3166 code of 2 upper-case letters")]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1, description="a number in [0, 1]")]
# JSON cannot carry NaN: a metric not known yet (no labels) is null.
Metric = float | None


Decision = Literal["approve", "review", "decline"]


class Reason(msgspec.Struct):
    """Why a score or decision came out so: a model feature's contribution (``feature``,
    ``value``, ``contribution``) or a rule that fired (``rule``, ``action``, and for a
    list rule the ``list`` and the listed ``value``: a card or device as its token)."""

    code: str
    text: str
    feature: str | None = None
    value: float | str | None = None
    contribution: float | None = None
    rule: str | None = None
    action: Decision | None = None
    list: str | None = None


class Degraded(msgspec.Struct):
    """A fail-open decision: made without Redis, and not recorded (``fraud.service``)."""

    dependency: Literal["redis"]
    policy: Literal["fail-open"]
    recorded: bool
    detail: str


class Score(msgspec.Struct):
    """A transaction's score, decision and reasons, and the model that gave them."""

    transaction_id: str
    score: Probability
    decision: Decision
    reasons: list[Reason]
    model_version: str
    model_labels: int
    duplicate: bool = False  # present (true) when this id was scored before: the same answer
    degraded: Degraded | None = None  # present when Redis was down and the policy fails open


class BatchScore(msgspec.Struct):
    """Scores of a batch, in request order."""

    results: list[Score]
    model_version: str
    count: int


class LabelsAccepted(msgspec.Struct):
    """What happened to the labels: appended (their stream offsets) or ignored (repeats)."""

    accepted: int
    ignored: int
    corrections: int
    offsets: list[str]


class Thresholds(msgspec.Struct):
    review: Probability
    decline: Probability
    review_fpr: float | None = None
    decline_fpr: float | None = None


class ModelInfo(msgspec.Struct):
    """The model in service: version, labels learned, metrics, drift (thresholds: admin)."""

    name: str
    version: int
    model_version: str
    online: bool
    labels_learned: int
    training_metrics: dict[str, Metric]
    online_metrics: dict[str, Any]
    drift: dict[str, Any]
    features: list[str]
    kind: str | None = None
    alias: str | None = None
    created_at: str | float | None = None
    label_offset: str | None = None
    thresholds: Thresholds | None = None  # only for keys with the admin scope




class ProfileQueued(msgspec.Struct):
    """The profile is on the updates stream; the worker pushes it to Feast."""

    queued: str
    kind: Literal["card", "merchant"]
    id: str  # as sent: a card is queued under its token
    profile: dict[str, str | float]


class ListEntry(msgspec.Struct):
    value: str
    reason: str
    added_at: float
    expires_at: float | None


class ListInfo(msgspec.Struct):
    field: str
    kind: Literal["block", "allow"]
    count: int
    values: list[ListEntry]


class AllLists(msgspec.Struct):
    """Every list with its live values, and the lists' version."""

    lists: dict[str, ListInfo]
    version: int


class ListChange(msgspec.Struct):
    """The entry as now held (``created``: it is new) or as removed (``deleted``)."""

    list: str
    value: str
    reason: str
    added_at: float
    expires_at: float | None
    created: bool | None = None
    deleted: bool | None = None


Conditions = list[str]
Decisions = list[Decision]


class RuleInfo(msgspec.Struct):
    """One rule in force: a list it matches and/or conditions, and what it does."""

    name: str
    stage: Literal["before", "after"]
    action: Decision
    list: str | None = None  # a field named list: the types below use aliases
    when: Conditions | None = None
    text: str | None = None
    overrides: Decisions | None = None


class Rules(msgspec.Struct):
    """The rules in force (before and after the model) and the lists' version."""

    source: str
    loaded_at: float
    before: list[RuleInfo]
    after: list[RuleInfo]
    lists_version: int


class ReviewCase(msgspec.Struct):
    """A review case with its decision (null fields: the decision is no longer held);
    open cases carry ``opened_at`` and ``age_seconds``, closed ones the verdict."""

    transaction_id: str
    status: Literal["open", "closed"]
    decision: Decision | None
    timestamp: float | None = None
    amount: float | None = None
    score: float | None = None
    reasons: list[Reason] | None = None
    model_version: str | None = None
    scored_at: float | None = None
    features: dict[str, float] | None = None
    opened_at: float | None = None
    age_seconds: float | None = None
    closed_at: float | None = None
    outcome: str | None = None
    analyst: str | None = None
    note: str | None = None


class Reviews(msgspec.Struct):
    """Review cases (open: oldest first; closed: newest first) and the queue's counts."""

    status: Literal["open", "closed"]
    count: int
    open: int
    overdue: int
    max_age_seconds: float
    cases: list[ReviewCase]


class ReviewClosed(msgspec.Struct):
    """The closed case and the offset of the label it appended (null: a repeat)."""

    transaction_id: str
    status: Literal["closed"]
    outcome: str
    analyst: str
    note: str
    opened_at: float
    closed_at: float
    label_offset: str | None


_BOOL = {"type": "boolean"}
MODEL_PARAMS = (Param("sync", _BOOL, "first wait until every label posted so far is learned"),)
REVIEW_PARAMS = (
    Param("status", {"enum": list(STATUSES), "default": "open"}, "open or closed cases"),
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
          "at most this many cases"),
)
LIST_PARAMS = (
    Param("name", {"enum": sorted(LISTS)}, "the list", where="path"),
    Param("value", {"type": "string", "minLength": 1, "maxLength": 128},
          "the value: a card, device or merchant id, or a country code; cards and devices "
          "are stored as their tokens, and a token is accepted as it is", where="path"),
)
