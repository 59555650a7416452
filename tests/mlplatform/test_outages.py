"""Outages at the HTTP edge: a dependency that is down is named (``redis``), never
described by its driver (socket paths, hosts, ports, passwords); ``/readyz`` says the
replica is degraded rather than unready and recovers without a restart; an oversized
body sent whole to a real granian server gets a clean 413 on a connection that stays
usable.

A redis-server of each test's own (``outage_redis``) is stopped and started again on the
same port and socket; the 413 test runs the ``baseline-conventions`` service.
"""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
import redis
from flask import Flask, jsonify

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.http import add_readiness_check, create_service_app, get_redis
from mlplatform.redisdb import EmbeddedRedis, connect, free_port, redact_url


def _app(settings: Settings) -> Flask:
    app = create_service_app("outages", settings)

    @app.post("/v1/count")
    def count():  # type: ignore[no-untyped-def]
        return jsonify({"n": get_redis().incr("n")})

    @app.get("/v1/wrapped")
    def wrapped():  # type: ignore[no-untyped-def]
        try:
            get_redis().get("n")
        except redis.RedisError as exc:  # as the apps do: their message, the driver's cause
            raise Unavailable(f"redis is unavailable, nothing read: {exc}",
                              dependency="redis") from exc
        return jsonify({"ok": True})

    return app


def _leaks(text: str, server: EmbeddedRedis) -> list[str]:
    words = [str(server.socket_path), str(server.dir), str(server.port), "127.0.0.1",
             "connecting", "Errno", "Error 2", "Error 111", "ConnectionError"]
    return [w for w in words if w in text]


def test_redis_down_is_named_not_described_and_readiness_recovers(
        settings: Settings, outage_redis: EmbeddedRedis) -> None:
    app = _app(settings.with_(redis_url=outage_redis.url))
    client = app.test_client()
    assert client.post("/v1/count").status_code == 200
    assert client.get("/readyz").get_json()["status"] == "ready"

    outage_redis.stop()
    raw, wrapped = client.post("/v1/count"), client.get("/v1/wrapped")
    for resp in (raw, wrapped):
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        error = resp.get_json()["error"]
        assert error["message"] == "redis is unavailable", error
        assert error["details"] == {"dependency": "redis", "retryable": True}
    ready = client.get("/readyz")
    body = ready.get_json()
    # Every replica shares the outage: out of the gateway they could not even say so.
    assert ready.status_code == 200, body
    assert (body["status"], body["degraded"]) == ("degraded", ["redis"])
    assert body["checks"]["redis"] == {"ok": False, "detail": "redis is unavailable"}
    for resp in (raw, wrapped, ready):
        assert not _leaks(resp.get_data(as_text=True), outage_redis), resp.get_data(as_text=True)

    outage_redis.start()
    started = time.monotonic()
    while client.get("/readyz").get_json()["status"] != "ready" \
            or client.post("/v1/count").status_code != 200:
        assert time.monotonic() - started < 5.0, "not ready 5 s after redis answered"
        time.sleep(0.02)
    print(f"ready and writing {time.monotonic() - started:.3f}s after redis answered")


def test_a_failing_check_of_the_replica_itself_is_unready(
        settings: Settings) -> None:
    app = _app(settings)

    def model() -> str:
        raise Unavailable("no model 'm' at alias 'production' loaded yet", dependency="model")

    add_readiness_check(app, "model", model)
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert (body["status"], body["degraded"]) == ("not_ready", [])
    assert body["checks"]["model"]["detail"] == "no model 'm' at alias 'production' loaded yet"


def test_the_redis_password_is_in_no_body_and_no_log(
        settings: Settings, outage_redis: EmbeddedRedis,
        caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cret-Pa55word"
    port = outage_redis.port
    connect(outage_redis.url).config_set("requirepass", secret)
    wrong = f"redis://:{secret}-not@127.0.0.1:{port}/0"
    caplog.set_level(logging.DEBUG)
    client = _app(settings.with_(redis_url=wrong)).test_client()
    resp = client.post("/v1/count")
    assert resp.status_code == 503, resp.get_json()
    ready = client.get("/readyz")
    assert ready.get_json()["degraded"] == ["redis"]
    for text in (resp.get_data(as_text=True), ready.get_data(as_text=True), caplog.text):
        assert secret not in text
    assert redact_url(wrong) == f"redis://:***@127.0.0.1:{port}/0"
    right = _app(settings.with_(redis_url=f"redis://:{secret}@127.0.0.1:{port}/0"))
    assert right.test_client().post("/v1/count").status_code == 200


# -- 413 on a real server --------------------------------------------------------------

def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` whole (headers and body), then read one response."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.slow
def test_an_oversized_body_sent_whole_gets_a_clean_413_on_a_real_server(
        settings: Settings, redis_url: str) -> None:
    limit = 64 * 1024
    port = free_port()
    proc = serving.spawn("baseline-conventions", settings.with_(max_request_bytes=limit),
                         port=port, workers=1, server="granian", redis_url=redis_url)
    try:
        serving.wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
        body = json.dumps({"blob": "x" * (3 * 1024 * 1024)}).encode()  # ~48x the limit
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            status, headers, answer = _exchange(sock, (
                f"POST /v1/ping HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            took = time.monotonic() - started
            assert status == 413, answer
            error = json.loads(answer)["error"]
            assert error["message"] == f"request body exceeds the limit of {limit} bytes"
            assert headers.get("connection", "").lower() != "close", headers
            # The body was read to its end: the same connection carries the next request.
            status, _, answer = _exchange(sock, b"GET /v1/ping HTTP/1.1\r\nHost: test\r\n\r\n")
            assert (status, json.loads(answer)) == (200, {"ok": True})
        print(f"413 for a {len(body)} byte body in {took * 1000:.1f} ms, connection reused")
    finally:
        serving.stop_process(proc)
