"""The monitoring console service: a live page at ``/`` and the JSON behind it under ``/api``.

``mlsuite serve console`` runs it like the other services (the shared HTTP conventions,
``/healthz``, ``/readyz``, ``/metrics``). It never imports an app: it reads their
``/metrics`` and ``/v1/model`` over HTTP (``Collector``), and the registry, rollouts,
experiments and drift reports from the data folder and Redis. Endpoints:

- ``GET /api/overview``: everything the page shows, in one document;
- ``GET /api/services``: per service up/down, headline figures and time series;
- ``GET /api/models``, ``/api/rollouts``, ``/api/experiments``, ``/api/fraud``;
- ``GET /api/drift/<service>``: the latest drift report of ``recommender`` or ``fraud``;
- ``GET /api/alerts``: what fires now, and the conditions evaluated.

A service or store that does not answer shows as such in the JSON, never as a 500.
``/openapi.json`` (served by every service app) documents each ``/api`` answer with its
type from ``mlplatform.monitoring.contract``; ``/docs`` renders it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template, send_from_directory
from flask.typing import ResponseReturnValue

from mlplatform.config import Settings, get_settings
from mlplatform.errors import NotFound
from mlplatform.http import add_readiness_check, create_service_app
from mlplatform.monitoring import contract, panels
from mlplatform.monitoring.alerts import CONDITIONS
from mlplatform.monitoring.collector import SERVICES, Collector
from mlplatform.openapi import operation

__all__ = ["create_app", "get_collector"]

bp = Blueprint("console", __name__, template_folder="templates")
STATIC = Path(__file__).parent / "static"
F = Callable[..., ResponseReturnValue]


def _open(view: F) -> F:
    """Open without an API key, like ``/metrics``: the console shows operational figures
    only, and a browser cannot send a bearer key when it opens a page."""
    try:
        from mlplatform.security import requires
    except ImportError:  # a platform without API keys: everything is open anyway
        return view
    return requires(None)(view)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None
               ) -> Flask:
    """The console app. ``test_config`` may set ``CONSOLE_INTERVAL`` (seconds between
    scrapes, default 2), ``CONSOLE_DRIFT_SECONDS`` (default 15) and ``CONSOLE_COLLECT``
    (False: no background loop; tests call ``get_collector(app).tick()``)."""
    settings = settings or get_settings()
    app = create_service_app("console", settings, test_config)
    collector = Collector(settings, app.extensions["mlsuite.redis"],
                          interval=float(app.config.get("CONSOLE_INTERVAL", 2.0)),
                          drift_seconds=float(app.config.get("CONSOLE_DRIFT_SECONDS", 15.0)))
    app.extensions["mlsuite.console"] = collector
    app.register_blueprint(bp)
    add_readiness_check(app, "collector", lambda: f"{collector.ticks} scrape rounds")
    if app.config.get("CONSOLE_COLLECT", True):
        collector.start()
    return app


def get_collector(app: Flask | None = None) -> Collector:
    return (app or current_app).extensions["mlsuite.console"]  # type: ignore[no-any-return]


@bp.get("/assets/<path:filename>")
@_open
def asset(filename: str) -> ResponseReturnValue:
    """uPlot, the page's script and styles, from the package (never from the internet)."""
    return send_from_directory(STATIC, filename, max_age=300)


@bp.get("/")
@_open
def page() -> str:
    c = get_collector()
    return render_template("console.html", services=c.services, interval=max(3.0, c.interval))


@bp.get("/api/overview")
@_open
@operation("Everything the page shows, in one document",
           responses={200: contract.Overview}, tags=("console",))
def overview() -> ResponseReturnValue:
    c = get_collector()
    return jsonify({
        "at": panels.now(), "interval": c.interval, "ticks": c.ticks,
        "services": panels.services(c), "redis": c.redis, "models": panels.models(c),
        "rollouts": panels.rollouts(c), "experiments": panels.experiments(c),
        "fraud": panels.fraud(c),
        "drift": {s: panels.drift_summary(c.drift.get(s)) for s in c.services},
        "alerts": panels.alerts(c),
    })


@bp.get("/api/services")
@_open
@operation("Per service up/down, headline figures and time series; Redis",
           responses={200: contract.Services}, tags=("console",))
def services() -> ResponseReturnValue:
    c = get_collector()
    return jsonify({"services": panels.services(c), "redis": c.redis})


@bp.get("/api/models")
@_open
@operation("What each service serves, and every registered model",
           responses={200: contract.ModelsAnswer}, tags=("console",))
def models() -> ResponseReturnValue:
    return jsonify({"models": panels.models(get_collector())})


@bp.get("/api/rollouts")
@_open
@operation("Every model's newest rollout with its transitions",
           responses={200: contract.RolloutsAnswer}, tags=("console",))
def rollouts() -> ResponseReturnValue:
    return jsonify({"rollouts": panels.rollouts(get_collector())})


@bp.get("/api/experiments")
@_open
@operation("The recommender's experiments and attributed conversions",
           responses={200: contract.Experiments}, tags=("console",))
def experiments() -> ResponseReturnValue:
    return jsonify(panels.experiments(get_collector()))


@bp.get("/api/fraud")
@_open
@operation("Fraud scores, decisions, online quality, label lag, reviews and amounts",
           responses={200: contract.Fraud}, tags=("console",))
def fraud() -> ResponseReturnValue:
    return jsonify(panels.fraud(get_collector()))


@bp.get("/api/drift/<service>")
@_open
@operation("A service's latest drift report", responses={200: contract.DriftReport},
           params=contract.DRIFT_PARAMS, tags=("console",), errors=(404,))
def drift(service: str) -> ResponseReturnValue:
    c = get_collector()
    if service not in SERVICES:
        raise NotFound(f"service must be one of {', '.join(SERVICES)}, got {service!r}",
                       field="service")
    report = c.drift.get(service)
    if report is None:
        return jsonify({"available": False, "reason": "no drift report computed yet",
                        "service": service})
    return jsonify({"service": service, **report})


@bp.get("/api/alerts")
@_open
@operation("What fires now, and every condition evaluated",
           responses={200: contract.AlertsAnswer}, tags=("console",))
def alerts() -> ResponseReturnValue:
    c = get_collector()
    return jsonify({**panels.alerts(c),
                    "conditions": [{"name": k.name, "metric": k.metric, "op": k.op,
                                    "threshold": k.threshold, "severity": k.severity,
                                    "expr": k.expr} for k in CONDITIONS]})
