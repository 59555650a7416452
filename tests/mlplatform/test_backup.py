"""Backup and restore: a trained data folder and a Redis full of live state, backed up,
verified, restored into an empty folder and a fresh Redis, answer the same, and
accept the same API keys.

Real everything: the simulator's data, Feast applied and materialized, both apps'
production models, the apps' Flask test clients on real redis-servers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from mlplatform.backup import (
    MANIFEST,
    BackupError,
    create_backup,
    restore_backup,
    verify_backup,
)
from mlplatform.backup_cli import backup as backup_group
from mlplatform.config import Settings, get_settings
from mlplatform.redisdb import EmbeddedRedis, connect
from mlplatform.security.keys import KeyStore, bearer

pytestmark = pytest.mark.slow

USERS = 4
PROBES = 6


def _settings(**changes: Any) -> Settings:
    # Most requests here carry no key; the key test turns auth back on.
    return Settings.from_env({"MLSUITE_AUTH": "off"}).with_(**changes)


@dataclass
class Source:
    """A backup, and what the source answered right after it was taken."""

    backup: Path
    recommendations: dict[str, list[Any]]
    scores: list[dict[str, Any]]
    lists: Any
    reviews: Any
    probes: list[dict[str, Any]]
    users: list[str]
    key: str  # an active key (recommend, score), made before the backup
    revoked_key: str  # a key revoked before the backup: it must stay revoked


def _apps(settings: Settings) -> tuple[Any, Any]:
    from fraud.app import create_app as fraud_app
    from recommender.app import create_app as recommender_app

    return (recommender_app(settings, {"TESTING": True}),
            fraud_app(settings, {"TESTING": True}))


def _close(rec: Any, fraud: Any) -> None:
    """Stop both apps' background threads before their Redis goes away."""
    from fraud.app import get_service

    rec.extensions["recommender.engine"].stop()
    get_service(fraud).close()


def _answers(rec: Any, fraud: Any, users: list[str], probes: list[dict[str, Any]]
             ) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    recs = {}
    for user in users:
        resp = rec.test_client().get(f"/v1/users/{user}/recommendations?n=10")
        assert resp.status_code == 200, resp.get_json()
        recs[user] = resp.get_json()["items"]
    scores = []
    for probe in probes:  # scoring changes velocity: each probe is scored once per side
        resp = fraud.test_client().post("/v1/transactions/score", json=probe)
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        # The model version too: a restore must serve the model the backup had.
        scores.append({k: body[k] for k in ("score", "decision", "reasons", "model_version")})
    return recs, scores


def _timeless(reviews: dict[str, Any]) -> dict[str, Any]:
    """The review list without each case's age (seconds since scoring: it grows)."""
    return {**reviews, "cases": [{k: v for k, v in case.items() if k != "age_seconds"}
                                 for case in reviews["cases"]]}


