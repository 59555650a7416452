"""The schema's object and input types, and their conversion from and to the services' JSON.

Names are GraphQL's camelCase; the services' snake_case JSON is mapped here and nowhere
else. Values the services validate (event types, channels, currencies, outcomes) stay
strings: the service's 4xx names the bad field (``extensions.field``), so the rules live
in one place, the service, not a copy here.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

__all__ = [
    "Decision", "EventInput", "Item", "LabelInput", "LabelResult", "ModelInfo",
    "Reason", "Recommendation", "RecommendationList", "RecordEventsResult", "ReviewResult",
    "Service", "SimilarItems", "TransactionInput", "decision_of", "recommendations_of",
]


@strawberry.enum(description="A model service behind this API.")
class Service(Enum):
    RECOMMENDER = "recommender"
    FRAUD = "fraud"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@strawberry.type(description="A catalogue item; category, price and stock come from Feast.")
class Item:
    id: strawberry.ID

    @strawberry.field(description="The item's category (null when the catalogue has none).")
    async def category(self, info: Info) -> str | None:
        row = await info.context.loaders.items.load(str(self.id))
        return row.get("category")

    @strawberry.field(description="The item's price (null when unknown).")
    async def price(self, info: Info) -> float | None:
        row = await info.context.loaders.items.load(str(self.id))
        return _number(row.get("price"))

    @strawberry.field(description="False once the item is out of stock (it is then never "
                                  "recommended); an item Feast does not know counts as in stock.")
    async def in_stock(self, info: Info) -> bool:
        row = await info.context.loaders.items.load(str(self.id))
        return row.get("in_stock") is not False

    @strawberry.field(description="Items similar to this one (item-item similarity).")
    async def similar(self, info: Info, n: int = 10,
                      category: str | None = None) -> SimilarItems | None:
        body = await info.context.loaders.similar.load((str(self.id), n, category))
        return SimilarItems(item_id=strawberry.ID(body["item_id"]), model=body["model"],
                            strategy=body["strategy"], fallback=body["fallback"],
                            degraded=body.get("degraded", []),
                            items=[_recommendation(i) for i in body["items"]])


@strawberry.type(description="One recommended item with its score.")
class Recommendation:
    item_id: strawberry.ID
    score: float

    @strawberry.field(description="The item, with its catalogue fields and similar items.")
    def item(self) -> Item:
        return Item(id=self.item_id)


def _recommendation(raw: dict[str, Any]) -> Recommendation:
    return Recommendation(item_id=strawberry.ID(raw["item_id"]), score=float(raw["score"]))


@strawberry.type(description="A user's recommendations and the model and variant that made them.")
class RecommendationList:
    user_id: strawberry.ID
    model: str
    variant: str | None
    strategy: str
    fallback: bool
    degraded: list[str]
    items: list[Recommendation]


def recommendations_of(raw: dict[str, Any], model: str = "") -> RecommendationList:
    return RecommendationList(
        user_id=strawberry.ID(raw["user_id"]), model=raw.get("model") or model,
        variant=raw.get("variant"), strategy=raw["strategy"], fallback=raw["fallback"],
        degraded=raw.get("degraded", []), items=[_recommendation(i) for i in raw["items"]])


@strawberry.type(description="Items similar to one item.")
class SimilarItems:
    item_id: strawberry.ID
    model: str
    strategy: str
    fallback: bool
    degraded: list[str]
    items: list[Recommendation]


@strawberry.type(description="Why a transaction got its score: a feature, a rule or a list.")
class Reason:
    code: str
    text: str
    feature: str | None = None
    value: float | None = None
    rule: str | None = None


@strawberry.type(description="The fraud service's decision on one transaction.")
class Decision:
    transaction_id: strawberry.ID
    score: float
    decision: str = strawberry.field(description="approve, review or decline")
    reasons: list[Reason]
    model_version: str
    model_labels: int
    duplicate: bool = strawberry.field(
        default=False, description="True when the id was scored before: the stored decision.")


def decision_of(raw: dict[str, Any]) -> Decision:
    reasons = [Reason(code=str(r.get("code", "")), text=str(r.get("text", "")),
                      feature=r.get("feature"), value=_number(r.get("value")),
                      rule=r.get("rule")) for r in raw.get("reasons", [])]
    return Decision(transaction_id=strawberry.ID(raw["transaction_id"]),
                    score=round(float(raw["score"]), 6),  # as the REST answer (the record is exact)
                    decision=raw["decision"], reasons=reasons,
                    model_version=str(raw["model_version"]),
                    model_labels=int(raw.get("model_labels", 0)),
                    duplicate=bool(raw.get("duplicate", False)))


@strawberry.type(description="A model service's model: version, alias and its full description.")
class ModelInfo:
    service: Service
    model: str = strawberry.field(description="name@version label of the served model")
    name: str | None
    version: str | None
    alias: str | None
    created_at: str | None
    details: JSON = strawberry.field(description="Everything GET /v1/model returns.")


@strawberry.type
class RecordEventsResult:
    accepted: int
    ids: list[str]


@strawberry.type
class LabelResult:
    accepted: int
    ignored: int
    corrections: int
    offsets: list[str | None]


@strawberry.type
class ReviewResult:
    transaction_id: strawberry.ID
    status: str
    outcome: str
    analyst: str
    note: str | None
    opened_at: float | None
    closed_at: float | None
    label_offset: str | None


@strawberry.input(description="A shop event (POST /v1/events).")
class EventInput:
    user_id: strawberry.ID
    item_id: strawberry.ID
    event_type: str = strawberry.field(description="view, add_to_cart or purchase")
    timestamp: str | None = strawberry.field(
        default=None, description="ISO 8601 with a zone, or epoch seconds; default now")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id,
                               "event_type": self.event_type}
        if self.timestamp is not None:
            out["timestamp"] = _timestamp(self.timestamp)
        return out


@strawberry.input(description="A payment to score (POST /v1/transactions/score).")
class TransactionInput:
    transaction_id: strawberry.ID
    card_id: strawberry.ID
    merchant_id: strawberry.ID
    amount: float
    currency: str
    country: str
    channel: str = strawberry.field(description="card_present or online")
    device_id: strawberry.ID | None = None
    timestamp: str | None = strawberry.field(
        default=None, description="ISO 8601 with a zone, or epoch seconds; default now")
    extra: JSON | None = strawberry.field(
        default=None, description="The service's declared extra numeric fields, by name")

    def to_json(self, now: str) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra) if isinstance(self.extra, dict) else {}
        out.update({"transaction_id": self.transaction_id, "card_id": self.card_id,
                    "merchant_id": self.merchant_id, "amount": self.amount,
                    "currency": self.currency, "country": self.country,
                    "channel": self.channel,
                    "timestamp": now if self.timestamp is None else _timestamp(self.timestamp)})
        if self.device_id is not None:
            out["device_id"] = self.device_id
        return out


@strawberry.input(description="A fraud label: chargeback or analyst verdict (POST /v1/labels).")
class LabelInput:
    transaction_id: strawberry.ID
    is_fraud: bool
    labelled_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transaction_id": self.transaction_id, "is_fraud": self.is_fraud}
        if self.labelled_at is not None:
            out["labelled_at"] = _timestamp(self.labelled_at)
        return out


def _timestamp(text: str) -> str | float:
    """Epoch seconds given as a string become a number (the services take both)."""
    try:
        return float(text)
    except ValueError:
        return text
