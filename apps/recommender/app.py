"""The recommender service's app factory.

``create_app`` builds on ``mlplatform.http.create_service_app`` (errors, request ids,
metrics, /healthz, /readyz) and attaches the engine. Nothing loads a model or opens a
connection here: the model loads on the first request (or the first /readyz, which the
servers' start-up waits for) and then follows its registry alias in the background.

Options (``app.config``, overridable with ``test_config``):

=================================== ==============================================
RECOMMENDER_MODEL_NAME              registry name (``recommender``)
RECOMMENDER_MODEL_ALIAS             alias served (``production``)
RECOMMENDER_FEAST                   read entity features from Feast (True)
RECOMMENDER_ITEM_FEATURES_SECONDS   refresh period of item stock/category (2.0)
RECOMMENDER_SEGMENT_CACHE_SECONDS   how long a user's segment is cached (300)
RECOMMENDER_HISTORY_EVENTS          live events kept per user (200)
RECOMMENDER_HISTORY_TTL_SECONDS     a user's live history expires after (30 days)
RECOMMENDER_STREAM_MAXLEN           approximate length cap of the event stream (1M)
RECOMMENDER_MAX_BATCH_USERS         users per batch request (1000)
RECOMMENDER_MAX_EVENTS_PER_REQUEST  events per POST /v1/events (1000)
RECOMMENDER_EXPERIMENT              an ``Experiment`` to use instead of the file's
=================================== ==============================================
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from mlplatform.assignment import Experiment, load_experiments
from mlplatform.config import Settings, get_settings
from mlplatform.http import add_readiness_check, create_service_app
from mlplatform.registry import ModelRegistry
from recommender.catalogue import FeatureReader, ItemFeatures, SegmentCache
from recommender.engine import SERVICE, Engine, load_serving_model
from recommender.history import HistoryStore
from recommender.models import limit_blas_threads
from recommender.views import bp

__all__ = ["EXPERIMENT", "MODEL_NAME", "create_app"]

log = logging.getLogger(__name__)

MODEL_NAME = "recommender"
EXPERIMENT = "recommender_model"
_UNSET = object()

DEFAULTS: dict[str, Any] = {
    "RECOMMENDER_MODEL_NAME": MODEL_NAME,
    "RECOMMENDER_MODEL_ALIAS": "production",
    "RECOMMENDER_FEAST": True,
    "RECOMMENDER_ITEM_FEATURES_SECONDS": 2.0,
    "RECOMMENDER_SEGMENT_CACHE_SECONDS": 300.0,
    "RECOMMENDER_HISTORY_EVENTS": 200,
    "RECOMMENDER_HISTORY_TTL_SECONDS": 30 * 86_400,
    "RECOMMENDER_STREAM_MAXLEN": 1_000_000,
    "RECOMMENDER_MAX_BATCH_USERS": 1000,
    "RECOMMENDER_MAX_EVENTS_PER_REQUEST": 1000,
}


def create_app(settings: Settings | None = None,
               test_config: dict[str, Any] | None = None) -> Flask:
    """The recommender Flask app for ``settings`` (default: the process's settings)."""
    settings = settings or get_settings()
    app = create_service_app(SERVICE, settings, {**DEFAULTS, **(test_config or {})})
    # One BLAS thread per worker process: the server runs several workers (see ARCHITECTURE).
    limit_blas_threads()
    cfg = app.config

    reader = _feature_reader(settings) if cfg["RECOMMENDER_FEAST"] else None
    item_features = ItemFeatures(reader, ttl=float(cfg["RECOMMENDER_ITEM_FEATURES_SECONDS"]))
    registry = ModelRegistry(settings.data_dir / "models")
    live = registry.live(cfg["RECOMMENDER_MODEL_NAME"], cfg["RECOMMENDER_MODEL_ALIAS"],
                         lambda version: load_serving_model(version, item_features),
                         poll_seconds=settings.model_poll_seconds)
    redis_client = app.extensions.get("mlsuite.redis")
    history = None if redis_client is None else HistoryStore(
        redis_client, max_events=int(cfg["RECOMMENDER_HISTORY_EVENTS"]),
        ttl_seconds=int(cfg["RECOMMENDER_HISTORY_TTL_SECONDS"]),
        stream_maxlen=int(cfg["RECOMMENDER_STREAM_MAXLEN"]))
    experiment = cfg.get("RECOMMENDER_EXPERIMENT", _UNSET)
    if experiment is _UNSET:
        experiment = load_experiments(settings.experiments_file).get(EXPERIMENT)
        if experiment is None:
            log.warning("no [%s] experiment configured: every user gets the first variant",
                        EXPERIMENT)
    engine = Engine(live, history, item_features,
                    SegmentCache(reader, ttl=float(cfg["RECOMMENDER_SEGMENT_CACHE_SECONDS"])),
                    experiment if isinstance(experiment, Experiment) else None)
    app.extensions["recommender.engine"] = engine
    app.register_blueprint(bp)

    add_readiness_check(app, "model", lambda: engine.current().version.label)
    add_readiness_check(app, "item_features", lambda: engine.current().items.source)
    return app


def _feature_reader(settings: Settings) -> FeatureReader | None:
    """The Feast adapter; None (and degraded responses) when Feast cannot be set up."""
    try:
        from mlplatform.features import FeatureStoreAdapter

        return FeatureStoreAdapter.from_settings(settings)
    except Exception as exc:  # noqa: BLE001 - serve without Feast rather than not at all
        log.warning("feast unavailable, serving without entity features: %s", exc)
        return None
