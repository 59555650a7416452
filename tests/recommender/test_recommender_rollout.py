"""Recommender rollouts on real models, a real Redis and the real controller: canary
shares per user and per batch, a bad candidate rolled back under simulated shoppers, a
blue-green switch under load with no failed request, and a shadow that never answers.

Versions: v1 in production (the served template's model), v2 the same bundle registered
again (a healthy candidate), v3 ALS trained on shuffled interactions (a bad one).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
import requests
from flask import Flask
from werkzeug.serving import make_server

from mlplatform.assignment import in_rollout
from mlplatform.config import Settings
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts import RolloutStore
from mlplatform.rollouts.machine import parse_guard
from mlplatform.rollouts.measure import read_measurements
from mlplatform.worker import Worker
from recommender.engine import Engine

from .conftest import ONLY, only

NAME = "recommender"


@pytest.fixture(scope="session")
def rollout_template(tmp_path_factory: pytest.TempPathFactory, served_template: Path) -> Path:
    """The served folder plus v2 (a copy of v1) and v3 (trained on shuffled interactions)."""
    from recommender.cli import train_and_register

    data_dir = tmp_path_factory.mktemp("recommender-rollout")
    shutil.copytree(served_template, data_dir, dirs_exist_ok=True)
    registry = ModelRegistry(data_dir / "models")
    v1 = registry.resolve(NAME, "production")
    registry.register(NAME, writer=lambda d: shutil.copytree(v1.path, d, dirs_exist_ok=True,
                                                            ignore=shutil.ignore_patterns(
                                                                "metadata.json")),
                      params={"copy_of": 1}, metrics={}, data_fingerprint="copy")
    shop = data_dir / "shop"
    df = pd.read_parquet(shop / "interactions.parquet")
    rng = np.random.default_rng(3)
    df["item_id"] = rng.permutation(df["item_id"].to_numpy())  # who liked what: noise
    df.to_parquet(shop / "shuffled.parquet")
    settings = Settings.from_env({}).with_(data_dir=data_dir)
    bad = train_and_register(settings, interactions=shop / "shuffled.parquet",
                             variants=("als",), progress=False)
    assert (v1.version, bad.version) == (1, 3)
    return data_dir


@pytest.fixture
def rollout_settings(settings: Settings, rollout_template: Path,
                     redis_client: redis.Redis) -> Settings:
    shutil.copytree(rollout_template, settings.data_dir)
    from recommender.worker import publish_snapshots

    publish_snapshots(settings, redis_client)
    return settings.with_(model_poll_seconds=0.1)


@pytest.fixture
def store(rollout_settings: Settings, redis_client: redis.Redis) -> RolloutStore:
    return RolloutStore(redis_client, ModelRegistry(rollout_settings.data_dir / "models"))


@pytest.fixture
def make_app(rollout_settings: Settings) -> Iterator[Callable[..., Flask]]:
    from recommender.app import create_app

    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        app = create_app(rollout_settings, {"TESTING": True, ONLY: only("als"), **config})
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["recommender.engine"].stop()


@pytest.fixture
def worker(rollout_settings: Settings, redis_client: redis.Redis) -> Iterator[Worker]:
    """A recommender worker process's platform jobs (the rollout controller among them)."""
    running = Worker("recommender", rollout_settings, redis_client)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def users(rollout_template: Path) -> list[str]:
    """Known users as the engine sees them: by their tokens (the views tokenise)."""
    from mlplatform.security.pii import tokeniser

    df = pd.read_parquet(rollout_template / "shop" / "interactions.parquet")
    tokens = tokeniser(Settings.from_env({}).with_(data_dir=rollout_template))
    return tokens.tokens("user", sorted(df["user_id"].unique().tolist())[:200])


def engine_of(app: Flask) -> Engine:
    return app.extensions["recommender.engine"]  # type: ignore[no-any-return]


def candidate_loaded(engine: Engine, version: int) -> Callable[[], bool]:
    def check() -> bool:
        cand = engine.rollout.candidate if engine.rollout is not None else None
        return cand is not None and cand[0].version == version
    return check


