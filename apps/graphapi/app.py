"""The GraphQL service (ASGI): ``/graphql`` (queries, mutations, graphql-transport-ws
subscriptions), ``/healthz``, ``/readyz`` and ``/metrics``.

``create_app()`` is the factory granian's ASGI interface serves (``mlsuite serve
graphql``); it reads the settings once and builds nothing that needs the event loop:
the pooled HTTP client and the Redis stream readers are made in the lifespan, per worker
process, and closed on shutdown.

Readiness: ``/readyz`` is 200 whenever this process can answer, and lists each upstream
(recommender, fraud, Feast, Redis) with its state. An upstream that is down does not make
GraphQL unready: queries needing only the other service still answer, and those needing
it answer with partial data and an ``UPSTREAM_UNAVAILABLE`` error; taking every replica
out of a load balancer because one dependency is down would fail them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from graphapi.context import GraphContext
from graphapi.loaders import Catalogue
from graphapi.schema import build_schema
from graphapi.streams import StreamTails
from graphapi.telemetry import RequestMetrics
from graphapi.upstream import SERVICES, Upstream
from mlplatform import metrics
from mlplatform.config import Settings, get_settings

__all__ = ["GraphQLService", "create_app"]

log = logging.getLogger("graphapi")


class GraphQLService(GraphQL[GraphContext, None]):
    """Strawberry's ASGI view with this service's context: loaders per request."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(build_schema(settings), graphql_ide=None, allow_queries_via_get=False,
                         subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
                         keep_alive=True, keep_alive_interval=15)
        self.settings = settings
        self.catalogue = Catalogue(settings)
        self.upstream: Upstream | None = None
        self.tails: StreamTails | None = None

    async def get_context(self, request: Request | WebSocket,
                          response: Response | WebSocket) -> GraphContext:
        assert self.upstream is not None, "the lifespan makes the client before any request"
        return GraphContext(self.settings, self.upstream, self.catalogue, self.tails,
                            request=request, response=response)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.upstream = Upstream(self.settings)
        self.tails = StreamTails(self.settings.redis_url) if self.settings.redis_url else None
        if self.tails is None:
            log.warning("graphql: MLSUITE_REDIS_URL is unset: subscriptions will fail")
        self.catalogue.start()
        log.info("graphql: serving /graphql (pid %d): recommender %s, fraud %s, depth <= %d, "
                    "cost <= %d, batch <= %d, introspection %s", os.getpid(),
                    self.upstream.urls["recommender"], self.upstream.urls["fraud"],
                    self.settings.graphql_max_depth, self.settings.graphql_max_cost,
                    self.settings.graphql_max_batch,
                    "on" if self.settings.graphql_introspection else "off")
        try:
            yield
        finally:
            await self.upstream.close()
            if self.tails is not None:
                await self.tails.close()

    async def readyz(self, _: Request) -> JSONResponse:
        checks: dict[str, dict[str, Any]] = {}

        async def check(name: str, probe: Any) -> None:
            try:
                detail = await probe
                checks[name] = {"ok": detail in ("ready", True, "ok"), "detail": str(detail)}
            except Exception as exc:  # noqa: BLE001 - an unreachable upstream is a report
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}

        assert self.upstream is not None
        probes = [check(s, self.upstream.ready(s)) for s in SERVICES]
        if self.tails is not None:
            probes.append(check("redis", self.tails.ping()))
        await asyncio.gather(*probes)
        status = self.catalogue.status()
        checks["feast"] = {"ok": status == "ok", "detail": status}
        return JSONResponse({"status": "ready", "service": "graphql",
                             "unavailable": sorted(n for n, c in checks.items() if not c["ok"]),
                             "checks": checks})


async def healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "alive", "service": "graphql", "pid": os.getpid()})


async def metrics_endpoint(_: Request) -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)


def create_app(settings: Settings | None = None) -> Any:
    """The ASGI app (granian's factory: called with no arguments)."""
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per upstream call: noise
    service = GraphQLService(settings)
    app = Starlette(routes=[
        Route("/graphql", service, methods=["POST"]),
        WebSocketRoute("/graphql", service),
        Route("/healthz", healthz),
        Route("/readyz", service.readyz),
        Route("/metrics", metrics_endpoint),
    ], lifespan=service.lifespan)
    return RequestMetrics(app)
