"""Baseline apps: the ceiling any Flask endpoint can reach on this machine and server.

``create_app`` is a bare Flask endpoint (no conventions, no metrics), what ``mlsuite bench``
compares the services with. ``create_conventions_app`` adds only mlsuite's HTTP
conventions (errors, request ids, metrics), to show what the conventions cost and to
test serving with several worker processes.
"""

from __future__ import annotations

from flask import Flask, jsonify

from mlplatform.config import Settings
from mlplatform.http import create_service_app, json_body

__all__ = ["create_app", "create_conventions_app"]


def create_app() -> Flask:
    app = Flask("baseline")

    @app.get("/ping")
    def ping():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True, "size": len(app.json.dumps(json_body()))})

    return app


def create_conventions_app(settings: Settings | None = None) -> Flask:
    app = create_service_app("baseline", settings)

    @app.get("/v1/ping")
    def ping():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    return app
