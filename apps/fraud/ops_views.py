"""Endpoints of the fraud operations team: lists, rules in force, the review queue.

- ``GET /v1/lists``: every list with its values and counts (from Redis, the record).
- ``PUT /v1/lists/<list>/<value>``: put a value on a list (optional body ``{"reason":
  ..., "expires_at": ...}``) -> 201 when new, 200 when updated; applies on every
  replica within a second.
- ``DELETE /v1/lists/<list>/<value>``: remove it -> 200, or 404 if it is not there.
- ``GET /v1/rules``: the rules in force (reloaded from the rules file when it changes).
- ``GET /v1/reviews?status=open|closed&limit=N``: cases, open oldest first.
- ``POST /v1/reviews/<transaction_id>``: ``{"outcome": "fraud"|"legit", "analyst":
  "..."}`` closes a case; the verdict becomes a label (409 closed, 404 unknown).

``init_app`` creates the lists, the policy and the review queue for a fraud app and keeps
them in ``app.extensions`` (``fraud.lists``, ``fraud.policy``, ``fraud.reviews``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request

from fraud.contract import (
    LIST_PARAMS,
    REVIEW_PARAMS,
    AllLists,
    ListChange,
    ListEntryBody,
    ReviewClosed,
    Reviews,
    Rules,
    Verdict,
)
from fraud.lists import Lists
from fraud.reviews import STATUSES, ReviewQueue
from fraud.rules import Policy
from fraud.service import FraudService
from mlplatform.errors import BadRequest
from mlplatform.http import json_body, query_int, query_str
from mlplatform.openapi import operation
from mlplatform.security import requires

__all__ = ["bp", "init_app", "get_lists", "get_policy", "get_reviews"]

log = logging.getLogger(__name__)

bp = Blueprint("fraud_ops", __name__)


def init_app(app: Flask, service: FraudService) -> None:
    """Attach lists, policy and review queue to ``app`` (reusing the service's own when it
    has them), register the endpoints, and refresh the review gauges on each scrape."""
    config = service.config
    lists: Lists | None = getattr(service, "lists", None)
    if lists is None:
        lists = Lists(service.redis, config.key_prefix, poll_seconds=config.follow_seconds,
                      max_values=config.list_max_values, pii=service.pii)
        lists.start()
        _close_with(service, lists)
    policy: Policy | None = getattr(service, "policy", None)
    if policy is None:
        policy = Policy.load(config, lists)
    reviews = ReviewQueue(service.redis, config.key_prefix, service.decisions,
                          service.add_labels, decision_ttl_seconds=config.decision_ttl_seconds,
                          max_age_seconds=config.review_max_age_seconds)
    app.extensions["fraud.lists"] = lists
    app.extensions["fraud.policy"] = policy
    app.extensions["fraud.reviews"] = reviews
    app.register_blueprint(bp)
    _refresh_on_scrape(app, reviews)


def _close_with(service: FraudService, lists: Lists) -> None:
    """Stop following the lists when the service closes (until the service owns them)."""
    close = service.close

    def close_all() -> None:
        close()
        lists.close()

    service.close = close_all  # type: ignore[method-assign]


def _refresh_on_scrape(app: Flask, reviews: ReviewQueue) -> None:
    """Wrap the platform's /metrics view: the review gauges are read from Redis when
    scraped (every replica reports the same queue), never on the request path."""
    endpoint = "metrics_endpoint"
    view = app.view_functions.get(endpoint)
    if view is None:
        log.warning("fraud reviews: no /metrics view to refresh the review gauges on")
        return

    def metrics_with_reviews() -> Any:
        try:
            reviews.update_metrics()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the rest regardless
            log.warning("fraud reviews: cannot count the queue for /metrics: %s", exc)
        return view()

    app.view_functions[endpoint] = metrics_with_reviews


def get_lists(app: Flask | None = None) -> Lists:
    return (app or current_app).extensions["fraud.lists"]  # type: ignore[no-any-return]


def get_policy(app: Flask | None = None) -> Policy:
    return (app or current_app).extensions["fraud.policy"]  # type: ignore[no-any-return]


def get_reviews(app: Flask | None = None) -> ReviewQueue:
    return (app or current_app).extensions["fraud.reviews"]  # type: ignore[no-any-return]


# -- lists -------------------------------------------------------------------------------

@bp.get("/v1/lists")
@requires("lists")
@operation("Every list with its live values", responses={200: AllLists}, tags=("lists",))
def lists_all() -> Any:
    return jsonify(get_lists().all())


@bp.put("/v1/lists/<name>/<value>")
@requires("lists")
@operation("Put a value on a list (201 new, 200 updated); every replica within a second",
           body=ListEntryBody, body_required=False, params=LIST_PARAMS,
           responses={200: ListChange, 201: ListChange}, tags=("lists",), errors=(404, 409))
def lists_put(name: str, value: str) -> Any:
    body = json_body() if request.get_data(cache=True) else None
    entry, created = get_lists().put(name, value, body)
    return jsonify({"list": name, **entry.to_dict(), "created": created}), 201 if created else 200


@bp.delete("/v1/lists/<name>/<value>")
@requires("lists")
@operation("Remove a value from a list", params=LIST_PARAMS, responses={200: ListChange},
           tags=("lists",), errors=(404,))
def lists_delete(name: str, value: str) -> Any:
    entry = get_lists().delete(name, value)
    return jsonify({"list": name, **entry.to_dict(), "deleted": True})


# -- rules -------------------------------------------------------------------------------

@bp.get("/v1/rules")
@requires("lists")
@operation("The rules in force", responses={200: Rules}, tags=("rules",))
def rules() -> Any:
    return jsonify(get_policy().describe())


# -- reviews -----------------------------------------------------------------------------

@bp.get("/v1/reviews")
@requires("review")
@operation("Review cases", params=REVIEW_PARAMS, responses={200: Reviews}, tags=("reviews",))
def reviews_list() -> Any:
    status = query_str("status", "open") or "open"
    if status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}, got {status!r}",
                         field="status")
    limit = query_int("limit", 50, 1, 1000)
    return jsonify(get_reviews().list(status, limit))


@bp.post("/v1/reviews/<transaction_id>")
@requires("review")
@operation("Close a review case with a verdict (it becomes the label)", body=Verdict,
           responses={200: ReviewClosed}, tags=("reviews",), errors=(404, 409))
def reviews_close(transaction_id: str) -> Any:
    return jsonify(get_reviews().close(transaction_id, json_body()))
