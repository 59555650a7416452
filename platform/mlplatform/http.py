"""HTTP conventions both services share: the app factory base, JSON errors, request ids,
health and readiness, metrics, request limits, and request parsing that names bad fields.

Views parse with the helpers here and raise ``mlplatform.errors`` exceptions; this module
turns every error, expected or not, into one JSON shape::

    {"error": {"code": "invalid_field", "message": "n must be ...", "field": "n",
               "request_id": "..."}}

No response ever carries a traceback; unexpected errors are logged with the request id.
A dependency that fails (Redis, Feast) is named in the body and in ``/readyz``
(``"dependency": "redis"``), never described by its driver's message, which carries
hosts, ports and socket paths: that goes to the log. ``/readyz`` answers 503 only when
the replica itself cannot serve (no model); a shared dependency that is down makes it
``"degraded"`` (200, ``"degraded": ["redis"]``): every replica sees the same outage, and
taking them all out of the gateway would turn the answers they can still give
(recommendations, fail-open scores, a 503 naming the dependency) into the gateway's
bare 503.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from mlplatform import jsonio, lifecycle, metrics, openapi, security
from mlplatform.config import Settings, get_settings
from mlplatform.errors import APIError, BadRequest, MLSuiteError, Unavailable
from mlplatform.jsonio import MsgspecProvider
from mlplatform.redisdb import connect, ping

__all__ = [
    "create_service_app",
    "add_readiness_check",
    "public_message",
    "get_redis",
    "get_settings_of",
    "body_bytes",
    "json_body",
    "typed_body",
    "query_int",
    "query_bool",
    "query_str",
    "check_id",
    "request_id",
    "ID_PATTERN",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
ReadinessCheck = Callable[[], "str | None"]
# Readiness checks of shared dependencies: when one fails the replica is degraded, not
# unready (see the module docstring).
DEPENDENCIES = ("redis", "feast")
# An oversized body is read and thrown away before its 413 is sent, up to this much
# (and this long): a server that answers and closes with unread bytes in its socket makes
# the kernel reset the connection, and a client that sends its whole body first then sees
# a reset, not the 413. Past the bound the 413 goes out with "Connection: close".
DRAIN_MIN_BYTES = 8 * 1024 * 1024
DRAIN_FACTOR = 8  # times the limit, when that is more than DRAIN_MIN_BYTES
DRAIN_SECONDS = 5.0
_DRAIN_CHUNK = 64 * 1024
# Errors whose text describes a connection (host, port, socket path, file): the client
# gets the dependency's name, the log gets the text.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, sqlite3.Error)
ID_PATTERN = re.compile(openapi.ID_REGEX)
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
    openapi.init_app(app, title=f"mlsuite {name}", version=_version(),
                     description=f"The {name} service of mlsuite. Errors have one shape "
                                 "(ErrorResponse); `field` names the bad input.")
    if settings.redis_url:
        add_readiness_check(app, "redis", lambda: ping(get_redis(app)))
    return app


def add_readiness_check(app: Flask, name: str, check: ReadinessCheck) -> None:
    """Register a check for /readyz: it raises when not ready (or returns a detail).

    A check named after a shared dependency (``DEPENDENCIES``: redis, feast) that fails
    makes the replica degraded (200); any other failing check makes it unready (503)."""
    app.extensions["mlsuite.readiness"][name] = check


def public_message(exc: BaseException) -> str:
    """What a client may read of ``exc``: its message, unless it came from a driver's
    error (hosts, ports, paths: logged instead), then only the dependency's name.

    >>> public_message(Unavailable("redis is unreachable: Error 111 connecting to "
    ...                            "10.0.0.5:6379", dependency="redis"))
    'redis is unreachable: Error 111 connecting to 10.0.0.5:6379'
    >>> try:
    ...     try:
    ...         raise ConnectionRefusedError("10.0.0.5:6379")
    ...     except OSError as e:
    ...         raise Unavailable(f"redis is unreachable: {e}", dependency="redis") from e
    ... except Unavailable as u:
    ...     public_message(u)
    'redis is unavailable'
    >>> public_message(RuntimeError("no production model"))
    'RuntimeError: no production model'
    >>> public_message(redis.ConnectionError("Error 2 connecting to /run/redis.sock"))
    'redis is unavailable'
    """
    if isinstance(exc, Unavailable):
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, MLSuiteError):
            return f"{exc.dependency} is unavailable"
        return exc.message
    if isinstance(exc, APIError):
        return exc.message
    if isinstance(exc, redis.RedisError):
        return "redis is unavailable"
    if isinstance(exc, _DRIVER_ERRORS):
        return f"{type(exc).__name__} (details in the service log)"
    return f"{type(exc).__name__}: {exc}"


def get_settings_of(app: Flask | None = None) -> Settings:
    return (app or current_app).extensions["mlsuite.settings"]  # type: ignore[no-any-return]


def get_redis(app: Flask | None = None) -> redis.Redis:
    """The service's Redis client; ``Unavailable`` when the service runs without one."""
    client = (app or current_app).extensions.get("mlsuite.redis")
    if client is None:
        raise Unavailable("redis is not configured: set MLSUITE_REDIS_URL", dependency="redis")
    return client  # type: ignore[no-any-return]


# -- request parsing ---------------------------------------------------------------------

