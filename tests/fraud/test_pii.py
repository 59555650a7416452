"""Card and device ids never stored as sent: a PAN-like card id goes through scoring,
a label, lists, a profile update, a review and the worker; then every Redis key and value,
every file of the data folder (the lake's parquet read back) and the captured logs are
searched for it. Its token must be there instead (so the search can fail)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from flask import Flask

from fraud.app import get_service
from fraud.pii import tokenise_columns, tokenise_profile_file
from fraud.schema import read_transactions
from fraud.worker import FraudJobs
from mlplatform.lake import Lake
from mlplatform.retention import Archiver
from mlplatform.security.pii import Tokeniser

Tx = Callable[..., dict[str, Any]]

PAN = "4111111111111111"
DEVICE = "device-7f3a9c21e4"
CARD = {"home_country": "BR", "card_age_days": 3, "avg_amount": 2500.0}


def _redis_dump(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key with its whole value, whatever its type, as bytes."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            raise AssertionError(f"key {key!r} of type {kind} is not dumped by this test")
        yield key, repr(value).encode()


def _file_texts(folder: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under ``folder``: its bytes, and for parquet its rows read back (pages
    may be compressed, so the bytes alone could hide a value)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += pd.read_parquet(path).to_json(orient="records", default_handler=str
                                                  ).encode()
        yield path, data


def test_a_pan_scored_listed_labelled_and_reviewed_is_stored_nowhere_but_its_token_is(
        make_app: Callable[..., Flask], tx: Tx, worker: FraudJobs, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture, wait_for: Callable[..., Any]) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    client = app.test_client()
    service = get_service(app)
    card, device = service.pii.token("card", PAN), service.pii.token("device", DEVICE)
    stamp = time.time_ns()

    # 150,000 opens a review case (rules.toml amount_limit); the second is an ordinary one.
    big = tx(f"pii-big-{stamp}", card_id=PAN, device_id=DEVICE, amount=150_000.0)
    small = tx(f"pii-small-{stamp}", card_id=PAN, device_id=DEVICE, amount=12.0)
    scored = [client.post("/v1/transactions/score", json=b) for b in (big, small)]
    assert [r.status_code for r in scored] == [200, 200], [r.get_json() for r in scored]
    assert scored[0].get_json()["decision"] == "review"
    batch = client.post("/v1/transactions/score/batch", json={"transactions": [
        tx(f"pii-batch-{stamp}", card_id=PAN, device_id=DEVICE, amount=30.0)]})
    assert batch.status_code == 200, batch.get_json()

    labelled = client.post("/v1/labels", json={"transaction_id": small["transaction_id"],
                                                "is_fraud": True})
    assert labelled.status_code == 202, labelled.get_json()
    listed = client.put(f"/v1/lists/blocked_cards/{PAN}", json={"reason": "reported stolen"})
    assert listed.status_code == 201 and listed.get_json()["value"] == card
    assert client.put(f"/v1/lists/blocked_devices/{DEVICE}").status_code == 201
    # A token seen in a review case or a list is accepted back as it is.
    assert client.put(f"/v1/lists/trusted_cards/{card}").get_json()["value"] == card
    lists = client.get("/v1/lists").get_json()["lists"]
    assert [v["value"] for v in lists["blocked_cards"]["values"]] == [card]
    assert [v["value"] for v in lists["blocked_devices"]["values"]] == [device]
    blocked = client.post("/v1/transactions/score", json=tx(
        f"pii-blocked-{stamp}", card_id=PAN, amount=5.0)).get_json()
    assert blocked["decision"] == "decline", "the listed card's token matches the request's"

    assert client.put(f"/v1/cards/{PAN}", json=CARD).status_code == 202
    cases = client.get("/v1/reviews").get_json()["cases"]
    assert big["transaction_id"] in [c["transaction_id"] for c in cases]
    closed = client.post(f"/v1/reviews/{big['transaction_id']}",
                         json={"outcome": "fraud", "analyst": "a1"})
    assert closed.status_code == 200, closed.get_json()

    # The worker learns the labels and pushes the card's profile to Feast, by token.
    wait_for("the profile pushed to feast", lambda: worker.pusher.pushes >= 1)
    assert client.get("/v1/model?sync=true").status_code == 200
    fresh = make_app()
    features = json.loads(get_service(fresh).decisions.fetch([big["transaction_id"]])[0]
                          or b"{}")["features"]
    assert features, "the decision record holds its features"
    assert fresh.test_client().post("/v1/transactions/score", json=tx(
        f"pii-fresh-{stamp}", card_id=PAN)).status_code == 200
    # Every stream to the lake, as the worker's retention does.
    lake = Lake.from_settings(service.settings)
    streams = [k.decode() for k in redis_client.scan_iter(_type="STREAM")]
    for stream in streams:
        Archiver(redis_client, lake, stream, retention_seconds=0).run_once(now=time.time() + 1)

    raw = (PAN.encode(), DEVICE.encode())
    token_seen: list[str] = []
    for key, value in _redis_dump(redis_client):
        blob = key + b" " + value
        assert not any(r in blob for r in raw), f"redis key {key!r} holds a raw id"
        if card.encode() in blob or device.encode() in blob:
            token_seen.append(key.decode())
    assert any(":v:" in k or "v:c" in k for k in token_seen), \
        f"no velocity key by the card's token among {token_seen}"
    assert len(token_seen) >= 3, token_seen

    files_with_token = []
    for path, data in _file_texts(Path(service.settings.data_dir)):
        assert not any(r in data for r in raw), f"{path} holds a raw id"
        if card.encode() in data:
            files_with_token.append(path)
    lake_dir = Path(lake.root)
    assert any(p.suffix == ".parquet" and lake_dir in p.parents for p in files_with_token), \
        f"the lake holds no token: {files_with_token}"
    assert any("feast" in str(p) for p in files_with_token), \
        f"the feast online store holds no token: {files_with_token}"
    # Every log line, the access log's included (it names the route, not the path).
    assert "fraud.access" in {r.name for r in caplog.records}
    assert card in caplog.text, "the list changes are logged, by token"
    assert PAN not in caplog.text and DEVICE not in caplog.text


def test_a_refused_request_logs_its_route_not_the_id_in_its_path(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    refused = client.put(f"/v1/lists/blocked_cards/{PAN}", json={"why": "x"})
    assert refused.status_code == 400  # logged at INFO, as every refused request
    assert "fraud.access" in {r.name for r in caplog.records}
    assert PAN not in caplog.text


def test_a_transaction_file_is_tokenised_as_it_is_read_fast(tmp_path: Path) -> None:
    pii = Tokeniser(b"k" * 32)
    n = 100_000
    frame = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(n)], "timestamp": 1735689600.0,
        "card_id": [f"4{i % 20_000:015d}" for i in range(n)],
        "merchant_id": "m1", "amount": 10.0, "currency": "EUR", "country": "FR",
        "channel": "online",
        "device_id": [None if i % 3 else f"d{i % 5000}" for i in range(n)],
        "is_fraud": False})
    path = tmp_path / "transactions.parquet"
    frame.to_parquet(path)
    ids = frame[["card_id", "device_id"]].copy()
    started = time.perf_counter()
    tokenise_columns(ids, Tokeniser(b"other" * 8))  # a cold memo, as on start-up
    cold = time.perf_counter() - started
    assert cold < 1.0, f"tokenising 100k rows (20k cards, 5k devices) took {cold:.2f}s"
    out = read_transactions(path, pii=pii)
    assert out["card_id"].iloc[0] == pii.token("card", frame["card_id"].iloc[0])
    assert not out["card_id"].str.fullmatch(r"4\d{15}").any()
    assert out["device_id"].isna().sum() == int((frame["device_id"].isna()).sum())
    # Tokens are idempotent: reading a tokenised file again changes nothing.
    again = tokenise_columns(out.copy(), pii)
    assert again["card_id"].tolist() == out["card_id"].tolist()


def test_the_card_profile_file_is_tokenised_once_in_place(tmp_path: Path) -> None:
    pii = Tokeniser(b"k" * 32)
    (tmp_path / "payments").mkdir()
    path = tmp_path / "payments" / "cards.parquet"
    pd.DataFrame({"card_id": pd.Series([PAN, "c2"], dtype="string"),
                  "avg_amount": [1.0, 2.0]}).to_parquet(path)
    assert tokenise_profile_file(tmp_path, pii) is True
    assert tokenise_profile_file(tmp_path, pii) is False  # tokens already
    cards = pd.read_parquet(path)
    assert cards["card_id"].tolist() == [pii.token("card", PAN), pii.token("card", "c2")]
    assert str(cards["card_id"].dtype) == "string"
    assert PAN.encode() not in path.read_bytes()


def test_a_folder_materialised_with_card_ids_serves_profiles_by_token_after_the_hook(
        tmp_path: Path, payments_dir: Path, redis_url: str) -> None:
    """``make demo`` materialises Feast before the fraud hook runs (ensure_model): the hook
    tokenises the card file and loads it again, once."""
    import shutil

    from fraud.cli import tokenise_profiles
    from mlplatform.config import Settings
    from mlplatform.features import FeatureStoreAdapter
    from mlplatform.security.pii import tokeniser

    shutil.copytree(payments_dir, tmp_path / "payments")
    settings = Settings.from_env({}).with_(data_dir=tmp_path, redis_url=redis_url)
    store = FeatureStoreAdapter.from_settings(settings)
    store.apply()
    store.materialize()
    raw = str(pd.read_parquet(tmp_path / "payments" / "cards.parquet")["card_id"].iloc[0])
    token = tokeniser(settings).token("card", raw)
    refs = ["card_profile:avg_amount"]
    assert store.online_feature(refs, {"card_id": token})["avg_amount"] is None
    assert tokenise_profiles(settings) is True
    assert tokenise_profiles(settings) is False, "a tokenised file is left as it is"
    fresh = FeatureStoreAdapter.from_settings(settings)
    assert fresh.online_feature(refs, {"card_id": token})["avg_amount"] is not None
