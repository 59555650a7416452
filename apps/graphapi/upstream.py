"""The services behind the schema: one pooled ``httpx.AsyncClient``, typed upstream errors.

Every resolver reaches the recommender and the fraud service through ``Upstream.call``,
which forwards the client's ``Authorization`` header (so the services' keys and scopes
apply to GraphQL callers exactly as to REST callers), counts each call in
``mlsuite_graphql_upstream_requests_total{service, endpoint, outcome}`` and turns
failures into GraphQL errors with a machine-readable ``extensions.code``:

- ``UPSTREAM_UNAVAILABLE`` (``service``): connection refused, timeout or a 5xx. The
  field that needed it is null; the rest of the query still answers (partial data).
- the service's own 4xx (``BAD_USER_INPUT``, ``NOT_FOUND``, ``CONFLICT``, ...) with its
  message and the field it named (``service``, ``status``, ``field``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from graphql import GraphQLError
from prometheus_client import Counter, Histogram

from mlplatform.config import Settings
from mlplatform.metrics import LATENCY_BUCKETS

__all__ = ["SERVICES", "Upstream", "UpstreamRejected", "UpstreamUnavailable"]

log = logging.getLogger(__name__)

SERVICES = ("recommender", "fraud")

UPSTREAM_REQUESTS = Counter(
    "mlsuite_graphql_upstream_requests_total", "Calls from GraphQL to the services",
    ["service", "endpoint", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "mlsuite_graphql_upstream_seconds", "Latency of calls from GraphQL to the services",
    ["service", "endpoint"], buckets=LATENCY_BUCKETS,
)

# The service's error code -> the GraphQL code clients switch on.
_CODES = {400: "BAD_USER_INPUT", 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND",
          409: "CONFLICT", 413: "BAD_USER_INPUT", 422: "BAD_USER_INPUT", 429: "RATE_LIMITED"}


class UpstreamUnavailable(GraphQLError):
    """A service did not answer (or answered 5xx): the fields needing it are null."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} is unavailable: {detail}",
                         extensions={"code": "UPSTREAM_UNAVAILABLE", "service": service})
        self.service = service


class UpstreamRejected(GraphQLError):
    """A service refused the request (4xx): its message and the field it named."""

    def __init__(self, service: str, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or f"{service} answered HTTP {status}")
        extensions: dict[str, Any] = {"code": _CODES.get(status, "UPSTREAM_REJECTED"),
                                      "service": service, "status": status}
        if error.get("field"):
            extensions["field"] = error["field"]
        super().__init__(f"{service}: {message}", extensions=extensions)
        self.service = service
        self.status = status


class Upstream:
    """The services' base URLs and one connection pool for all of them (per process)."""

    def __init__(self, settings: Settings, *, timeout: float = 5.0,
                 max_connections: int = 100) -> None:
        self.urls = {s: settings.service_url(s).rstrip("/") for s in SERVICES}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(1.0, timeout)),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )

    async def call(self, service: str, method: str, path: str, *, endpoint: str,
                   json: Any = None, params: dict[str, Any] | None = None,
                   authorization: str | None = None) -> Any:
        """The JSON body of ``method path`` on ``service``; raises the typed errors above.

        ``endpoint`` is the route template for the metrics label (never a raw id)."""
        headers = {"Authorization": authorization} if authorization else None
        started = time.perf_counter()
        try:
            response = await self.client.request(method, self.urls[service] + path, json=json,
                                                 params=params, headers=headers)
        except httpx.HTTPError as exc:
            UPSTREAM_REQUESTS.labels(service, endpoint, "unavailable").inc()
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("upstream %s %s %s failed: %s", service, method, endpoint, detail)
            raise UpstreamUnavailable(service, detail) from exc
        finally:
            UPSTREAM_SECONDS.labels(service, endpoint).observe(time.perf_counter() - started)
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status >= 500:
            UPSTREAM_REQUESTS.labels(service, endpoint, "unavailable").inc()
            log.warning("upstream %s %s %s answered %d", service, method, endpoint, status)
            raise UpstreamUnavailable(service, f"HTTP {status}")
        if status >= 400:
            UPSTREAM_REQUESTS.labels(service, endpoint, "rejected").inc()
            raise UpstreamRejected(service, status, body)
        UPSTREAM_REQUESTS.labels(service, endpoint, "ok").inc()
        return body

    async def ready(self, service: str) -> str:
        """The service's /readyz status ("ready", "not_ready"); raises when unreachable."""
        response = await self.client.get(self.urls[service] + "/readyz", timeout=2.0)
        body = response.json()
        return str(body.get("status", f"HTTP {response.status_code}"))

    async def close(self) -> None:
        await self.client.aclose()
