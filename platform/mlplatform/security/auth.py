"""The Flask hook that checks API keys: 401 without a valid key, 403 without the scope,
429 past the key's rate.

A view says what it needs with ``@requires("score")`` (or ``@requires(None)`` for an open
one). A view that says nothing needs ``admin``: forgetting to declare a scope closes an
endpoint instead of opening it. ``/healthz`` and ``/readyz`` are open; ``/metrics`` is
open unless ``MLSUITE_METRICS_AUTH`` is on. ``MLSUITE_AUTH=off`` turns checking off (for
local work; it logs a warning at start).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, request

from mlplatform.config import Settings
from mlplatform.errors import Forbidden, TooManyRequests, Unauthorized, Unavailable
from mlplatform.security.keys import SCOPES, KeyStore
from mlplatform.security.ratelimit import RateLimiter, retry_after

__all__ = ["init_app", "requires", "current_key_id", "may"]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_OPEN = object()
_ALWAYS_OPEN = {"healthz", "readyz", "static"}


def requires(scope: str | None) -> Callable[[F], F]:
    """Declare the scope a view needs (None: open to anyone)."""
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")

    def mark(view: F) -> F:
        view.mlsuite_scope = _OPEN if scope is None else scope  # type: ignore[attr-defined]
        return view

    return mark


def current_key_id() -> str:
    """The id of the key of the current request ('' when auth is off or the view is open)."""
    return request.environ.get("mlsuite.key_id", "")  # type: ignore[no-any-return]


def may(scope: str) -> bool:
    """Whether the current request's key has ``scope``: for views that show more to some
    keys (salts and thresholds to ``admin``). True when API keys are off."""
    if not current_app.extensions.get("mlsuite.auth", False):
        return True
    record = request.environ.get("mlsuite.key")
    return record is not None and bool(record.allows(scope))


def init_app(app: Flask, settings: Settings, redis_client: Any) -> None:
    """Check keys on every request of ``app`` (unless ``settings.auth`` is off)."""
    service = app.extensions.get("mlsuite.service", app.name)
    app.extensions["mlsuite.auth"] = settings.auth
    if not settings.auth:
        log.warning("%s: MLSUITE_AUTH=off: every endpoint is open to anyone who can reach it "
                    "(local work only)", service)
        return
    if redis_client is None:
        log.warning("%s: no Redis, so no API keys: every endpoint answers 401", service)
    store = KeyStore(redis_client) if redis_client is not None else None
    limiter = RateLimiter(redis_client) if redis_client is not None else None
    open_endpoints = set(_ALWAYS_OPEN)
    if not settings.metrics_auth:
        open_endpoints.add("metrics_endpoint")
    scope_of: dict[str, Any] = {}  # endpoint -> scope (or _OPEN), cached

    def scope_for(endpoint: str) -> Any:
        scope = scope_of.get(endpoint)
        if scope is None:
            view = app.view_functions.get(endpoint)
            scope = _OPEN if endpoint in open_endpoints else getattr(
                view, "mlsuite_scope", "admin")
            scope_of[endpoint] = scope
        return scope

    @app.before_request
    def _authenticate() -> None:
        endpoint = request.endpoint
        if endpoint is None:  # 404 / 405: let Flask say so
            return
        scope = scope_for(endpoint)
        if scope is _OPEN:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise Unauthorized("this endpoint needs an API key: send 'Authorization: Bearer "
                               "<key>' (mlsuite keys create)")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        if store is None:
            raise Unavailable("API keys cannot be checked without redis", dependency="redis")
        try:
            record = store.lookup(key.strip())
        except redis.RedisError as exc:
            raise Unavailable("API keys cannot be checked: redis is unreachable",
                              dependency="redis") from exc
        if record is None:
            raise Unauthorized("the API key is not valid (unknown or revoked)")
        request.environ["mlsuite.key_id"] = record.id
        request.environ["mlsuite.key"] = record
        if not record.allows(scope):
            raise Forbidden(f"the API key {record.id!r} lacks the scope {scope!r} that this "
                            f"endpoint needs", field="scope", details={"scope": scope})
        if record.rate_per_second > 0 and limiter is not None:
            try:
                wait = limiter.allow(record.id, record.rate_per_second)
            except redis.RedisError:  # the key is valid: a limit that cannot be read lets it by
                wait = 0.0
            if wait > 0:
                raise TooManyRequests(
                    f"the API key {record.id!r} is over its limit of "
                    f"{record.rate_per_second:g} requests/s; retry after {wait:.2f} s",
                    retry_after=retry_after(wait))