def test_canary_share_is_stable_per_user_and_honoured_by_batches(wait_for: Callable[..., Any],
        make_app: Callable[..., Flask], store: RolloutStore, users: list[str]) -> None:
    r = store.start(NAME, 2, "canary", steps=(25.0, 50.0, 100.0))
    client = make_app().test_client()
    engine = engine_of(client.application)
    wait_for("the candidate to load", candidate_loaded(engine, 2))
    expected = {u: "recommender:v2" if in_rollout(NAME, u, 0.25) else "recommender:v1"
                for u in users}
    assert 20 < sum(m.endswith("v2") for m in expected.values()) < 80  # about a quarter
    for _ in range(2):  # the same user gets the same version every time
        served = {u: client.get(f"/v1/users/{u}/recommendations").get_json()["model"]
                  for u in users}
        assert served == expected
    _, batch, _ = engine.recommend(users, n=5)
    assert {res.user_id: res.model for res in batch} == expected
    body = client.post("/v1/recommendations/batch", json={"user_ids": users, "n": 5}).get_json()
    assert {res["user_id"]: res["model"] for res in body["results"]} == expected
    # Growing the share keeps every canary user on the candidate.
    assert store.save(r, dataclasses.replace(r, step=2, share=0.5))
    wait_for("the share to reach replicas",
             lambda: engine.rollout is not None and engine.rollout.rollout.share == 0.5)
    _, grown, _ = engine.recommend(users, n=5)
    moved = {res.user_id for res in grown if res.model.endswith("v2")}
    assert {u for u, m in expected.items() if m.endswith("v2")} < moved
    assert moved == {u for u in users if in_rollout(NAME, u, 0.5)}


def test_canary_limited_to_a_segment(wait_for: Callable[..., Any], make_app: Callable[..., Flask], store: RolloutStore,
                                     users: list[str]) -> None:
    engine = engine_of(make_app())
    b = engine.current().bundle
    segment = b.segments[int(b.user_segment[b.users.lookup(users[0])])]
    store.start(NAME, 2, "canary", steps=(100.0,), segment={"segment": segment})
    wait_for("the candidate to load", candidate_loaded(engine, 2))
    _, results, _ = engine.recommend(users, n=5)
    in_segment = {u for u in users
                  if b.segments[int(b.user_segment[b.users.lookup(u)])] == segment}
    assert 0 < len(in_segment) < len(users)
    assert {r.user_id for r in results if r.model.endswith("v2")} == in_segment


def taste(rollout_template: Path) -> dict[str, set[str]]:
    """Each shopper's true favourites: the 10 items they interacted with most, by the
    shopper's token (as ``users`` names them)."""
    from mlplatform.security.pii import tokeniser

    df = pd.read_parquet(rollout_template / "shop" / "interactions.parquet")
    counts = df.groupby(["user_id", "item_id"]).size().rename("n").reset_index()
    top = counts.sort_values("n", ascending=False).groupby("user_id").head(10)
    tokens = tokeniser(Settings.from_env({}).with_(data_dir=rollout_template))
    return {tokens.token("user", u): set(g["item_id"]) for u, g in top.groupby("user_id")}


def test_a_bad_candidate_is_rolled_back_under_simulated_shoppers(wait_for: Callable[..., Any],
        make_app: Callable[..., Flask], store: RolloutStore, worker: Worker,
        users: list[str], rollout_template: Path, redis_client: redis.Redis) -> None:
    """Shoppers buy when what they are shown matches their tastes; v3 (shuffled) sells
    less, the conversion guard fails twice and the controller rolls it back by itself.

    The shoppers report each conversion for the version that served them straight to
    the rollout metrics (what attribution reports in production)."""
    client = make_app().test_client()
    engine = engine_of(client.application)
    assert engine.rollout is not None
    recorder = engine.rollout.recorder
    likes = taste(rollout_template)
    rng = np.random.default_rng(11)

    def shop(user: str) -> str:
        body = client.get(f"/v1/users/{user}/recommendations?n=5&exclude_seen=false").get_json()
        shown = [i["item_id"] for i in body["items"]]
        hits = len(set(shown) & likes.get(user, set()))
        bought = float(rng.random() < hits / 5)
        version = int(body["model"].rsplit(":v", 1)[1])
        recorder.observe(NAME, version, "conversion", bought)
        return str(body["model"])

    store.start(NAME, 3, "canary", steps=(30.0, 60.0, 100.0), interval_seconds=1.0,
                failures=2, min_samples=20, guards=(parse_guard("conversion>=0.5"),))
    wait_for("the candidate to load", candidate_loaded(engine, 3))
    deadline = time.monotonic() + 20
    served: set[str] = set()
    while store.require(NAME).state == "running" and time.monotonic() < deadline:
        for u in rng.choice(users, 20):
            served.add(shop(str(u)))
    done = store.require(NAME)
    assert done.state == "rolled_back", done.history
    assert served == {"recommender:v1", "recommender:v3"}
    events = [h["event"] for h in done.history]
    assert events == ["start", "fail", "rollback"], done.history
    assert "conversion=" in done.history[-1]["reason"] and "breaks conversion>=0.5" in \
        done.history[-1]["reason"]
    # The worker's controller moves the registry right after it saves the transition.
    registry = ModelRegistry(store.registry.root)
    wait_for("the registry to follow the rollback", lambda: registry.aliases(NAME)[
        "production"] == 1 and registry.rollout(NAME)[1] == 0.0)
    # Every shopper is back on production as soon as replicas see the document.
    wait_for("the candidate to stop serving", lambda: all(shop(u) == "recommender:v1"
                                                          for u in users[:50]), timeout=5)
    production = read_measurements(redis_client, NAME, 1, done.started_at, time.time())
    assert production.values["conversion"] > 0.5 > float(
        done.history[-1]["measured"]["conversion"])