def _transaction(row: Any, tid: str, when: str) -> dict[str, Any]:
    body = {"transaction_id": tid, "timestamp": when, "card_id": row.card_id,
            "merchant_id": row.merchant_id, "amount": float(row.amount) * 3,
            "currency": row.currency, "country": row.country, "channel": row.channel}
    if row.device_id:
        body["device_id"] = row.device_id
    return body


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, sim_data_dir: Path,
           redis_url: str) -> Iterator[Source]:
    """Train a data folder, give its Redis live state, back both up; the answers after."""
    from mlplatform.demo import prepare_models
    from mlplatform.features import FeatureStoreAdapter

    root = tmp_path_factory.mktemp("backup-source")
    data_dir = root / "data"
    for part in ("shop", "payments"):
        shutil.copytree(sim_data_dir / part, data_dir / part)
    client = connect(redis_url)
    client.flushall()
    settings = _settings(data_dir=data_dir, redis_url=redis_url)
    store = FeatureStoreAdapter.from_settings(settings)
    store.apply()
    store.materialize()
    prepare_models(settings, ["recommender", "fraud"])  # seeds velocity state too

    shop = pd.read_parquet(data_dir / "shop" / "interactions.parquet")
    users = shop["user_id"].drop_duplicates().head(USERS).tolist()
    items = shop["item_id"].drop_duplicates().tail(3).tolist()
    payments = pd.read_parquet(data_dir / "payments" / "transactions.parquet").tail(40)
    keys = KeyStore(client)
    key, _ = keys.create("backup-test", ("recommend", "score"))
    revoked_key, revoked = keys.create("backup-revoked", ("recommend",))
    keys.revoke(revoked.id)
    rec, fraud = _apps(settings)
    try:
        # Without the live histories the answers would differ: restoring only the files
        # must not be enough to pass.
        untouched = {u: rec.test_client().get(f"/v1/users/{u}/recommendations?n=10")
                     .get_json()["items"] for u in users}
        # Live state: histories and the events stream, velocity, decisions and their
        # stream, labels, a list entry, an open review case.
        events = [{"user_id": u, "item_id": i, "event_type": "purchase"}
                  for u in users for i in items]
        assert rec.test_client().post("/v1/events", json=events).status_code == 201
        for n, row in enumerate(payments.head(20).itertuples()):
            body = _transaction(row, f"t-state-{n}", "2025-01-31T00:10:00Z")
            assert fraud.test_client().post("/v1/transactions/score",
                                            json=body).status_code == 200
        labels = [{"transaction_id": "t-state-0", "is_fraud": True},
                  {"transaction_id": "t-state-1", "is_fraud": False}]
        assert fraud.test_client().post("/v1/labels", json=labels).status_code == 202
        assert fraud.test_client().put("/v1/lists/blocked_devices/d-stolen",
                                       json={"reason": "test"}).status_code == 201
        client.zadd("fraud:reviews:open", {"t-state-2": 1738282200.0})
        lists = fraud.test_client().get("/v1/lists").get_json()
        reviews = fraud.test_client().get("/v1/reviews").get_json()
        assert reviews["cases"], "the review case must be listed before the backup"

        backup_dir = root / "backup"
        runner = CliRunner()
        env = {"MLSUITE_DATA_DIR": str(data_dir), "MLSUITE_REDIS_URL": redis_url,
               "MLSUITE_AUTH": "off"}
        get_settings.cache_clear()
        result = runner.invoke(backup_group, ["create", str(backup_dir)], env=env)
        get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        # Probes on cards with state, scored after the backup: the restored copy must
        # start from the same state and so give the same answers.
        probes = [_transaction(row, f"t-probe-{n}", "2025-01-31T00:20:00Z")
                  for n, row in enumerate(payments.head(PROBES).itertuples())]
        recs, scores = _answers(rec, fraud, users, probes)
    finally:
        _close(rec, fraud)
    assert any(recs.values()) and scores
    assert recs != untouched, "the events posted must change the recommendations"
    yield Source(backup_dir, recs, scores, lists, reviews, probes, users, key, revoked_key)


@pytest.fixture
def restored(source: Source, tmp_path: Path) -> Iterator[Settings]:
    """The backup restored into an empty folder and its own, new, embedded Redis."""
    target = tmp_path / "restored"
    report = restore_backup(source.backup, _settings(data_dir=target))
    manifest = json.loads((source.backup / MANIFEST).read_text())
    assert report.keys == manifest["redis"]["keys"] > 0
    server = EmbeddedRedis(target)  # loads the append-only file restore left
    url = server.start()
    try:
        assert server.owned, "the restored folder must get a fresh server, not a running one"
        yield _settings(data_dir=target, redis_url=url)
    finally:
        server.stop()


def test_a_restored_backup_gives_the_same_recommendations_and_scores(
        source: Source, restored: Settings) -> None:
    assert connect(restored.redis_url or "").xlen("fraud:labels") >= 2
    rec, fraud = _apps(restored)
    try:
        # Lists and cases as they were at the backup (probes open review cases of their own).
        assert fraud.test_client().get("/v1/lists").get_json() == source.lists
        assert _timeless(fraud.test_client().get("/v1/reviews").get_json()) == \
            _timeless(source.reviews)
        recs, scores = _answers(rec, fraud, source.users, source.probes)
        assert recs == source.recommendations
        assert scores == source.scores
    finally:
        _close(rec, fraud)


