"""The console's JSON API against its OpenAPI document: every ``/api`` view is listed, and
every answer converts to the type it documents.

A real console app over the session Redis scrapes a real service over HTTP: a second
console app served by werkzeug stands in as the fraud service (its ``/metrics`` is the
platform's, with real request figures), so the "up" branches of the panels are built; the
recommender's URL is a closed port, so the "down" ones are too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from mlplatform.config import Settings
from mlplatform.monitoring.collector import SERVICES
from mlplatform.monitoring.console import create_app, get_collector
from mlplatform.openapi import Operation

NO_COLLECT = {"CONSOLE_COLLECT": False}  # the test ticks the collector itself


@pytest.fixture
def console(settings: Settings, wait_for: Callable[..., Any]) -> Iterator[Flask]:
    scraped = create_app(settings, NO_COLLECT)
    server = make_server("127.0.0.1", 0, scraped, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app = create_app(settings.with_(fraud_url=f"http://127.0.0.1:{server.server_port}",
                                        recommender_url="http://127.0.0.1:9"), NO_COLLECT)
        collector = get_collector(app)
        collector.tick()
        with scraped.test_client() as client:  # traffic between two scrapes: rates to show
            for _ in range(5):
                assert client.get("/api/services").status_code == 200

        def rate_shown() -> bool:  # a second scrape, later than the first: a rate
            collector.tick()
            summary = collector.history.summary("fraud")
            return bool(summary and summary.get("rps"))

        wait_for("a request rate between two scrapes", rate_shown)
        yield app
        collector.stop()
    finally:
        server.shutdown()
        thread.join(timeout=10)
        get_collector(scraped).stop()


def _api_paths(app: Flask) -> dict[str, Operation]:
    """Each /api rule of ``app`` (as OpenAPI writes it) and the contract of its view."""
    out = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = rule.rule.replace("<service>", "{service}")
            out[path] = app.view_functions[rule.endpoint].mlsuite_contract
    return out


def _get(client: FlaskClient, path: str) -> Any:
    reply = client.get(path)
    assert reply.status_code == 200, (path, reply.get_data(as_text=True)[:500])
    return reply.get_json()


def test_openapi_lists_every_api_operation_with_its_type(console: Flask) -> None:
    spec = _get(console.test_client(), "/openapi.json")
    api = _api_paths(console)
    assert set(api) == {"/api/overview", "/api/services", "/api/models", "/api/rollouts",
                        "/api/experiments", "/api/fraud", "/api/drift/{service}",
                        "/api/alerts"}
    for path, op in api.items():
        entry = spec["paths"][path]["get"]
        schema = entry["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{op.responses[200].__name__}"}, path
        assert entry["security"] == [], f"{path} must be open, like the page that reads it"
    drift = spec["paths"]["/api/drift/{service}"]["get"]
    assert drift["parameters"][0]["schema"]["enum"] == list(SERVICES)
    assert "404" in drift["responses"]
    # The nested types are in the document, with the free-form parts described.
    schemas = spec["components"]["schemas"]
    assert {"ServicePanel", "Summary", "Fraud", "DriftSummary", "FiringAlert"} <= set(schemas)
    assert schemas["Models"]["properties"]["served"]["description"].startswith("per service")


def test_every_api_answer_converts_to_its_documented_type(console: Flask) -> None:
    client = console.test_client()
    answers = {}
    for path, op in _api_paths(console).items():
        for url in ([path.replace("{service}", s) for s in SERVICES]
                    if "{service}" in path else [path]):
            body = _get(client, url)
            answers[url] = msgspec.convert(body, op.responses[200])  # raises on a mismatch
    overview = answers["/api/overview"]
    # Both branches were built: the scraped stand-in is up with traffic, the other down.
    fraud_panel = overview.services["fraud"]
    assert fraud_panel.up is True and fraud_panel.summary is not None
    assert fraud_panel.summary.rps is not None and fraud_panel.summary.rps > 0
    assert overview.services["recommender"].up is False
    assert answers["/api/fraud"].up is True and answers["/api/fraud"].scores is not None
    assert overview.redis["up"] is True
    # The session's Redis holds other tests' state too (quality alerts may fire): the
    # recommender's port is closed, so ServiceDown is among them.
    assert "ServiceDown" in [a.name for a in answers["/api/alerts"].firing]
    assert answers["/api/alerts"].conditions, "the conditions evaluated are listed"
    assert answers["/api/drift/fraud"].service == "fraud"


def test_a_key_the_document_lacks_fails_the_conversion() -> None:
    """The check above can fail: a view adding a key to a fully typed panel is refused."""
    from mlplatform.monitoring.contract import Reviews

    with pytest.raises(msgspec.ValidationError, match="unknown field `stale`"):
        msgspec.convert({"open": 1, "overdue": 0, "stale": 2}, Reviews)


def test_unknown_drift_service_is_a_404_naming_the_field(console: Flask) -> None:
    reply = console.test_client().get("/api/drift/payments")
    assert reply.status_code == 404
    assert reply.get_json()["error"]["field"] == "service"


def test_docs_page_answers(console: Flask) -> None:
    reply = console.test_client().get("/docs")
    assert reply.status_code == 200
    assert "openapi.json" in reply.get_data(as_text=True)
