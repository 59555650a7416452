"""Metrics of the GraphQL service: HTTP requests (the platform's shared metrics) and operations.

- ``mlsuite_http_requests_total{service="graphql", endpoint, method, status}`` and
  ``mlsuite_http_request_duration_seconds``: every HTTP request, as the other services.
- ``mlsuite_graphql_operations_total{operation, type, outcome}`` and
  ``mlsuite_graphql_operation_seconds{operation, type}``: per GraphQL operation name;
  ``outcome`` is ``ok``, ``partial`` (data and errors: an upstream was down) or ``error``
  (no data: refused by a limit, invalid, or failed).

Operation names come from clients: a label is the name when it looks like an identifier,
and the first ``MAX_OPERATION_NAMES`` distinct names per process only (the rest count as
``other``), so a client cannot grow the metrics without bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from strawberry.extensions import SchemaExtension

from mlplatform import metrics

__all__ = ["OperationMetrics", "RequestMetrics", "operation_label"]

OPERATIONS = Counter(
    "mlsuite_graphql_operations_total", "GraphQL operations by name, type and outcome",
    ["operation", "type", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "mlsuite_graphql_operation_seconds", "GraphQL operation latency (parse to result)",
    ["operation", "type"], buckets=metrics.LATENCY_BUCKETS,
)
MAX_OPERATION_NAMES = 200
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_seen: set[str] = set()


def operation_label(name: str | None) -> str:
    """The metrics label of an operation name.

    >>> operation_label(None), operation_label("Checkout"), operation_label("a b")
    ('anonymous', 'Checkout', 'other')
    """
    if not name:
        return "anonymous"
    if not _NAME.match(name):
        return "other"
    if name not in _seen:
        if len(_seen) >= MAX_OPERATION_NAMES:
            return "other"
        _seen.add(name)
    return name


class OperationMetrics(SchemaExtension):
    """Counts and times each operation (subscriptions count once, when they start)."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        ctx = self.execution_context
        try:
            name = ctx.operation_name
            kind = ctx.operation_type.value
        except Exception:  # noqa: BLE001 - an unparsable document has neither
            name, kind = None, "unknown"
        label = operation_label(name)
        result: Any = ctx.result
        errors = bool(ctx.pre_execution_errors) or bool(result is not None and result.errors)
        data = result is not None and result.data is not None
        outcome = "ok" if not errors else ("partial" if data else "error")
        OPERATIONS.labels(label, kind, outcome).inc()
        OPERATION_SECONDS.labels(label, kind).observe(time.perf_counter() - started)


class RequestMetrics:
    """ASGI middleware: the platform's HTTP request metrics for every route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope.get("path", "")
        endpoint = path if path in ("/graphql", "/healthz", "/readyz", "/metrics") else "other"
        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope.get("method", "GET")
            metrics.REQUESTS.labels("graphql", endpoint, method, str(status)).inc()
            metrics.REQUEST_SECONDS.labels("graphql", endpoint, method).observe(
                time.perf_counter() - started)
