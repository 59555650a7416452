"""HTTP conventions both services share: the app factory base, JSON errors, request ids,
health and readiness, metrics, request limits, and request parsing that names bad fields.

Views parse with the helpers here and raise ``mlplatform.errors`` exceptions; this module
turns every error, expected or not, into one JSON shape::

    {"error": {"code": "invalid_field", "message": "n must be ...", "field": "n",
               "request_id": "..."}}

No response ever carries a traceback; unexpected errors are logged with the request id.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from mlplatform import jsonio, lifecycle, metrics, security
from mlplatform.config import Settings, get_settings
from mlplatform.errors import APIError, BadRequest, Unavailable
from mlplatform.jsonio import MsgspecProvider
from mlplatform.redisdb import connect, ping

__all__ = [
    "create_service_app",
    "add_readiness_check",
    "get_redis",
    "get_settings_of",
    "json_body",
    "query_int",
    "query_bool",
    "query_str",
    "check_id",
    "request_id",
    "ID_PATTERN",
]

ReadinessCheck = Callable[[], "str | None"]
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def create_service_app(name: str, settings: Settings | None = None,
                       test_config: dict[str, Any] | None = None) -> Flask:
    """A Flask app with mlsuite's conventions attached; the service adds its blueprints."""
    # Servers create the app in each request worker: from here on it dies with its master.
    lifecycle.guard_server_worker()
    settings = settings or get_settings()
    app = Flask(name)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.json = MsgspecProvider(app)
    if test_config:
        app.config.update(test_config)
    app.extensions["mlsuite.service"] = name
    app.extensions["mlsuite.settings"] = settings
    app.extensions["mlsuite.redis"] = connect(settings.redis_url) if settings.redis_url else None
    app.extensions["mlsuite.readiness"] = {}
    app.logger.name = f"mlsuite.{name}"

    _init_request_hooks(app, name)
    _init_error_handlers(app)
    _init_ops_routes(app, name)
    security.init_app(app, settings, app.extensions["mlsuite.redis"])
    if settings.redis_url:
        add_readiness_check(app, "redis", lambda: ping(get_redis(app)))
    return app


def add_readiness_check(app: Flask, name: str, check: ReadinessCheck) -> None:
    """Register a check for /readyz: it raises (or returns a string) when not ready."""
    app.extensions["mlsuite.readiness"][name] = check


def get_settings_of(app: Flask | None = None) -> Settings:
    return (app or current_app).extensions["mlsuite.settings"]  # type: ignore[no-any-return]


def get_redis(app: Flask | None = None) -> redis.Redis:
    """The service's Redis client; ``Unavailable`` when the service runs without one."""
    client = (app or current_app).extensions.get("mlsuite.redis")
    if client is None:
        raise Unavailable("redis is not configured: set MLSUITE_REDIS_URL", dependency="redis")
    return client  # type: ignore[no-any-return]


# -- request parsing ---------------------------------------------------------------------

def json_body() -> Any:
    """The request's JSON document, or BadRequest(field="body") saying what is wrong."""
    data = request.get_data(cache=True)
    if not data:
        raise BadRequest("request body must be a JSON document, got an empty body", field="body")
    try:
        return jsonio.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body must be valid JSON: {exc}", field="body") from None


def query_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw!r}", field=name)
    return value


def query_bool(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, got {raw!r}", field=name)


def query_str(name: str, default: str | None = None) -> str | None:
    raw = request.args.get(name)
    return default if raw is None or raw == "" else raw


def check_id(value: Any, field: str) -> str:
    """``value`` as an id (letters, digits, ``_.:@-``, at most 128), or BadRequest naming ``field``.

    >>> check_id("u000123", "user_id")
    'u000123'
    >>> check_id(42, "user_id")
    '42'
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{field} must be a string id, got {type(value).__name__}", field=field)
    text = str(value)
    if not ID_PATTERN.match(text):
        raise BadRequest(
            f"{field} must be 1-128 characters of letters, digits and _.:@- "
            f"starting with a letter or digit, got {text[:64]!r}",
            field=field,
        )
    return text


# -- hooks, errors, ops routes -----------------------------------------------------------

def _init_request_hooks(app: Flask, service: str) -> None:
    # Metric children cached per (route, method, status): prometheus-client's labels()
    # costs more than the observation itself, and this runs on every request.
    timers: dict[tuple[str, str], Any] = {}
    counters: dict[tuple[str, str, int], Any] = {}

    @app.before_request
    def _start() -> None:
        environ = request.environ
        rid = environ.get("HTTP_X_REQUEST_ID", "")
        environ["mlsuite.request_id"] = rid if rid and _REQUEST_ID.match(rid) else os.urandom(16).hex()
        environ["mlsuite.started"] = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        started = environ.get("mlsuite.started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        response.headers["X-Request-ID"] = environ.get("mlsuite.request_id", "")
        rule = req.url_rule.rule if req.url_rule is not None else "<unmatched>"
        method, status = req.method, response.status_code
        timer = timers.get((rule, method))
        if timer is None:
            timer = timers[(rule, method)] = metrics.REQUEST_SECONDS.labels(service, rule, method)
        timer.observe(elapsed)
        counter = counters.get((rule, method, status))
        if counter is None:
            counter = counters[(rule, method, status)] = metrics.REQUESTS.labels(
                service, rule, method, str(status))
        counter.inc()
        if status >= 400:
            code = getattr(response, "mlsuite_error_code", f"http_{status}")
            metrics.ERRORS.labels(service, rule, code).inc()
        return response


def request_id() -> str:
    """The current request's id (the caller's X-Request-ID, or a new one)."""
    return request.environ.get("mlsuite.request_id", "")  # type: ignore[no-any-return]


def _error_response(status: int, body: dict[str, Any]) -> Response:
    body["request_id"] = request_id()
    response = jsonify({"error": body})
    response.status_code = status
    response.mlsuite_error_code = body.get("code", "")  # type: ignore[attr-defined]
    return response


def _init_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        if exc.status >= 500:
            app.logger.warning("request %s: %s", request_id(), exc.message)
        response = _error_response(exc.status, exc.to_dict())
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body exceeds the limit of {limit} bytes"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no endpoint at {request.path}"
        response = _error_response(status, {"code": code, "message": message})
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError) -> Response:
        app.logger.warning("request %s: redis error: %s", request_id(), exc)
        response = _error_response(503, {
            "code": "unavailable",
            "message": f"redis is unavailable: {type(exc).__name__}",
            "details": {"dependency": "redis", "retryable": True},
        })
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = request_id()
        app.logger.exception("request %s failed", rid)
        return _error_response(500, {
            "code": "internal_error",
            "message": f"internal error; quote request id {rid} when reporting it",
        })


def _init_ops_routes(app: Flask, service: str) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "alive", "service": service, "pid": os.getpid()})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        checks: dict[str, dict[str, Any]] = {}
        ready = True
        for name, check in app.extensions["mlsuite.readiness"].items():
            try:
                detail = check()
                checks[name] = {"ok": True, "detail": detail or "ok"}
            except Exception as exc:  # a failed check is a report, not a crash
                ready = False
                message = exc.message if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"
                checks[name] = {"ok": False, "detail": message}
        # "instance": which server start answers, so a supervisor never takes a server
        # left over on the port for the one it just started.
        body = {"status": "ready" if ready else "not_ready", "service": service,
                "instance": lifecycle.instance(), "checks": checks}
        return jsonify(body), 200 if ready else 503

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, content_type=content_type)
