"""The recommender service's app factory.

``create_app`` builds on ``mlplatform.http.create_service_app`` (errors, request ids,
metrics, /healthz, /readyz) and attaches the engine. The servers call it in each worker
process before it takes traffic: it loads the model (``/readyz`` names the version) and
starts following the recommender worker's snapshots (catalogue, live popularity, segment
overrides; ``recommender.live``). After that, a request does no loading and no refresh
work: the model follows its registry alias and the snapshots their keys, in background
threads. Nothing happens at import time.

Options (``app.config``, overridable with ``test_config``):

=================================== ==============================================
RECOMMENDER_MODEL_NAME              registry name (``recommender``)
RECOMMENDER_MODEL_ALIAS             alias served (``production``)
RECOMMENDER_FEAST                   use Feast's entity features: the catalogue snapshot
                                    and users' segments (True)
RECOMMENDER_SNAPSHOT_POLL_SECONDS   how often snapshots are checked for a new version (0.25)
RECOMMENDER_SEGMENT_CACHE_SECONDS   how long a user's segment is cached (300; keep it
                                    under updates.OVERRIDE_SECONDS)
RECOMMENDER_HISTORY_EVENTS          live events kept per user (200)
RECOMMENDER_HISTORY_TTL_SECONDS     a user's live history expires after (30 days)
RECOMMENDER_MAX_BATCH_USERS         users per batch request (1000)
RECOMMENDER_MAX_EVENTS_PER_REQUEST  events per POST /v1/events (1000)
RECOMMENDER_EXPERIMENT              an ``Experiment`` to use instead of the file's
=================================== ==============================================

With Redis and an experiment, every served list is recorded for the A/B analysis
(``recommender.attribution.ExposureLog``, one pipelined write per request) and
``GET /v1/experiments/<name>`` serves the reports of the configured experiments.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from mlplatform import lifecycle
from mlplatform.assignment import Experiment, load_experiments
from mlplatform.config import Settings, get_settings
from mlplatform.errors import ConfigError
from mlplatform.experiments import ExperimentDefinition, load_definitions
from mlplatform.http import add_readiness_check, create_service_app
from mlplatform.registry import ModelRegistry
from mlplatform.security.pii import tokeniser
from recommender.attribution import ExposureLog
from recommender.catalogue import FeatureReader, SegmentCache
from recommender.engine import SERVICE, Engine
from recommender.history import HistoryStore
from recommender.live import LiveState
from recommender.models import limit_blas_threads
from recommender.updates import UpdateQueue
from recommender.views import EXPERIMENTS, EXPOSURES, TOKENS, bp

__all__ = ["EXPERIMENT", "MODEL_NAME", "create_app"]

log = logging.getLogger(__name__)

MODEL_NAME = "recommender"
EXPERIMENT = "recommender_model"
_UNSET = object()

DEFAULTS: dict[str, Any] = {
    "RECOMMENDER_MODEL_NAME": MODEL_NAME,
    "RECOMMENDER_MODEL_ALIAS": "production",
    "RECOMMENDER_FEAST": True,
    "RECOMMENDER_SNAPSHOT_POLL_SECONDS": 0.25,
    "RECOMMENDER_SEGMENT_CACHE_SECONDS": 300.0,
    "RECOMMENDER_HISTORY_EVENTS": 200,
    "RECOMMENDER_HISTORY_TTL_SECONDS": 30 * 86_400,
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

    feast = bool(cfg["RECOMMENDER_FEAST"])
    redis_client = app.extensions.get("mlsuite.redis")
    history = None if redis_client is None else HistoryStore(
        redis_client, max_events=int(cfg["RECOMMENDER_HISTORY_EVENTS"]),
        ttl_seconds=int(cfg["RECOMMENDER_HISTORY_TTL_SECONDS"]))
    experiment = cfg.get("RECOMMENDER_EXPERIMENT", _UNSET)
    if experiment is _UNSET:
        experiment = load_experiments(settings.experiments_file).get(EXPERIMENT)
        if experiment is None:
            log.warning("no [%s] experiment configured: every user gets the first variant",
                        EXPERIMENT)
    state = LiveState(redis_client, catalogue=feast,
                      poll_seconds=float(cfg["RECOMMENDER_SNAPSHOT_POLL_SECONDS"]))
    # The adapter reads users' segments only (a few entities per cold-start request);
    # the catalogue comes from the worker's snapshot.
    segments = SegmentCache(_feature_reader(settings) if feast else None,
                            ttl=float(cfg["RECOMMENDER_SEGMENT_CACHE_SECONDS"]),
                            overrides=state.segment_overrides)
    engine = Engine(ModelRegistry(settings.data_dir / "models"),
                    cfg["RECOMMENDER_MODEL_NAME"], cfg["RECOMMENDER_MODEL_ALIAS"],
                    history=history,
                    updates=None if redis_client is None else UpdateQueue(redis_client),
                    state=state, segments=segments,
                    experiment=experiment if isinstance(experiment, Experiment) else None,
                    poll_seconds=settings.model_poll_seconds, rollouts=redis_client,
                    rollout_poll_seconds=float(cfg["RECOMMENDER_SNAPSHOT_POLL_SECONDS"]))
    app.extensions["recommender.engine"] = engine
    # User ids become tokens in the views, before the engine, Redis or a log sees them.
    app.extensions[TOKENS] = tokeniser(settings)
    definitions = _experiment_definitions(settings, engine.experiment)
    app.extensions[EXPERIMENTS] = definitions
    if redis_client is not None and engine.experiment is not None:
        app.extensions[EXPOSURES] = ExposureLog(redis_client,
                                                definitions[engine.experiment.name])
    app.register_blueprint(bp)
    engine.start()  # before the server takes traffic: no request ever loads the model

    add_readiness_check(app, "model", lambda: engine.current().version.label)
    add_readiness_check(app, "item_features", lambda: _items_detail(engine))
    lifecycle.settle_server_worker()  # last: what start-up built stays put
    return app


def _experiment_definitions(settings: Settings, served: Experiment | None
                            ) -> dict[str, ExperimentDefinition]:
    """The experiments to report on: the file's, with the served one as it is served
    (an override keeps the file's control, window and limits where they still apply)."""
    try:
        definitions = load_definitions(settings.experiments_file)
    except ConfigError as exc:
        log.warning("experiment definitions unavailable: %s", exc)
        definitions = {}
    if served is not None:
        known = definitions.get(served.name)
        if known is None or known.experiment != served:
            table: dict[str, Any] = {}
            if known is not None:
                table = {"attribution_window": known.window_seconds,
                         "max_error_rate": known.max_error_rate,
                         "max_p99_ms": known.max_p99_ms}
                if known.control in served.variants:
                    table["control"] = known.control
            definitions[served.name] = ExperimentDefinition.of(served, table)
    return definitions


def _items_detail(engine: Engine) -> str:
    state = engine.current().items
    seq = engine.state.catalogue.seq if engine.state.catalogue is not None else 0
    return f"{state.source} (catalogue snapshot {seq})" if seq else state.source


def _feature_reader(settings: Settings) -> FeatureReader | None:
    """The Feast adapter; None (and degraded responses) when Feast cannot be set up."""
    try:
        from mlplatform.features import FeatureStoreAdapter

        return FeatureStoreAdapter.from_settings(settings)
    except Exception as exc:  # noqa: BLE001 - serve without Feast rather than not at all
        log.warning("feast unavailable, serving without entity features: %s", exc)
        return None
