"""The GraphQL schema: queries, mutations and subscriptions over the two model services.

``schema`` is the plain schema (what ``schema.graphql`` records); ``build_schema``
adds the limits and metrics a served schema runs with. Writes are mutations (scoring
moves velocity counters and appends decisions, so ``checkout`` is one too); reads are
queries, batched by the request's DataLoaders.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.query_depth_limiter import IgnoreContext
from strawberry.types import Info

from graphapi.limits import CostLimiter
from graphapi.streams import StreamTails
from graphapi.telemetry import OperationMetrics
from graphapi.types import (
    Decision,
    EventInput,
    Item,
    LabelInput,
    LabelResult,
    ModelInfo,
    Recommendation,
    RecommendationList,
    RecordEventsResult,
    ReviewResult,
    Service,
    TransactionInput,
    decision_of,
    recommendations_of,
)
from mlplatform.config import Settings
from mlplatform.security.pii import tokeniser

__all__ = ["EVENTS_STREAM", "build_schema", "decisions_stream", "schema"]

EVENTS_STREAM = "mlsuite:rec:events"  # the recommender's event stream (recommender.history)
MAX_ALIASES = 50
MAX_TOKENS = 5000
# Documents whose parse and validation are kept per process.
DOCUMENT_CACHE = 256


def decisions_stream() -> str:
    """The fraud decision stream: ``<MLSUITE_FRAUD_KEY_PREFIX>decisions`` (fraud.keys)."""
    return f"{os.environ.get('MLSUITE_FRAUD_KEY_PREFIX') or 'fraud:'}decisions"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@strawberry.type(description="A shop user: recommendations and A/B variant.")
class User:
    id: strawberry.ID

    @strawberry.field(description="The user's recommendations now (live events included).")
    async def recommendations(self, info: Info, n: int = 10, category: str | None = None,
                              exclude_seen: bool = True) -> RecommendationList | None:
        raw = await info.context.loaders.recommendations.load(
            (str(self.id), n, category, exclude_seen))
        return recommendations_of(raw)

    @strawberry.field(description="The recommender experiment variant the user is assigned to.")
    async def variant(self, info: Info) -> str | None:
        raw = await info.context.loaders.recommendations.load((str(self.id), 10, None, True))
        return raw.get("variant")  # type: ignore[no-any-return]


@strawberry.type(description="A checkout: the cart's recommendations and the payment's fraud "
                             "decision, fetched concurrently. Either is null (with an error "
                             "naming its service) when that service is down.")
class Checkout:
    user_id: strawberry.ID
    found_recommendations: strawberry.Private[Any]
    found_decision: strawberry.Private[Any]

    @strawberry.field(description="Recommendations for the user, the cart's items left out.")
    def recommendations(self) -> list[Recommendation] | None:
        if isinstance(self.found_recommendations, BaseException):
            raise self.found_recommendations
        return self.found_recommendations  # type: ignore[no-any-return]

    @strawberry.field(description="The fraud decision on the payment.")
    def decision(self) -> Decision | None:
        if isinstance(self.found_decision, BaseException):
            raise self.found_decision
        return self.found_decision  # type: ignore[no-any-return]


@strawberry.type
class Query:
    @strawberry.field(description="One user.")
    def user(self, id: strawberry.ID) -> User:
        return User(id=id)

    @strawberry.field(description="Several users: their recommendations are one batch call.")
    def users(self, ids: list[strawberry.ID]) -> list[User]:
        return [User(id=i) for i in ids]

    @strawberry.field(description="One catalogue item.")
    def item(self, id: strawberry.ID) -> Item:
        return Item(id=id)

    @strawberry.field(description="Several items: their catalogue fields are one batched read.")
    def items(self, ids: list[strawberry.ID]) -> list[Item]:
        return [Item(id=i) for i in ids]

    @strawberry.field(description="The model a service serves (GET /v1/model).")
    async def model(self, info: Info, service: Service) -> ModelInfo | None:
        body = await info.context.loaders.call(service.value, "GET", "/v1/model",
                                               endpoint="/v1/model")
        label = body.get("model") or body.get("model_version") or ""
        version = body.get("version")
        return ModelInfo(service=service, model=str(label), name=body.get("name"),
                         version=None if version is None else str(version),
                         alias=body.get("alias"), created_at=body.get("created_at"),
                         details=body)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Record shop events (POST /v1/events).")
    async def record_events(self, info: Info, events: list[EventInput]) -> RecordEventsResult:
        body = await info.context.loaders.call(
            "recommender", "POST", "/v1/events", endpoint="/v1/events",
            json={"events": [e.to_json() for e in events]})
        return RecordEventsResult(accepted=body["accepted"], ids=body["ids"])

    @strawberry.mutation(description="Score one payment (POST /v1/transactions/score).")
    async def score_transaction(self, info: Info, transaction: TransactionInput) -> Decision:
        return await _score(info, transaction)

    @strawberry.mutation(description="Score payments in one call "
                                     "(POST /v1/transactions/score/batch).")
    async def score_transactions(self, info: Info,
                                 transactions: list[TransactionInput]) -> list[Decision]:
        now = _now()
        body = await info.context.loaders.call(
            "fraud", "POST", "/v1/transactions/score/batch",
            endpoint="/v1/transactions/score/batch",
            json={"transactions": [t.to_json(now) for t in transactions]})
        return [decision_of(r) for r in body["results"]]

    @strawberry.mutation(description="Label transactions: fraud or not (POST /v1/labels).")
    async def label_transactions(self, info: Info, labels: list[LabelInput]) -> LabelResult:
        body = await info.context.loaders.call(
            "fraud", "POST", "/v1/labels", endpoint="/v1/labels",
            json={"labels": [label.to_json() for label in labels]})
        return LabelResult(accepted=body["accepted"], ignored=body["ignored"],
                           corrections=body["corrections"],
                           offsets=[None if o is None else str(o) for o in body["offsets"]])

    @strawberry.mutation(description="Close a review case with a verdict (fraud or legit); "
                                     "the verdict becomes a label.")
    async def resolve_review(self, info: Info, transaction_id: strawberry.ID, outcome: str,
                             analyst: str, note: str | None = None) -> ReviewResult:
        verdict: dict[str, Any] = {"outcome": outcome, "analyst": analyst}
        if note is not None:
            verdict["note"] = note
        body = await info.context.loaders.call(
            "fraud", "POST", f"/v1/reviews/{quote(str(transaction_id), safe='')}",
            endpoint="/v1/reviews/<id>", json=verdict)
        offset = body.get("label_offset")
        return ReviewResult(
            transaction_id=strawberry.ID(body["transaction_id"]), status=body["status"],
            outcome=body["outcome"], analyst=body["analyst"], note=body.get("note"),
            opened_at=body.get("opened_at"), closed_at=body.get("closed_at"),
            label_offset=None if offset is None else str(offset))

    @strawberry.mutation(description="Checkout: recommendations for the cart and the payment's "
                                     "fraud decision, both services called at once.")
    async def checkout(self, info: Info, user_id: strawberry.ID, cart: list[strawberry.ID],
                       transaction: TransactionInput, n: int = 5) -> Checkout:
        in_cart = {str(i) for i in cart}
        # Ask for the cart's size more, so n remain once the cart's items are left out.
        found: Any
        decision: Any
        found, decision = await asyncio.gather(
            info.context.loaders.recommendations.load((str(user_id), n + len(in_cart), None,
                                                       True)),
            _score(info, transaction), return_exceptions=True)
        recs: Any = found  # an upstream's error is kept: the field raises it (partial data)
        if not isinstance(found, BaseException):
            recs = [r for r in recommendations_of(found).items
                    if str(r.item_id) not in in_cart][:n]
        return Checkout(user_id=user_id, found_recommendations=recs, found_decision=decision)


async def _score(info: Info, transaction: TransactionInput) -> Decision:
    body = await info.context.loaders.call(
        "fraud", "POST", "/v1/transactions/score", endpoint="/v1/transactions/score",
        json=transaction.to_json(_now()))
    return decision_of(body)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Fraud decisions as they are made (every replica's), "
                                         "those scoring at least minScore. Needs the "
                                         "fraud service's review scope.")
    async def decisions(self, info: Info, min_score: float = 0.0
                        ) -> AsyncGenerator[Decision, None]:
        # The stream is read here, not through the service: ask the service first whether
        # the caller's key may see decisions (its review queue's scope), so its keys and
        # scopes decide, as for every other field.
        await info.context.loaders.call("fraud", "GET", "/v1/reviews", endpoint="/v1/reviews",
                                        params={"limit": 1})
        async with _tails(info).subscribe(decisions_stream()) as queue:
            while True:
                _, fields = await queue.get()
                record = json.loads(fields["record"])
                if record["score"] >= min_score:
                    yield decision_of(record)

    @strawberry.subscription(description="A user's recommendations: now, then each time the "
                                         "user's events change them.")
    async def recommendations(self, info: Info, user_id: strawberry.ID, n: int = 10,
                              category: str | None = None, exclude_seen: bool = True
                              ) -> AsyncGenerator[RecommendationList, None]:
        user = str(user_id)
        params: dict[str, Any] = {"n": n, "exclude_seen": str(exclude_seen).lower()}
        if category:
            params["category"] = category
        # The events stream names users by their PII token (mlplatform.security.pii), not
        # as the caller does; the raw id too, for entries written before tokenisation.
        names = {user, tokeniser(info.context.settings).token("user", user)}
        # Listen first, then read: an event between the two still triggers a refresh.
        async with _tails(info).subscribe(EVENTS_STREAM) as queue:
            last: list[str] | None = None
            while True:
                body = await info.context.loaders.call(
                    "recommender", "GET", f"/v1/users/{quote(user, safe='')}/recommendations",
                    endpoint="/v1/users/<id>/recommendations", params=params)
                found = recommendations_of({**body, "degraded": body.get("degraded", [])})
                items = [str(r.item_id) for r in found.items]
                if items != last:
                    last = items
                    yield found
                await _next_event_of(queue, names)


def _tails(info: Info) -> StreamTails:
    tails: StreamTails | None = info.context.tails
    if tails is None:
        raise GraphQLError("subscriptions read the Redis streams: set MLSUITE_REDIS_URL",
                           extensions={"code": "UPSTREAM_UNAVAILABLE", "service": "redis"})
    return tails


async def _next_event_of(queue: asyncio.Queue[Any], names: set[str]) -> None:
    """Wait for an event whose ``user_id`` is one of ``names`` (one user's); then skip the
    ones already queued (one refresh for a burst of events)."""
    while (await queue.get())[1].get("user_id") not in names:
        pass
    while not queue.empty():
        queue.get_nowait()


schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)


def _introspection(ctx: IgnoreContext) -> bool:
    return ctx.field_name.startswith("__")  # introspection has its own switch


def build_schema(settings: Settings) -> strawberry.Schema:
    """The served schema: depth, alias, token, cost and batch limits, metrics, and
    introspection only when ``graphql_introspection`` is on."""
    # Factories, not instances: strawberry makes each request its own extension objects.
    extensions: list[Callable[[], SchemaExtension]] = [
        # A client sends the same few documents again and again: parse and validate each
        # once (graphql-core's validation was ~40% of a small query's CPU). Bounded: a
        # client sending many distinct texts only evicts. The validation cache goes before
        # CostLimiter, which sets its errors after it (the cache replaces what it finds).
        partial(ParserCache, maxsize=DOCUMENT_CACHE),
        partial(ValidationCache, maxsize=DOCUMENT_CACHE),
        OperationMetrics,
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        # The depth and alias rules are classes made by their limiter: made once here, so
        # every request's rules are the same objects and the validation cache finds them.
        partial(AddValidationRules, [*QueryDepthLimiter(
            max_depth=settings.graphql_max_depth, should_ignore=_introspection
        ).validation_rules, *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules]),
        partial(CostLimiter, max_cost=settings.graphql_max_cost,
                max_batch=settings.graphql_max_batch),
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription,
                             extensions=extensions)
