"""API keys: 401 without a valid key, 403 naming the missing scope, 429 past a key's rate,
revocation seen by every replica within 2 s, open health and (by default) metrics, and
``mlsuite keys`` on a real Redis.

Each "replica" is its own app with its own key cache, on the one real Redis, as the
worker processes of a real deployment are.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from flask import Flask, jsonify
from flask.testing import FlaskClient

from mlplatform.config import Settings
from mlplatform.http import create_service_app
from mlplatform.security import KeyStore, requires
from mlplatform.security.keys import CACHE_SECONDS, bearer


def _app(settings: Settings) -> Flask:
    app = create_service_app("authdemo", settings)

    @app.post("/v1/score")
    @requires("score")
    def score():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    @app.get("/v1/open")
    @requires(None)
    def open_view():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    @app.get("/v1/secret")  # nothing declared: admin only
    def secret():  # type: ignore[no-untyped-def]
        return jsonify({"salt": "s3cret"})

    return app


@pytest.fixture
def on(settings: Settings) -> Settings:
    return settings.with_(auth=True)


@pytest.fixture
def store(redis_client: redis.Redis) -> KeyStore:
    return KeyStore(redis_client)


def _error(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_a_request_without_a_valid_key_gets_401_with_a_bearer_challenge(on: Settings) -> None:
    client = _app(on).test_client()
    for headers, says in [({}, "needs an API key"),
                          ({"Authorization": "Basic dXNlcjpwdw=="}, "Bearer <key>"),
                          ({"Authorization": "Bearer "}, "Bearer <key>"),
                          (bearer("mls_00000000_not-a-real-key"), "not valid")]:
        response = client.post("/v1/score", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = _error(response)
        assert error["code"] == "unauthorized" and says in error["message"], error


def test_a_key_without_the_scope_gets_403_naming_it(on: Settings, store: KeyStore) -> None:
    client = _app(on).test_client()
    label_key, _ = store.create("labels-only", ("label",))
    response = client.post("/v1/score", headers=bearer(label_key))
    assert response.status_code == 403
    error = _error(response)
    assert error["field"] == "scope" and error["details"]["scope"] == "score"
    assert "'score'" in error["message"]
    score_key, _ = store.create("scorer", ("score",))
    assert client.post("/v1/score", headers=bearer(score_key)).status_code == 200
    # A view that declares nothing is admin-only: forgetting closes, it never opens.
    assert client.get("/v1/secret", headers=bearer(score_key)).status_code == 403
    admin_key, _ = store.create("ops", ("admin",))
    assert client.get("/v1/secret", headers=bearer(admin_key)).get_json() == {"salt": "s3cret"}
    assert client.post("/v1/score", headers=bearer(admin_key)).status_code == 200


def test_a_refused_request_is_logged_with_its_key_id_never_the_key(
        on: Settings, store: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    client = _app(on).test_client()
    key, record = store.create("labels-only", ("label",))
    with caplog.at_level(logging.INFO, logger="authdemo.access"):
        response = client.post("/v1/score", headers={**bearer(key), "X-Request-ID": "r-1"})
        client.post("/v1/score")  # no key at all
        client.post("/v1/score", headers=bearer(store.create("s", ("score",))[0]))
        client.get("/v1/users/alice@example.com", headers=bearer(key))  # no such route
    lines = [r.getMessage() for r in caplog.records if r.name == "authdemo.access"]
    assert response.status_code == 403
    assert lines[0].startswith("POST /v1/score 403 ")
    assert "request=r-1" in lines[0] and f"key={record.id}" in lines[0]
    assert lines[1].startswith("POST /v1/score 401 ") and lines[1].endswith("key=-")
    # The route, never the path: a path may hold a card number or a user id.
    assert lines[2].startswith("GET <unmatched> 404 ") and "alice" not in lines[2]
    assert len(lines) == 3  # an answered request is logged at DEBUG only
    assert not any(key in r.getMessage() for r in caplog.records)


def test_health_readiness_and_open_views_need_no_key_and_metrics_is_a_setting(
        on: Settings, store: KeyStore) -> None:
    client = _app(on).test_client()
    for path in ("/healthz", "/readyz", "/v1/open", "/metrics"):
        assert client.get(path).status_code == 200, path
    closed = _app(on.with_(metrics_auth=True)).test_client()
    assert closed.get("/metrics").status_code == 401
    key, _ = store.create("prometheus", ("admin",))
    assert closed.get("/metrics", headers=bearer(key)).status_code == 200


def test_a_revoked_key_stops_working_on_every_replica_within_2_seconds(
        on: Settings, store: KeyStore) -> None:
    replicas = [_app(on).test_client() for _ in range(3)]
    key, record = store.create("partner", ("score",))
    for client in replicas:  # each replica has it in its cache now
        assert client.post("/v1/score", headers=bearer(key)).status_code == 200
    revoked_at = time.monotonic()
    assert [r.id for r in store.revoke(record.id)] == [record.id]
    refused: dict[int, float] = {}
    while len(refused) < len(replicas) and time.monotonic() - revoked_at < 5:
        for i, client in enumerate(replicas):
            if i not in refused and client.post("/v1/score", headers=bearer(key)).status_code == 401:
                refused[i] = time.monotonic() - revoked_at
        time.sleep(0.05)  # poll interval of the deadline loop above
    assert len(refused) == len(replicas), refused
    assert max(refused.values()) < 2.0, refused
    assert CACHE_SECONDS <= 1.0
    assert not any(r.active for r in store.all() if r.id == record.id)


def test_a_key_over_its_rate_gets_429_with_retry_after_shared_by_replicas(
        on: Settings, store: KeyStore) -> None:
    a, b = _app(on).test_client(), _app(on).test_client()
    key, _ = store.create("slow partner", ("score",), rate_per_second=5)
    started = time.monotonic()
    statuses = [(a if i % 2 else b).post("/v1/score", headers=bearer(key)) for i in range(30)]
    elapsed = time.monotonic() - started
    ok = [r for r in statuses if r.status_code == 200]
    limited = [r for r in statuses if r.status_code == 429]
    # A second's burst (6 at once: GCRA allows while the backlog is <= 1 s), then 5 a
    # second for as long as the requests took, on both replicas together; not 30.
    allowed = 6 + 5 * elapsed
    assert 5 <= len(ok) <= allowed + 1, ([r.status_code for r in statuses], elapsed)
    assert limited, "no request was limited"
    error = _error(limited[0])
    assert error["code"] == "rate_limited" and int(limited[0].headers["Retry-After"]) >= 1
    # Another key has its own budget.
    other, _ = store.create("other partner", ("score",), rate_per_second=5)
    assert a.post("/v1/score", headers=bearer(other)).status_code == 200


def test_keys_are_stored_hashed(store: KeyStore, redis_client: redis.Redis) -> None:
    key, record = store.create("hash check", ("score",))
    dump = b"".join(k + v for k, v in redis_client.hgetall("mlsuite:auth:keys").items())
    assert key.encode() not in dump and key.split("_", 2)[2].encode() not in dump
    assert record.id.encode() in dump


def test_redis_down_answers_503_naming_redis(on: Settings, store: KeyStore) -> None:
    key, _ = store.create("any", ("score",))
    client: FlaskClient = _app(on.with_(redis_url="redis://127.0.0.1:9/0")).test_client()
    response = client.post("/v1/score", headers=bearer(key))
    assert response.status_code == 503
    error = _error(response)
    assert error["details"]["dependency"] == "redis" and "127.0.0.1" not in json.dumps(error)
    assert response.headers["Retry-After"]


def test_auth_off_is_logged_as_a_warning(settings: Settings,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client = _app(settings.with_(auth=False)).test_client()
    assert client.post("/v1/score").status_code == 200
    assert any("MLSUITE_AUTH=off" in r.getMessage() for r in caplog.records)


def _mlsuite(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSUITE_REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "mlplatform", "keys", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_keys_command_creates_lists_and_revokes(settings: Settings, redis_url: str) -> None:
    made = _mlsuite(redis_url, "create", "--name", "payments team", "--scopes", "score,label")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mls_") and "shown once" in made.stderr
    client = _app(settings.with_(auth=True)).test_client()
    assert client.post("/v1/score", headers=bearer(key)).status_code == 200

    listed = _mlsuite(redis_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["scopes"]) for r in rows] == [("payments team", ["label", "score"])]
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    assert _mlsuite(redis_url, "revoke", "payments team").returncode == 0
    assert _mlsuite(redis_url, "list", "--json").stdout.strip() == "[]"
    assert _mlsuite(redis_url, "revoke", "payments team").returncode == 1

    bad = _mlsuite(redis_url, "create", "--name", "x", "--scopes", "score,fly")
    assert bad.returncode == 2 and "unknown scope 'fly'" in bad.stderr


def test_secrets_are_masked_in_every_log_line(store: KeyStore) -> None:
    import io

    from mlplatform.logs import configure_logging

    key, record = store.create("log check", ("score",))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        configure_logging("INFO")
        log = logging.getLogger("mlsuite.test")
        log.warning("client sent %s to redis://app:hunter22@cache:6379/0", key)
        try:
            raise RuntimeError(f"Authorization: Bearer {key}")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    secret = key.split("_", 2)[2]
    assert secret not in text and "hunter22" not in text, text
    assert f"mls_{record.id}_***" in text and "redis://app:***@cache:6379/0" in text


@pytest.mark.parametrize("module", ["mlplatform.logs", "mlplatform.security.keys",
                                    "mlplatform.security.ratelimit"])
def test_doctests(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_with_redis_down_a_recently_seen_key_keeps_reads_working(
        on: Settings, tmp_path: Any) -> None:
    from mlplatform.redisdb import EmbeddedRedis, connect, free_port

    server = EmbeddedRedis(tmp_path / "keys-outage", port=free_port())
    url = server.start()
    try:
        store = KeyStore(connect(url))
        key, _ = store.create("shop", ("score",))
        client = _app(on.with_(redis_url=url)).test_client()
        assert client.post("/v1/score", headers=bearer(key)).status_code == 200
        server.stop()
        time.sleep(CACHE_SECONDS + 0.2)  # past the fresh cache: the lookup must go to Redis
        assert client.post("/v1/score", headers=bearer(key)).status_code == 200
        unknown = client.post("/v1/score", headers=bearer("mls_00000000_never-seen-here"))
        assert unknown.status_code == 503
        assert unknown.get_json()["error"]["details"]["dependency"] == "redis"
    finally:
        server.stop()
