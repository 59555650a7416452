"""HTTP views: parse the request, call the engine, serialise. Nothing else lives here.

Every bad input is a ``BadRequest`` naming the field (``n``, ``user_ids[3]``,
``events[0].event_type``, ``body``); mlplatform.http turns it into the JSON error shape.

User ids are personal: each one a request carries is replaced by its token
(``recommender.pii``) as it is parsed, so the engine, Redis, the streams and the
exposures only ever see tokens; a response echoes the id the client sent.

Reads (recommendations, similar items, the model) and writes (events, item and user
updates) are apart: a write is acknowledged once it is durably in Redis, and the
worker turns the update stream into Feast pushes and snapshots the reads swap in.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from mlplatform import openapi
from mlplatform.errors import APIError, BadRequest, NotFound
from mlplatform.experiments import ExperimentDefinition, ExperimentStore, report_for
from mlplatform.http import (
    check_id,
    get_redis,
    json_body,
    query_bool,
    query_int,
    query_str,
    request_id,
    typed_body,
)
from mlplatform.openapi import operation, timestamp_seconds
from mlplatform.security import may, requires
from recommender.attribution import ExposureLog
from recommender.contract import (
    MAX_N,
    RECOMMEND_PARAMS,
    SIMILAR_PARAMS,
    BatchRecommendations,
    BatchRequest,
    EventBatch,
    EventsAccepted,
    ExperimentReport,
    ItemUpdate,
    ModelInfo,
    Queued,
    Recommendations,
    Similar,
    UserUpdate,
)
from recommender.contract import (
    Event as EventBody,
)
from recommender.engine import Engine, ServingModel, UserRecommendations
from recommender.history import Event
from recommender.updates import parse_update

__all__ = ["EXPERIMENTS", "EXPOSURES", "MAX_N", "TOKENS", "bp", "get_engine"]

bp = Blueprint("recommender", __name__, url_prefix="/v1")

EXPOSURES = "recommender.exposures"  # app.extensions key: the ExposureLog (or absent)
EXPERIMENTS = "recommender.experiments"  # name -> ExperimentDefinition, for the reports
TOKENS = "recommender.tokens"  # app.extensions key: the deployment's Tokeniser
FUTURE_TOLERANCE_SECONDS = 300  # clock skew we accept on client timestamps


def get_engine() -> Engine:
    return current_app.extensions["recommender.engine"]  # type: ignore[no-any-return]


def user_token(user_id: str) -> str:
    """The token a user id is known by past the edge (memoised: one dict hit when warm)."""
    return current_app.extensions[TOKENS].token("user", user_id)  # type: ignore[no-any-return]


# The recommendation endpoints serialise with one shared C encoder, straight into the
# response: same JSON as ``jsonify`` (compact, plus a newline), keys in a fixed,
# readable order, without the provider lookups and per-call set-up of ``jsonify``.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _json(obj: dict[str, Any]) -> Response:
    return current_app.response_class(_ENCODER.encode(obj) + "\n", mimetype="application/json")


def _user_result(r: UserRecommendations, sent: str) -> dict[str, Any]:
    return {"user_id": sent, "model": r.model, "variant": r.variant,
            "strategy": r.strategy, "fallback": r.fallback, "items": r.items}


@bp.get("/users/<user_id>/recommendations")
@requires("recommend")
@operation("A user's recommendations", params=RECOMMEND_PARAMS,
           responses={200: Recommendations}, tags=("recommendations",))
def user_recommendations(user_id: str) -> Response:
    user_id = check_id(user_id, "user_id")
    n = query_int("n", 10, 1, MAX_N)
    exclude_seen = query_bool("exclude_seen", True)
    category = query_str("category")
    serving, results, degraded = _recommend(
        [user_token(user_id)], n=n, exclude_seen=exclude_seen, category=category)
    r = results[0]
    return _json({"model": serving.version.label, "user_id": user_id, "variant": r.variant,
                  "strategy": r.strategy, "fallback": r.fallback, "items": r.items,
                  "degraded": degraded})


@bp.post("/recommendations/batch")
@requires("recommend")
@operation("Recommendations for several users", body=BatchRequest,
           responses={200: BatchRecommendations}, tags=("recommendations",))
def batch_recommendations() -> Response:
    body = typed_body(BatchRequest)
    limit = current_app.config["RECOMMENDER_MAX_BATCH_USERS"]
    if len(body.user_ids) > limit:
        raise BadRequest(f"user_ids must be a list of 1 to {limit} user ids, got "
                         f"{len(body.user_ids)} ids", field="user_ids")
    serving, results, degraded = _recommend(
        [user_token(u) for u in body.user_ids], n=body.n, exclude_seen=body.exclude_seen,
        category=body.category or None)
    return _json({"model": serving.version.label, "degraded": degraded,
                  "results": [_user_result(r, sent)
                              for r, sent in zip(results, body.user_ids, strict=True)]})


def _recommend(user_ids: list[str], **options: Any
               ) -> tuple[ServingModel, list[UserRecommendations], list[str]]:
    """``Engine.recommend``, with the exposures (or the failure) recorded for the A/B
    analysis: one pipelined Redis write, no read."""
    engine = get_engine()
    exposures: ExposureLog | None = current_app.extensions.get(EXPOSURES)
    if exposures is None or engine.experiment is None:
        return engine.recommend(user_ids, **options)
    experiment = engine.experiment
    started = time.perf_counter()
    try:
        serving, results, degraded = engine.recommend(user_ids, **options)
    except APIError as exc:
        if exc.status >= 500:
            exposures.record_error([experiment.variant_of(u) for u in user_ids])
        raise
    except Exception:
        exposures.record_error([experiment.variant_of(u) for u in user_ids])
        raise
    # The assigned variant (the unit of the experiment), not the model that served it:
    # a bundle without a variant's model serves its first one to those users.
    label = serving.version.label
    exposures.record([(r.user_id, experiment.variant_of(r.user_id),
                       [i["item_id"] for i in r.items], r.model or label) for r in results],
                     (time.perf_counter() - started) * 1000)
    return serving, results, degraded


@bp.get("/experiments/<name>")
@requires("recommend")
@operation("An experiment's A/B report", responses={200: ExperimentReport},
           tags=("experiments",), errors=(404,))
def experiment_report(name: str) -> Response:
    """The A/B report of experiment ``name`` (``mlplatform.experiments.report``): per
    variant users, exposures, conversions, lift vs the control with a 95% CI and p-value,
    sample-ratio mismatch and guardrails. 404 for an experiment not configured here."""
    name = check_id(name, "name")
    definitions: dict[str, ExperimentDefinition] = current_app.extensions.get(EXPERIMENTS, {})
    definition = definitions.get(name)
    if definition is None:
        raise NotFound(f"no experiment {name!r}; expected one of "
                       f"{', '.join(sorted(definitions)) or '(none configured)'}",
                       field="name")
    return jsonify(report_for(ExperimentStore(get_redis()), definition).to_json())


@bp.get("/items/<item_id>/similar")
@requires("recommend")
@operation("Items similar to an item", params=SIMILAR_PARAMS, responses={200: Similar},
           tags=("recommendations",))
def similar_items(item_id: str) -> Response:
    item_id = check_id(item_id, "item_id")
    n = query_int("n", 10, 1, MAX_N)
    category = query_str("category")
    serving, result, degraded = get_engine().similar(item_id, n=n, category=category)
    return jsonify({"model": serving.version.label, "item_id": result.item_id,
                    "strategy": result.strategy, "fallback": result.fallback,
                    "items": result.items, "degraded": degraded})


@bp.post("/events")
@requires("events")
@operation("Record shopper events (one, a list, or {events: [...]})",
           body=(EventBody, EventBatch, list[EventBody]), responses={201: EventsAccepted},
           tags=("events",))
def post_events() -> tuple[Response, int]:
    body = json_body()
    limit = current_app.config["RECOMMENDER_MAX_EVENTS_PER_REQUEST"]
    # Three shapes, told apart by their JSON type: msgspec cannot decode a union of two
    # object types, so the document is decoded once and then converted.
    if isinstance(body, dict) and "events" in body:
        raw: list[EventBody] = openapi.convert(body, EventBatch).events
        prefix = "events"
    elif isinstance(body, list):
        if not body:
            raise BadRequest(f"events must be a list of 1 to {limit} events, got 0 events",
                             field="events")
        raw, prefix = openapi.convert(body, list[EventBody], root="events"), "events"
    else:
        raw, prefix = [openapi.convert(body, EventBody)], ""
    if len(raw) > limit:
        raise BadRequest(f"events must be a list of 1 to {limit} events, got {len(raw)} "
                         "events", field="events")
    now = time.time()
    events = [_event(e, f"{prefix}[{i}]." if prefix else "", now) for i, e in enumerate(raw)]
    ids = get_engine().record(events, request_id=request_id())
    return jsonify({"accepted": len(ids), "ids": ids}), 201


@bp.put("/items/<item_id>")
@requires("catalogue")
@operation("Update an item's catalogue entry (partial)", body=ItemUpdate,
           responses={202: Queued}, tags=("catalogue",))
def put_item(item_id: str) -> tuple[Response, int]:
    """Update an item's catalogue entry: ``{"category": str, "price": number >= 0,
    "in_stock": bool}``.

    Partial updates: any non-empty subset of the fields (the others keep their current
    Feast values); an unknown field or a null is a 400 naming it. 202 ``{"queued": id}``
    once the update is durably on the updates stream; the worker pushes it to Feast and
    every replica's recommendations reflect it within about a second (an item set out of
    stock is no longer recommended).
    """
    item_id = check_id(item_id, "item_id")
    fields = parse_update("item", typed_body(ItemUpdate))
    queued = get_engine().update("item", item_id, fields, request_id=request_id())
    return jsonify({"queued": queued}), 202


@bp.put("/users/<user_id>")
@requires("catalogue")
@operation("Update a user's profile (partial)", body=UserUpdate, responses={202: Queued},
           tags=("catalogue",))
def put_user(user_id: str) -> tuple[Response, int]:
    """Update a user's profile: ``{"segment": str, "country": "DE"}`` (2 upper-case
    letters, ISO 3166).

    Partial updates, validation and the 202 as for items; a new segment changes the
    user's cold-start fallback (segment popularity) on every replica within about a
    second, before any segment cache expires.
    """
    user_id = check_id(user_id, "user_id")
    fields = parse_update("user", typed_body(UserUpdate))
    queued = get_engine().update("user", user_token(user_id), fields, request_id=request_id())
    return jsonify({"queued": queued}), 202


@bp.get("/model")
@requires("recommend")
@operation("The model bundle in service", responses={200: ModelInfo}, tags=("model",))
def model_info() -> Response:
    info = get_engine().describe()
    if info.get("experiment") and not may("admin"):  # the salt would let a client pick its variant
        info["experiment"] = {k: v for k, v in info["experiment"].items() if k != "salt"}
    return jsonify(info)


# -- parsing helpers ---------------------------------------------------------------------

def _event(body: EventBody, prefix: str, now: float) -> Event:
    return Event(user_token(body.user_id), body.item_id, body.event_type,
                 _timestamp(body.timestamp, prefix + "timestamp", now))


def _timestamp(value: float | str | None, field: str, now: float) -> float:
    """The one timestamp rule (``mlplatform.openapi.timestamp_seconds``); default now;
    not in the future beyond the clock skew we accept."""
    if value is None:
        return now
    ts = timestamp_seconds(value, field)
    if ts > now + FUTURE_TOLERANCE_SECONDS:
        raise BadRequest(f"{field} must not be in the future (beyond "
                         f"{FUTURE_TOLERANCE_SECONDS} s of clock skew), got {value!r}",
                         field=field)
    return ts
