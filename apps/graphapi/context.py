"""What every resolver gets as ``info.context``: the request's loaders and the process's parts."""

from __future__ import annotations

from typing import Any

from graphapi.loaders import Catalogue, Loaders
from graphapi.streams import StreamTails
from graphapi.upstream import Upstream
from mlplatform.config import Settings

__all__ = ["GraphContext"]


class GraphContext:
    """Per request (or per websocket connection): loaders with the caller's credentials."""

    def __init__(self, settings: Settings, upstream: Upstream, catalogue: Catalogue,
                 tails: StreamTails | None, request: Any = None, response: Any = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.tails = tails
        self.request = request  # the starlette Request or WebSocket
        self.response = response
        self.connection_params: Any = None  # set by strawberry from a websocket's init
        self.loaders = Loaders(upstream, catalogue, self.authorization)

    def authorization(self) -> str | None:
        """The caller's ``Authorization`` (HTTP header, or the websocket's handshake header
        or its ``connection_init`` payload), forwarded to the services on every call."""
        params = self.connection_params
        if isinstance(params, dict):
            value = params.get("Authorization") or params.get("authorization")
            if isinstance(value, str) and value:
                return value
        headers = getattr(self.request, "headers", None)
        return headers.get("authorization") if headers is not None else None
