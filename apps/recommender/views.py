"""HTTP views: parse the request, call the engine, serialise. Nothing else lives here.

Every bad input is a ``BadRequest`` naming the field (``n``, ``user_ids[3]``,
``events[0].event_type``, ``body``); mlplatform.http turns it into the JSON error shape.

Reads (recommendations, similar items, the model) and writes (events, item and user
updates) are apart: a write is acknowledged once it is durably in Redis, and the
worker turns the update stream into Feast pushes and snapshots the reads swap in.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

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
)
from mlplatform.security import may, requires
from recommender.attribution import ExposureLog
from recommender.data import EVENT_TYPES
from recommender.engine import Engine, ServingModel, UserRecommendations
from recommender.history import Event
from recommender.updates import parse_update

__all__ = ["EXPERIMENTS", "EXPOSURES", "MAX_N", "bp", "get_engine"]

bp = Blueprint("recommender", __name__, url_prefix="/v1")

MAX_N = 100
EXPOSURES = "recommender.exposures"  # app.extensions key: the ExposureLog (or absent)
EXPERIMENTS = "recommender.experiments"  # name -> ExperimentDefinition, for the reports
FUTURE_TOLERANCE_SECONDS = 300  # clock skew we accept on client timestamps


def get_engine() -> Engine:
    return current_app.extensions["recommender.engine"]  # type: ignore[no-any-return]


# The recommendation endpoints serialise with one shared C encoder, straight into the
# response: same JSON as ``jsonify`` (compact, plus a newline), keys in a fixed,
# readable order, without the provider lookups and per-call set-up of ``jsonify``.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _json(obj: dict[str, Any]) -> Response:
    return current_app.response_class(_ENCODER.encode(obj) + "\n", mimetype="application/json")


def _user_result(r: UserRecommendations) -> dict[str, Any]:
    return {"user_id": r.user_id, "model": r.model, "variant": r.variant,
            "strategy": r.strategy, "fallback": r.fallback, "items": r.items}


@bp.get("/users/<user_id>/recommendations")
@requires("recommend")
def user_recommendations(user_id: str) -> Response:
    user_id = check_id(user_id, "user_id")
    n = query_int("n", 10, 1, MAX_N)
    exclude_seen = query_bool("exclude_seen", True)
    category = query_str("category")
    serving, results, degraded = _recommend(
        [user_id], n=n, exclude_seen=exclude_seen, category=category)
    r = results[0]
    return _json({"model": serving.version.label, "user_id": r.user_id, "variant": r.variant,
                  "strategy": r.strategy, "fallback": r.fallback, "items": r.items,
                  "degraded": degraded})


@bp.post("/recommendations/batch")
@requires("recommend")
def batch_recommendations() -> Response:
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}", field="body")
    limit = current_app.config["RECOMMENDER_MAX_BATCH_USERS"]
    user_ids = body.get("user_ids")
    if not isinstance(user_ids, list) or not 1 <= len(user_ids) <= limit:
        got = f"{len(user_ids)} ids" if isinstance(user_ids, list) else type(user_ids).__name__
        raise BadRequest(f"user_ids must be a list of 1 to {limit} user ids, got {got}",
                         field="user_ids")
    ids = [check_id(u, f"user_ids[{i}]") for i, u in enumerate(user_ids)]
    n = _int_field(body, "n", 10, 1, MAX_N)
    exclude_seen = _bool_field(body, "exclude_seen", True)
    category = body.get("category")
    if category is not None and not isinstance(category, str):
        raise BadRequest(f"category must be a string or null, got {type(category).__name__}",
                         field="category")
    serving, results, degraded = _recommend(
        ids, n=n, exclude_seen=exclude_seen, category=category or None)
    return _json({"model": serving.version.label, "degraded": degraded,
                  "results": [_user_result(r) for r in results]})


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
def post_events() -> tuple[Response, int]:
    body = json_body()
    if isinstance(body, dict) and "events" in body:
        raw, prefix = body["events"], "events"
    elif isinstance(body, list):
        raw, prefix = body, "events"
    else:
        raw, prefix = [body], ""
    limit = current_app.config["RECOMMENDER_MAX_EVENTS_PER_REQUEST"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= limit:
        got = f"{len(raw)} events" if isinstance(raw, list) else type(raw).__name__
        raise BadRequest(f"events must be a list of 1 to {limit} events, got {got}",
                         field="events")
    now = time.time()
    events = [_event(e, f"{prefix}[{i}]." if prefix else "", now) for i, e in enumerate(raw)]
    ids = get_engine().record(events, request_id=request_id())
    return jsonify({"accepted": len(ids), "ids": ids}), 201


@bp.put("/items/<item_id>")
@requires("catalogue")
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
    fields = parse_update("item", json_body())
    queued = get_engine().update("item", item_id, fields, request_id=request_id())
    return jsonify({"queued": queued}), 202


@bp.put("/users/<user_id>")
@requires("catalogue")
def put_user(user_id: str) -> tuple[Response, int]:
    """Update a user's profile: ``{"segment": str, "country": "DE"}`` (2 upper-case
    letters, ISO 3166).

    Partial updates, validation and the 202 as for items; a new segment changes the
    user's cold-start fallback (segment popularity) on every replica within about a
    second, before any segment cache expires.
    """
    user_id = check_id(user_id, "user_id")
    fields = parse_update("user", json_body())
    queued = get_engine().update("user", user_id, fields, request_id=request_id())
    return jsonify({"queued": queued}), 202


@bp.get("/model")
@requires("recommend")
def model_info() -> Response:
    info = get_engine().describe()
    if info.get("experiment") and not may("admin"):  # the salt would let a client pick its variant
        info["experiment"] = {k: v for k, v in info["experiment"].items() if k != "salt"}
    return jsonify(info)


# -- parsing helpers ---------------------------------------------------------------------

def _int_field(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {value!r}", field=name)
    return value


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}", field=name)
    return value


def _event(raw: Any, prefix: str, now: float) -> Event:
    if not isinstance(raw, dict):
        field = prefix.rstrip(".") or "body"
        raise BadRequest(f"{field} must be an event object with user_id, item_id and "
                         f"event_type, got {type(raw).__name__}", field=field)
    for name in ("user_id", "item_id", "event_type"):
        if raw.get(name) is None:
            raise BadRequest(f"{prefix}{name} is required", field=prefix + name)
    user_id = check_id(raw["user_id"], prefix + "user_id")
    item_id = check_id(raw["item_id"], prefix + "item_id")
    event_type = raw["event_type"]
    if event_type not in EVENT_TYPES:
        raise BadRequest(f"{prefix}event_type must be one of {', '.join(EVENT_TYPES)}, "
                         f"got {event_type!r}", field=prefix + "event_type")
    timestamp = _timestamp(raw.get("timestamp"), prefix + "timestamp", now)
    return Event(user_id, item_id, event_type, timestamp)


def _timestamp(value: Any, field: str, now: float) -> float:
    """Epoch seconds or ISO-8601 with a zone; default now; not in the future."""
    if value is None:
        return now
    if isinstance(value, bool):
        ts = math.nan
    elif isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
            ts = moment.timestamp() if moment.tzinfo is not None else math.nan
        except ValueError:
            ts = math.nan
    else:
        ts = math.nan
    if not math.isfinite(ts) or ts < 0 or ts > now + FUTURE_TOLERANCE_SECONDS:
        raise BadRequest(
            f"{field} must be epoch seconds or an ISO-8601 time with a zone, not in the "
            f"future, got {value!r}", field=field)
    return ts
