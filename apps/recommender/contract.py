"""The recommender's HTTP contract: the request and response types of every endpoint
(msgspec Structs), as ``/openapi.json`` publishes them.

Every request body is decoded with these types (``mlplatform.openapi.decode``), item and
user updates included (``recommender.updates.parse_update`` keeps the fields an update
sets). Responses are built as dicts on the request path (one C encoder, no conversion);
the contract test checks each one against its type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from mlplatform.openapi import Id, Param, Timestamp
from recommender.data import EVENT_TYPES

__all__ = [
    "BatchRecommendations", "BatchRequest", "Event", "EventBatch", "EventsAccepted",
    "ExperimentReport", "ItemUpdate", "ModelInfo", "Queued", "Recommendations", "Similar", "UserUpdate",
    "MAX_N", "RECOMMEND_PARAMS", "SIMILAR_PARAMS",
]

MAX_N = 100
N = Annotated[int, msgspec.Meta(ge=1, le=MAX_N, description=f"an integer in [1, {MAX_N}]")]
EventType = Annotated[Literal["view", "add_to_cart", "purchase"], msgspec.Meta(
    description="one of " + ", ".join(EVENT_TYPES))]
assert EVENT_TYPES == ("view", "add_to_cart", "purchase"), "EventType drifted from EVENT_TYPES"


class Event(msgspec.Struct):
    """A shopper's interaction; ``timestamp`` defaults to now and may not be in the future
    (5 minutes of clock skew are accepted)."""

    user_id: Id
    item_id: Id
    event_type: EventType
    timestamp: Timestamp | None = None


class EventBatch(msgspec.Struct):
    """Several events, all checked before any is recorded."""

    events: Annotated[list[Event], msgspec.Meta(min_length=1)]


class EventsAccepted(msgspec.Struct):
    """The events are in Redis: their stream ids, in request order."""

    accepted: int
    ids: list[str]


class BatchRequest(msgspec.Struct):
    """Recommendations for several users at once."""

    user_ids: Annotated[list[Id], msgspec.Meta(min_length=1)]
    n: N = 10
    exclude_seen: bool = True
    category: str | None = None


class RecommendedItem(msgspec.Struct):
    item_id: str | int
    score: float | None = None


class Recommendations(msgspec.Struct):
    """A user's recommendations, the model and variant that made them, and whether a
    fallback (popularity) or a degraded dependency was involved."""

    model: str
    user_id: str
    variant: str | None
    strategy: str
    fallback: bool
    items: list[RecommendedItem]
    degraded: list[str]


class UserResult(msgspec.Struct):
    user_id: str
    model: str | None
    variant: str | None
    strategy: str
    fallback: bool
    items: list[RecommendedItem]


class BatchRecommendations(msgspec.Struct):
    """Each user's recommendations, in request order."""

    model: str
    degraded: list[str]
    results: list[UserResult]


class Similar(msgspec.Struct):
    """Items like an item (by the model's item factors)."""

    model: str
    item_id: str
    strategy: str
    fallback: bool
    items: list[RecommendedItem]
    degraded: list[str]


# The rules of the update fields; each description follows "must be" in a 400's message.
Text = Annotated[str, msgspec.Meta(
    min_length=1, max_length=64, pattern=r"^\S([\s\S]*\S)?$",
    description="a non-empty string of at most 64 characters without surrounding spaces")]
Price = Annotated[float, msgspec.Meta(ge=0, le=1e12, description="a number >= 0 (at most 1e12)")]
Flag = Annotated[bool, msgspec.Meta(description="true or false")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$",
                                      description="2 upper-case letters (ISO 3166)")]


class ItemUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update of an item's catalogue entry: any non-empty subset of the fields
    (the others keep their current values); null is not a value."""

    category: Text | msgspec.UnsetType = msgspec.UNSET
    price: Price | msgspec.UnsetType = msgspec.UNSET
    in_stock: Flag | msgspec.UnsetType = msgspec.UNSET


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update of a user's profile: any non-empty subset of the fields (the
    others keep their current values); null is not a value."""

    segment: Text | msgspec.UnsetType = msgspec.UNSET
    country: Country | msgspec.UnsetType = msgspec.UNSET


class Queued(msgspec.Struct):
    """The update is durably on the updates stream; every replica reflects it within
    about a second."""

    queued: str


class ModelInfo(msgspec.Struct):
    """The model bundle in service (the experiment's salt: admin keys only)."""

    model: str
    name: str
    version: int
    variants: Any
    metrics: dict[str, Any]
    params: dict[str, Any]
    catalogue_size: int
    known_users: int
    data_cutoff: str
    alias: str | None = None
    created_at: str | float | None = None
    experiment: dict[str, Any] | None = None
    data_fingerprint: str | None = None
    rollout: dict[str, Any] | None = None


class VariantGuardrails(msgspec.Struct):
    """A variant's failed requests and latency against the experiment's limits."""

    ok: bool
    requests: int
    errors: int
    error_rate: float
    latency_mean_ms: float | None
    latency_p99_ms: float | None
    reasons: list[str]


class VariantReport(msgspec.Struct):
    """One variant: units, exposures, attributed conversions and revenue, the lift over
    the control (null for the control itself) with its 95% CI and p-value."""

    weight: float
    users: int
    exposures: int
    conversions: int
    conversion_rate: float | None
    conversion_events: int
    purchases: int
    revenue: float | None
    revenue_per_user: float | None
    lift: float | None
    lift_ci95: list[float | None] | None
    p_value: float | None
    revenue_lift: float | None
    revenue_lift_ci95: list[float | None] | None
    revenue_p_value: float | None
    guardrails: VariantGuardrails
    versions: dict[str, dict[str, float]]
    lift_error: str | None = None
    revenue_lift_error: str | None = None


class SampleRatio(msgspec.Struct):
    """The sample-ratio test: do the variants' units match their weights?"""

    p_value: float | None
    mismatch: bool
    chi2: float | None
    dof: int
    threshold: float
    expected_users: dict[str, float]


class ExperimentGuardrails(msgspec.Struct):
    max_error_rate: float
    max_p99_ms: float
    ok: bool


class ExperimentReport(msgspec.Struct):
    """An experiment's A/B report (``mlplatform.experiments.report``)."""

    experiment: str
    control: str
    generated_at: str
    attribution_window_seconds: float
    metric: str
    variants: dict[str, VariantReport]
    srm: SampleRatio
    guardrails: ExperimentGuardrails


_N_PARAM = Param("n", {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 10},
                 "how many items")
_CATEGORY = Param("category", {"type": "string"}, "only items of this category")
RECOMMEND_PARAMS = (
    _N_PARAM,
    Param("exclude_seen", {"type": "boolean", "default": True},
          "leave out items the user has interacted with"),
    _CATEGORY,
)
SIMILAR_PARAMS = (_N_PARAM, _CATEGORY)