def test_a_corrupted_file_fails_verify_and_restore(source: Source, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(source.backup, copy)
    assert verify_backup(copy) == []
    victim = max((p for p in (copy / "data" / "models").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)  # a model artifact
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    problems = verify_backup(copy)
    rel = victim.relative_to(copy).as_posix()
    assert [str(p) for p in problems] == [f"{rel}: sha256 differs from the manifest"]
    result = CliRunner().invoke(backup_group, ["verify", str(copy)])
    assert result.exit_code == 1 and f"FAILED {rel}" in result.output
    target = tmp_path / "target"
    with pytest.raises(BackupError, match="fails verification"):
        restore_backup(copy, _settings(data_dir=target))
    assert not target.exists(), "nothing may be restored from a backup that fails verify"


def test_restore_refuses_a_folder_or_redis_that_is_not_empty(
        source: Source, tmp_path: Path, redis_url: str) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(BackupError, match="not empty.*--force"):
        restore_backup(source.backup, _settings(data_dir=busy))
    client = connect(redis_url)
    client.flushall()
    client.set("someone:else", "1")
    with pytest.raises(BackupError, match="holds 1 keys"):
        restore_backup(source.backup, _settings(
            data_dir=tmp_path / "empty", redis_url=redis_url))
    assert client.dbsize() == 1 and not list((tmp_path / "empty").glob("models"))


def test_api_keys_survive_a_restore(source: Source, restored: Settings) -> None:
    rec, fraud = _apps(restored.with_(auth=True))
    try:
        url = f"/v1/users/{source.users[0]}/recommendations?n=3"
        client = rec.test_client()
        assert client.get(url).status_code == 401
        assert client.get(url, headers=bearer(source.key)).status_code == 200
        assert client.get(url, headers=bearer(source.revoked_key)).status_code == 401, \
            "a key revoked before the backup must stay revoked after the restore"
        # The key's scopes came back with it: it may score, not edit the lists.
        resp = fraud.test_client().get("/v1/lists", headers=bearer(source.key))
        assert resp.status_code == 403 and resp.get_json()["error"]["field"] == "scope", \
            resp.get_json()
    finally:
        _close(rec, fraud)


def test_a_cluster_is_backed_up_and_restored_on_every_master(
        cluster_url: str, cluster_client: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "note.txt").write_text("a model")
    for n in range(300):  # spread over every master's slots
        cluster_client.set(f"k{n}", n)
    stream = "{p1}:fraud:labels"  # a partitioned stream, its group and a pending entry
    cluster_client.xadd(stream, {"transaction_id": "t1"})
    cluster_client.xgroup_create(stream, "fraud-learner", id="0")
    cluster_client.xreadgroup("fraud-learner", "c1", {stream: ">"})
    cluster_client.set("velocity", 1, ex=600)
    settings = _settings(data_dir=data, redis_url=cluster_url)
    backup_dir = tmp_path / "backup"
    assert create_backup(settings, backup_dir).keys == 302

    cluster_client.flushall()
    # One key, on a master other than the one a plain DBSIZE asks: still not empty.
    default = cluster_client.get_default_node().name
    stray = next(k for k in (f"someone:{n}" for n in range(100))
                 if cluster_client.get_node_from_key(k).name != default)
    cluster_client.set(stray, "1")
    with pytest.raises(BackupError, match="holds 1 keys"):
        restore_backup(backup_dir, settings.with_(data_dir=tmp_path / "restored"))
    cluster_client.delete(stray)

    report = restore_backup(backup_dir, settings.with_(data_dir=tmp_path / "restored"))
    assert report.keys == 302
    assert [cluster_client.get(f"k{n}") for n in range(300)] == \
        [str(n).encode() for n in range(300)]
    group = cluster_client.xinfo_groups(stream)[0]
    assert (group["name"], group["pending"]) == (b"fraud-learner", 1)
    assert 0 < cluster_client.ttl("velocity") <= 600
    assert (tmp_path / "restored" / "models" / "note.txt").read_text() == "a model"
