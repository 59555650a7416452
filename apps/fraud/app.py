"""The fraud scoring service (Flask): views parse, call ``FraudService``, serialise.

Endpoints:

- ``POST /v1/transactions/score``: one transaction -> score, decision, reasons, model.
- ``POST /v1/transactions/score/batch``: ``{"transactions": [...]}`` -> ``{"results": [...]}``;
  every item is validated before anything is scored (one bad item applies nothing).
- ``POST /v1/labels``: one label, a list, or ``{"labels": [...]}`` -> 202
  ``{"accepted", "ignored", "corrections", "offsets"}`` (a repeated label is ignored).
- ``GET /v1/model``: version, thresholds, online metrics, drift state
  (``?sync=true`` first waits until every label posted so far is learned by the worker).
- ``PUT /v1/cards/<card_id>``, ``PUT /v1/merchants/<merchant_id>``: a whole profile ->
  202 ``{"queued": <stream id>, ...}`` once queued for the worker's push to Feast.
- Lists, rules and the review queue (``fraud.ops_views``): ``GET /v1/lists``,
  ``PUT|DELETE /v1/lists/<list>/<value>``, ``GET /v1/rules``, ``GET /v1/reviews``,
  ``POST /v1/reviews/<transaction_id>``.

Card and device ids become keyed tokens as a body is parsed (``fraud.pii``): nothing
after the view sees them as sent. Every body is decoded as its type (``fraud.contract``).

The app loads what requests need (model, profiles) in ``create_app``, before serving.

Plus the platform's ``/healthz``, ``/readyz`` (Redis, model, Feast) and ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from fraud.config import FraudConfig
from fraud.contract import (
    MODEL_PARAMS,
    BatchScore,
    CardProfile,
    LabelBatch,
    LabelBody,
    LabelsAccepted,
    MerchantProfile,
    ModelInfo,
    ProfileQueued,
    Score,
)
from fraud.labels import parse_labels
from fraud.ops_views import init_app as init_ops
from fraud.profiles import CachedProfiles, FeastProfiles, ProfileSource
from fraud.schema import batch_type, decode_transaction, decode_transactions, transaction_type
from fraud.service import FraudService
from mlplatform import lifecycle
from mlplatform.config import Settings, get_settings
from mlplatform.errors import BadRequest
from mlplatform.http import (
    add_readiness_check,
    body_bytes,
    create_service_app,
    get_redis,
    json_body,
    query_bool,
)
from mlplatform.openapi import Dynamic, operation
from mlplatform.security import may, requires

__all__ = ["create_app", "get_service"]

bp = Blueprint("fraud", __name__)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None
               ) -> Flask:
    """The fraud service app. ``test_config`` may hold ``FRAUD`` (dict of ``FraudConfig``
    overrides) and ``FRAUD_PROFILES`` (a ``ProfileSource`` instead of Feast)."""
    settings = settings or get_settings()
    app = create_service_app("fraud", settings, test_config)
    config = FraudConfig.from_env()
    overrides = app.config.get("FRAUD") or {}
    if overrides:
        config = config.with_(**overrides)
    source: ProfileSource | None = app.config.get("FRAUD_PROFILES")
    feast: FeastProfiles | None = None
    if source is None:
        feast = FeastProfiles(_feast_factory(settings))
        source = feast
    profiles = CachedProfiles(source, config.profile_cache_seconds, config.profile_cache_size)
    service = FraudService(settings, config, get_redis(app), profiles)
    service.start()
    app.extensions["fraud"] = service
    add_readiness_check(app, "model", lambda: _model_readiness(service))
    if feast is not None:
        add_readiness_check(app, "feast", feast.ping)
    app.register_blueprint(bp)
    init_ops(app, service)  # lists, rules policy, review queue: app.extensions["fraud.*"]
    lifecycle.settle_server_worker()  # last: what start-up built stays put
    return app


def _feast_factory(settings: Settings) -> Any:
    def make() -> Any:
        from mlplatform.features import FeatureStoreAdapter

        return FeatureStoreAdapter.from_settings(settings)

    return make


def _model_readiness(service: FraudService) -> str:
    state = service.model.state()
    return f"{state.label}, {state.labels} labels learned (offset {state.offset})"


def get_service(app: Flask | None = None) -> FraudService:
    return (app or current_app).extensions["fraud"]  # type: ignore[no-any-return]


# The transaction types carry the deployment's extra fields and batch limit.
_TRANSACTION = Dynamic(lambda app: transaction_type(tuple(get_service(app).config.extra_fields)))
_BATCH = Dynamic(lambda app: batch_type(tuple(get_service(app).config.extra_fields),
                                        get_service(app).config.max_batch).__args__)


@bp.post("/v1/transactions/score")
@requires("score")
@operation("Score one transaction", body=_TRANSACTION, responses={200: Score},
           tags=("scoring",))
def score() -> Any:
    service = get_service()
    config = service.config
    try:
        tx = decode_transaction(body_bytes(), extra_fields=config.extra_fields,
                                max_amount=config.max_amount, max_amounts=config.max_amounts,
                                pii=service.pii)
    except BadRequest as exc:
        if exc.field == "transactions":
            raise BadRequest("transactions belongs on /v1/transactions/score/batch; this "
                             "endpoint takes one transaction object", field="transactions"
                             ) from None
        raise
    [decision] = service.score([tx])
    return jsonify(decision.to_response())


@bp.post("/v1/transactions/score/batch")
@requires("score")
@operation("Score a batch of transactions (all checked before any is scored)", body=_BATCH,
           responses={200: BatchScore}, tags=("scoring",))
def score_batch() -> Any:
    service = get_service()
    config = service.config
    txs = decode_transactions(body_bytes(), extra_fields=config.extra_fields,
                              max_items=config.max_batch, max_amount=config.max_amount,
                              max_amounts=config.max_amounts, pii=service.pii)
    decisions = service.score(txs)
    state = service.model.state()
    return jsonify({"results": [d.to_response() for d in decisions],
                    "model_version": state.label, "count": len(decisions)})


@bp.post("/v1/labels")
@requires("label")
@operation("Record labels (one, a list, or {labels: [...]}); repeats are ignored",
           body=(LabelBody, LabelBatch, list[LabelBody]), responses={202: LabelsAccepted},
           tags=("labels",), errors=(404,))
def labels() -> Any:
    service = get_service()
    body = json_body()
    parsed = parse_labels(body, max_items=service.config.max_batch)
    # Repeats of a transaction's last label are ignored; a changed label is a correction.
    done = service.record_labels(parsed)
    return jsonify({"accepted": len(done.offsets), "ignored": done.ignored,
                    "corrections": done.corrections, "offsets": done.offsets}), 202


@bp.get("/v1/model")
@requires("score")
@operation("The model in service", params=MODEL_PARAMS, responses={200: ModelInfo},
           tags=("model",))
def model() -> Any:
    service = get_service()
    if query_bool("sync", False):
        service.model.sync()
    info = service.model_info()
    if not may("admin"):  # thresholds tell a fraudster how high a score may go: operators only
        del info["thresholds"]
    return jsonify(info)


@bp.put("/v1/cards/<card_id>")
@requires("admin")
@operation("Replace a card's profile (queued for the worker's push to Feast)",
           body=CardProfile, responses={202: ProfileQueued}, tags=("profiles",))
def put_card(card_id: str) -> Any:
    return jsonify(get_service().put_profile("card", card_id, json_body())), 202


@bp.put("/v1/merchants/<merchant_id>")
@requires("admin")
@operation("Replace a merchant's profile (queued for the worker's push to Feast)",
           body=MerchantProfile, responses={202: ProfileQueued}, tags=("profiles",))
def put_merchant(merchant_id: str) -> Any:
    return jsonify(get_service().put_profile("merchant", merchant_id, json_body())), 202
