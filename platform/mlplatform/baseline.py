"""Baseline apps: the ceiling any Flask endpoint can reach on this machine and server.

``create_app`` is a bare Flask endpoint (no conventions, no metrics), what ``mlsuite bench``
compares the services with. ``create_conventions_app`` adds only mlsuite's HTTP
conventions (errors, request ids, metrics), to show what the conventions cost and to
test serving with several worker processes.
"""

from __future__ import annotations

from flask import Flask, jsonify

from mlplatform import lifecycle
from mlplatform.config import Settings
from mlplatform.http import create_service_app, json_body
from mlplatform.security import requires

__all__ = ["create_app", "create_conventions_app"]


def create_app() -> Flask:
    app = Flask("baseline")
    # Its /ping is its readiness: it names the server start, as /readyz does elsewhere, so
    # a supervisor never takes another process on the port for this one.
    answer = {"ok": True, "instance": lifecycle.instance()}

    @app.get("/ping")
    def ping():  # type: ignore[no-untyped-def]
        return jsonify(answer)

    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True, "size": len(app.json.dumps(json_body()))})

    return app


def create_conventions_app(settings: Settings | None = None) -> Flask:
    app = create_service_app("baseline", settings)

    @app.get("/v1/ping")
    @requires(None)  # the floor of the conventions: what a request costs before any logic
    def ping():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    return app