class Server:
    """The app on a real HTTP server thread."""

    def __init__(self, app: Flask) -> None:
        self.http = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()


def test_blue_green_switch_under_load_has_no_failed_request(wait_for: Callable[..., Any],
        make_app: Callable[..., Flask], store: RolloutStore, worker: Worker,
        users: list[str]) -> None:
    server = Server(make_app())
    stop = threading.Event()
    seen: list[list[tuple[float, int, str]]] = [[] for _ in range(4)]

    def shopper(k: int) -> None:
        with requests.Session() as http:
            i = k
            while not stop.is_set():
                u = users[i % len(users)]
                i += 4
                try:
                    resp = http.get(f"{server.url}/v1/users/{u}/recommendations", timeout=5)
                    seen[k].append((time.monotonic(), resp.status_code,
                                    resp.json().get("model", "")))
                except requests.RequestException as exc:
                    seen[k].append((time.monotonic(), 0, str(exc)))

    threads = [threading.Thread(target=shopper, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for("traffic", lambda: all(len(s) > 5 for s in seen))
        store.start(NAME, 2, "blue-green", interval_seconds=1.0, min_samples=10)
        wait_for("promotion", lambda: store.require(NAME).state != "running", timeout=15)
        wait_for("production to swap", lambda: all(
            s[-1][2] == "recommender:v2" for s in seen), timeout=5)
        swapped = [len(s) for s in seen]  # and more traffic after the swap, to check
        wait_for("traffic after the swap", lambda: all(
            len(s) > n + 10 for s, n in zip(seen, swapped, strict=True)))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        server.close()
    done = store.require(NAME)
    assert done.state == "promoted", done.history
    assert [h["event"] for h in done.history] == ["start", "switch", "promote"]
    assert "smoke-checked" in done.history[1]["reason"]
    every = [r for s in seen for r in s]
    failed = [r for r in every if r[1] != 200]
    assert not failed, failed[:5]
    assert len(every) > 100
    for s in seen:  # once a shopper got v2, never v1 again
        models = [m for _, _, m in s]
        first = models.index("recommender:v2")
        assert set(models[:first]) == {"recommender:v1"}
        assert set(models[first:]) == {"recommender:v2"}


def test_shadow_never_changes_a_response_and_its_comparison_is_recorded(wait_for: Callable[..., Any],
        make_app: Callable[..., Flask], store: RolloutStore, users: list[str],
        redis_client: redis.Redis) -> None:
    client = make_app().test_client()
    engine = engine_of(client.application)
    sample = users[:60]
    before = {u: client.get(f"/v1/users/{u}/recommendations").get_json() for u in sample}
    batch_before = client.post("/v1/recommendations/batch", json={"user_ids": sample}).get_json()
    r = store.start(NAME, 3, "shadow", steps=(100.0,), interval_seconds=60)
    wait_for("the shadow to load", candidate_loaded(engine, 3))
    after = {u: client.get(f"/v1/users/{u}/recommendations").get_json() for u in sample}
    batch_after = client.post("/v1/recommendations/batch", json={"user_ids": sample}).get_json()
    assert after == before and batch_after == batch_before  # v1 answers, unchanged
    assert engine.rollout is not None
    assert engine.rollout.shadows.join(10)
    engine.rollout.recorder.flush()
    shadow = read_measurements(redis_client, NAME, 3, r.started_at, time.time(), role="shadow")
    assert shadow.requests == 2 * len(sample) and shadow.errors == 0
    assert shadow.p99_ms is not None
    assert 0.0 <= shadow.values["agreement"] < 0.5  # the shuffled model disagrees
    assert -1.0 <= shadow.values["rank_corr"] <= 1.0
    live = read_measurements(redis_client, NAME, 3, r.started_at, time.time())
    assert live.requests == 0  # it never served
