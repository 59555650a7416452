"""A user id never reaches Redis, the streams, the lake, Feast or a model as it was sent.

The real recommender (a werkzeug server on a free port, the small simulated shop) takes
events, recommendation requests and a profile edit for a user id that is an e-mail
address; the worker runs in this process and applies them, then every stream is archived
to the lake. Every Redis key and value, every file of the data folder (parquet and npz
read cell by cell) and every captured log line is searched: the raw id appears nowhere,
its token does (so the search can fail). A known simulated user is still served by the
model, not the cold-start fallback: training and serving agree on tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from mlplatform.config import Settings
from mlplatform.lake import Lake
from mlplatform.registry import ModelRegistry
from mlplatform.retention import Archiver
from mlplatform.security.pii import tokeniser
from mlplatform.worker import Worker
from recommender.attribution import EXPOSURES_STREAM
from recommender.history import STREAM_KEY
from recommender.updates import OVERRIDES_HASH, UPDATES_STREAM
from recommender.worker import DEAD_LETTERS

from .conftest import ONLY, only

RAW = "alice@example.com"
STREAMS = (STREAM_KEY, EXPOSURES_STREAM, UPDATES_STREAM, DEAD_LETTERS)


@pytest.fixture
def served_url(make_app: Callable[..., Flask]) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", 0, make_app(**{ONLY: only("als")}),
                                         threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


# -- where an id could hide ------------------------------------------------------------

def redis_texts(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """(key, blob) for every key name and every value of every key, by its type."""
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        yield name, key
        kind = client.type(key).decode()  # type: ignore[union-attr]
        values: list[Any]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [x for kv in client.hgetall(key).items() for x in kv]  # type: ignore[union-attr]
        elif kind == "list":
            values = client.lrange(key, 0, -1)  # type: ignore[assignment]
        elif kind == "set":
            values = list(client.smembers(key))  # type: ignore[arg-type]
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]  # type: ignore[union-attr]
        elif kind == "stream":
            values = [x for _, fields in client.xrange(key) for kv in fields.items()  # type: ignore[union-attr]
                      for x in kv]
        else:
            raise AssertionError(f"{name}: a {kind} the scan does not read")
        for value in values:
            yield name, value if isinstance(value, bytes) else str(value).encode()


def file_texts(path: Path) -> Iterator[bytes]:
    """The bytes of ``path`` and, for the formats that encode or compress text (parquet,
    npz), each cell's text."""
    data = path.read_bytes()
    yield data
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        yield str(table.schema.metadata or {}).encode()
        for column in table.columns:
            yield "\x1f".join(map(str, column.to_pylist())).encode()
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            for name in arrays.files:
                yield "\x1f".join(map(str, arrays[name].ravel().tolist())).encode()


def holds(blob: bytes, text: str) -> bool:
    """``text`` in ``blob`` as UTF-8, UTF-16 or UTF-32 (numpy keeps strings as UTF-32)."""
    return any(text.encode(codec) in blob for codec in ("utf-8", "utf-16-le", "utf-32-le"))


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()
            and any(holds(blob, text) for blob in file_texts(p))]


# -- the test ----------------------------------------------------------------------------

def test_a_user_id_is_a_token_everywhere_past_the_edge(
        served_url: str, served_settings: Settings, worker: Worker, known_user: str,
        redis_client: redis.Redis, wait_for: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    token = tokeniser(served_settings).token("user", RAW)
    http = requests.Session()

    def ok(response: requests.Response, status: int) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    # Recommendations: one user, then a batch; the client gets its own ids back.
    first = ok(http.get(f"{served_url}/v1/users/{RAW}/recommendations"), 200)
    assert first["user_id"] == RAW and first["fallback"] is True
    item = first["items"][0]["item_id"]
    # Events in each of the three shapes; a cart and a purchase of a shown item convert.
    ok(http.post(f"{served_url}/v1/events",
                 json={"user_id": RAW, "item_id": item, "event_type": "view"}), 201)
    ok(http.post(f"{served_url}/v1/events",
                 json=[{"user_id": RAW, "item_id": item, "event_type": "add_to_cart"}]), 201)
    ok(http.post(f"{served_url}/v1/events", json={"events": [
        {"user_id": RAW, "item_id": item, "event_type": "purchase"}]}), 201)
    batch = ok(http.post(f"{served_url}/v1/recommendations/batch",
                         json={"user_ids": [RAW, known_user], "n": 5}), 200)
    assert [r["user_id"] for r in batch["results"]] == [RAW, known_user]
    # A known simulated user is served by the model: the file's ids were tokenised where
    # training read them, as the request's id is here.
    known = ok(http.get(f"{served_url}/v1/users/{known_user}/recommendations"), 200)
    assert (known["user_id"], known["fallback"], known["strategy"]) == (known_user, False, "als")
    assert batch["results"][1]["fallback"] is False
    ok(http.put(f"{served_url}/v1/users/{RAW}", json={"segment": "tech", "country": "DE"}), 202)

    # The worker applies it all: the profile edit pushed to Feast, every event counted.
    wait_for("the profile edit to reach feast",
             lambda: redis_client.hexists(OVERRIDES_HASH, token), timeout=15)

    def drained() -> bool:
        for stream in (STREAM_KEY, EXPOSURES_STREAM, UPDATES_STREAM):
            for group in redis_client.xinfo_groups(stream):
                if group["pending"] or group.get("lag"):
                    return False
        return True

    wait_for("the worker's groups to apply every entry", drained, timeout=15)
    # The A/B analysis joins exposures and conversions on the token: alice's cart and
    # purchase of an item she was shown convert (both users are in the one variant).
    als = ok(http.get(f"{served_url}/v1/experiments/recommender_model"), 200)["variants"]["als"]
    assert (als["users"], als["conversions"], als["purchases"]) == (2, 1, 1), als
    # Every stream archived to the lake (retention 0: all of it, as the worker would later).
    lake = Lake.from_settings(served_settings)
    archived = {s: Archiver(redis_client, lake, s, retention_seconds=0).run_once().archived
                for s in STREAMS if redis_client.exists(s)}
    assert archived[STREAM_KEY] >= 3 and archived[EXPOSURES_STREAM] >= 3, archived

    # Redis: no key or value holds the raw id; the token is the history's key and more.
    leaks = sorted({name for name, blob in redis_texts(redis_client) if holds(blob, RAW)})
    assert leaks == [], f"raw user id in redis keys/values: {leaks}"
    with_token = {name for name, blob in redis_texts(redis_client) if holds(blob, token)}
    assert f"mlsuite:rec:hist:{token}" in with_token, sorted(with_token)
    assert OVERRIDES_HASH in with_token

    # The data folder: the lake, Feast's online store, the models, everything.
    data_dir = Path(served_settings.data_dir)
    assert files_holding(data_dir, RAW) == []
    found = files_holding(data_dir, token)
    assert any(p.suffix == ".parquet" and lake.root in p.parents for p in found), found
    assert any("feast" in p.parts for p in found), f"the token is not in feast: {found}"

    # The model knows the simulated users by their tokens, never by the file's ids.
    model = ModelRegistry(data_dir / "models").resolve("recommender", "production").path
    known_token = tokeniser(served_settings).token("user", known_user)
    assert files_holding(model, known_token) and not files_holding(model, known_user)

    # Nothing the service logged holds the id (INFO and above, its default). werkzeug's
    # lines are this test's development server's: the production servers (granian,
    # gunicorn) write no access log.
    assert not [r.getMessage() for r in caplog.records
                if RAW in r.getMessage() and r.name != "werkzeug"]
