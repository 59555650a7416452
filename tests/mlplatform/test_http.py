"""HTTP conventions: every error is JSON naming the problem, request ids, health, readiness."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify, request
from flask.testing import FlaskClient

from mlplatform.config import Settings
from mlplatform.errors import BadRequest
from mlplatform.http import (
    add_readiness_check,
    body_bytes,
    check_id,
    create_service_app,
    get_redis,
    json_body,
    query_bool,
    query_int,
)
from mlplatform.redisdb import free_port


def _app(settings: Settings) -> Flask:
    app = create_service_app("demo", settings.with_(max_request_bytes=2048))

    @app.get("/v1/things/<thing_id>")
    def thing(thing_id: str):  # type: ignore[no-untyped-def]
        return jsonify({"id": check_id(thing_id, "thing_id"), "n": query_int("n", 10, 1, 100),
                        "seen": query_bool("seen", True)})

    @app.post("/v1/things")
    def create():  # type: ignore[no-untyped-def]
        body = json_body()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise BadRequest("name must be a string", field="name")
        get_redis().rpush("things", body["name"])
        return jsonify({"ok": True}), 201

    @app.post("/v1/echo")
    def echo():  # type: ignore[no-untyped-def]
        first = body_bytes()
        return jsonify({"again": body_bytes() == first, "werkzeug": request.get_data() == first,
                        "size": len(first)})

    @app.get("/v1/boom")
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return _app(settings).test_client()


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field", "message"), [
    ("GET", "/v1/things/a1?n=0", {}, 400, "n", "n must be an integer in [1, 100], got '0'"),
    ("GET", "/v1/things/a1?n=x", {}, 400, "n", "got 'x'"),
    ("GET", "/v1/things/a1?seen=maybe", {}, 400, "seen", "seen must be true or false"),
    ("GET", "/v1/things/%20bad", {}, 400, "thing_id", "thing_id must be 1-128 characters"),
    ("POST", "/v1/things", {"data": "{not json", "content_type": "application/json"}, 400, "body",
     "request body must be valid JSON"),
    ("POST", "/v1/things", {"data": ""}, 400, "body", "empty body"),
    ("POST", "/v1/things", {"json": {"name": 3}}, 400, "name", "name must be a string"),
    ("POST", "/v1/things", {"data": "x" * 5000}, 413, None, "exceeds the limit of 2048 bytes"),
    ("GET", "/v1/nothing", {}, 404, None, "no endpoint at /v1/nothing"),
    ("DELETE", "/v1/things", {}, 405, None, "method DELETE is not allowed"),
], ids=["n-zero", "n-text", "bool", "bad-id", "bad-json", "empty", "wrong-type", "too-large",
        "no-route", "bad-method"])
def test_errors_are_json_naming_the_field(client: FlaskClient, method: str, path: str,
                                          kwargs: dict, status: int, field: str | None,
                                          message: str) -> None:
    resp = client.open(path, method=method, **kwargs)
    assert resp.status_code == status
    error = resp.get_json()["error"]
    assert message in error["message"]
    assert error.get("field") == field
    assert error["request_id"] == resp.headers["X-Request-ID"]


@pytest.mark.parametrize("body", [b"{}", "é".encode() * 1000], ids=["small", "2000 bytes"])
def test_a_body_read_once_reads_the_same_for_any_later_reader(client: FlaskClient,
                                                              body: bytes) -> None:
    answer = client.post("/v1/echo", data=body).get_json()
    assert answer == {"again": True, "werkzeug": True, "size": len(body)}


def test_unexpected_error_is_a_json_500_without_internals(client: FlaskClient) -> None:
    resp = client.get("/v1/boom")
    assert resp.status_code == 500
    body = resp.get_data(as_text=True)
    assert "secret internals" not in body and "Traceback" not in body
    assert resp.get_json()["error"]["code"] == "internal_error"


def test_request_id_is_echoed_or_made(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32


def test_health_and_readiness(client: FlaskClient) -> None:
    health = client.get("/healthz").get_json()
    assert (health["status"], health["service"]) == ("alive", "demo")
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["redis"]["ok"] is True


def test_readiness_reports_the_failing_dependency(settings: Settings) -> None:
    app = _app(settings)

    def model_missing() -> str:
        raise RuntimeError("no production model")

    add_readiness_check(app, "model", model_missing)
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert checks["model"] == {"ok": False, "detail": "RuntimeError: no production model"}
    assert checks["redis"]["ok"] is True


def test_redis_down_is_a_retryable_503_naming_redis(settings: Settings) -> None:
    dead = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = _app(dead).test_client()
    resp = client.post("/v1/things", json={"name": "x"})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.get_json()["error"]["details"] == {"dependency": "redis", "retryable": True}
    # Redis is shared by every replica: down, a replica is degraded, not unready (a
    # gateway taking them all out would answer nothing at all).
    ready = client.get("/readyz")
    body = ready.get_json()
    assert ready.status_code == 200 and body["status"] == "degraded"
    assert body["degraded"] == ["redis"]
    assert body["checks"]["redis"] == {"ok": False, "detail": "redis is unavailable"}


def test_good_request_reaches_redis(client: FlaskClient, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/things", json={"name": "lamp"}).status_code == 201
    assert redis_client.lrange("things", 0, -1) == [b"lamp"]
