"""The one exception tree of mlsuite.

Library code raises these; the HTTP edge (``mlplatform.http``) maps ``APIError`` to a JSON
body exactly once, and the CLI maps ``ConfigError`` to a message and exit status 2.

>>> e = BadRequest("n must be an integer in [1, 100], got 'abc'", field="n")
>>> e.status, e.code, e.to_dict()["field"]
(400, 'invalid_field', 'n')
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MLSuiteError",
    "ConfigError",
    "APIError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Unavailable",
    "Unauthorized",
    "Forbidden",
    "TooManyRequests",
]


class MLSuiteError(Exception):
    """Base of every error mlsuite raises on purpose."""


class ConfigError(MLSuiteError):
    """A setting is missing or malformed; start-up stops with this message."""


class APIError(MLSuiteError):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] = {}  # extra response headers (WWW-Authenticate, Retry-After)

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(APIError):
    """The request is malformed: ``field`` names the offending field when there is one."""

    status = 400
    code = "invalid_field"


class Unauthorized(APIError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="mlsuite"'}


class Forbidden(APIError):
    """The API key is valid but lacks the scope the endpoint needs."""

    status = 403
    code = "forbidden"


class TooManyRequests(APIError):
    """The API key is over its rate limit; ``Retry-After`` says when to try again."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers = {"Retry-After": retry_after}
        self.details.setdefault("retry_after_seconds", int(retry_after))


class NotFound(APIError):
    status = 404
    code = "not_found"


class Conflict(APIError):
    status = 409
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class Unavailable(APIError):
    """A dependency (Redis, Feast, the model) is down: retryable, says which one."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, dependency: str, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.dependency = dependency
        self.retry_after = retry_after
        self.details.setdefault("dependency", dependency)
        self.details.setdefault("retryable", True)