def body_bytes() -> bytes:
    """The request's body, or BadRequest(field="body") when it is empty.

    A body of declared length (within the limit: the request hook refused larger) is one
    read of the server's input, left behind as a buffer for any later reader. Werkzeug's
    ``get_data`` reads through a limited stream in chunks until it sees the end: under
    granian that cost about 60 us of machine CPU per request (``mlsuite bench``)."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    length = req.content_length
    if length is not None and "stream" not in req.__dict__:  # nothing read it yet
        environ = req.environ
        data = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(data)
    else:
        data = req.get_data(cache=True)
    if not data:
        raise BadRequest("request body must be a JSON document, got an empty body", field="body")
    return data


def json_body() -> Any:
    """The request's JSON document, or BadRequest(field="body") saying what is wrong."""
    data = body_bytes()
    try:
        return jsonio.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body must be valid JSON: {exc}", field="body") from None


def typed_body(type_: type[T] | Any, *, root: str = "") -> T:
    """The request's JSON document as ``type_`` (msgspec, see ``mlplatform.openapi``), or
    BadRequest naming the bad field (``root[3].amount`` for a top-level list)."""
    return openapi.decode(body_bytes(), type_, root=root)


def _version() -> str:
    try:
        return importlib.metadata.version("mlsuite")
    except importlib.metadata.PackageNotFoundError:
        return "0"


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
            f"{field} must be {openapi.ID_RULE}, got {text[:64]!r}",
            field=field,
        )
    return text


# -- hooks, errors, ops routes -----------------------------------------------------------

def _init_request_hooks(app: Flask, service: str) -> None:
    # Metric children cached per (route, method, status): prometheus-client's labels()
    # costs more than the observation itself, and this runs on every request.
    timers: dict[tuple[str, str], Any] = {}
    access = logging.getLogger(f"{service}.access")
    counters: dict[tuple[str, str, int], Any] = {}

    @app.before_request
    def _start() -> None:
        environ = request.environ
        rid = environ.get("HTTP_X_REQUEST_ID", "")
        environ["mlsuite.request_id"] = rid if rid and _REQUEST_ID.match(rid) else os.urandom(16).hex()
        environ["mlsuite.started"] = time.perf_counter()
        # Declared too large: 413 now, on every path, before a key is looked up or a
        # view runs (Werkzeug would only say so when a view reads the body).
        length = request.content_length
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and length is not None and length > limit:
            raise RequestEntityTooLarge()

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
        # One line per refused or failed request (every request at DEBUG): who asked (the
        # key's id, never its secret), what, the answer and the time, under the request id
        # the client holds in X-Request-ID.
        if status >= 400 or access.isEnabledFor(logging.DEBUG):
            # The route, not the path: a path may hold a user id or a card number.
            access.log(logging.INFO if status >= 400 else logging.DEBUG,
                       "%s %s %d %.1f ms request=%s key=%s", method, rule, status,
                       elapsed * 1000, environ.get("mlsuite.request_id", ""),
                       environ.get("mlsuite.key_id", "") or "-")
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
            app.logger.warning("request %s: %s", request_id(), _log_text(exc))
        body = exc.to_dict()
        body["message"] = public_message(exc)
        response = _error_response(exc.status, body)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        drained = True
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body exceeds the limit of {limit} bytes"
            drained = _drain_body(request.environ, int(limit or 0))
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no endpoint at {request.path}"
        response = _error_response(status, {"code": code, "message": message})
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        if not drained:  # unread bytes remain: this connection cannot carry another request
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError) -> Response:
        app.logger.warning("request %s: redis error: %s", request_id(), exc)
        response = _error_response(503, {
            "code": "unavailable",
            "message": "redis is unavailable",
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

    last_failure: dict[str, str] = {}  # check -> what was logged, once per change

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        checks: dict[str, dict[str, Any]] = {}
        ready = True
        degraded: list[str] = []
        for name, check in app.extensions["mlsuite.readiness"].items():
            try:
                detail = check()
                checks[name] = {"ok": True, "detail": detail or "ok"}
                last_failure.pop(name, None)
            except Exception as exc:  # a failed check is a report, not a crash
                full = _log_text(exc)
                if last_failure.get(name) != full:  # probes come every second or two
                    last_failure[name] = full
                    log.warning("%s: readiness check %s failed: %s", service, name, full)
                checks[name] = {"ok": False, "detail": public_message(exc)}
                if name in DEPENDENCIES:
                    degraded.append(name)
                else:
                    ready = False
        # "instance": which server start answers, so a supervisor never takes a server
        # left over on the port for the one it just started.
        status = "not_ready" if not ready else "degraded" if degraded else "ready"
        body = {"status": status, "service": service, "instance": lifecycle.instance(),
                "degraded": degraded, "checks": checks}
        return jsonify(body), 200 if ready else 503

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, content_type=content_type)


def _log_text(exc: BaseException) -> str:
    """``exc`` for the log: its message, and its cause's when that says more."""
    text, cause = str(exc), exc.__cause__
    return f"{text} ({cause})" if cause is not None and str(cause) not in text else text


def _drain_body(environ: dict[str, Any], limit: int) -> bool:
    """Read and discard what is left of an oversized request body (see DRAIN_MIN_BYTES);
    whether all of it was read."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return True
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None  # chunked: read to its end
    cap = max(DRAIN_MIN_BYTES, DRAIN_FACTOR * limit)
    if length is not None and length > cap:
        return False
    budget = cap if length is None else length
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        while budget > 0:
            chunk = stream.read(min(_DRAIN_CHUNK, budget))
            if not chunk:
                return True
            budget -= len(chunk)
            if time.monotonic() > deadline:
                return False
    except (OSError, ValueError):  # the client went away: nothing left to protect
        return False
    return length is not None
