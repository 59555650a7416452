"""Fixtures for the recommender: tiny synthetic data, and a served data folder.

- ``tiny``: a hand-made shop where two groups of users each like their own half of the
  catalogue, small enough that every model trains in milliseconds and the right answer
  is obvious.
- ``served_template`` (session): the small simulated shop, Feast applied and
  materialized in that folder, and a trained version promoted to production.
  ``served_settings`` copies it for one test, so tests may push features, post events
  and promote versions without seeing each other's changes.
- ``make_app``: recommender apps on that folder, after the snapshots a worker publishes
  (catalogue, popularity) were published once; ``worker``: the recommender worker
  running in this process with short periods, for tests of what it keeps fresh.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
import scipy.sparse as sp
from flask import Flask
from flask.testing import FlaskClient

from mlplatform.assignment import Experiment
from mlplatform.config import Settings
from mlplatform.worker import Worker
from recommender.data import IdMap, user_item_matrix


@dataclass(frozen=True)
class Tiny:
    """Two taste groups: users u00..u19 like items a0..a9, users u20..u39 like b0..b9."""

    interactions: pd.DataFrame
    users: IdMap
    items: IdMap
    matrix: sp.csr_matrix
    groups: np.ndarray  # 0 / 1 per user row

    def group_items(self, group: int) -> set[int]:
        prefix = "a" if group == 0 else "b"
        return {i for i, ext in enumerate(self.items.ids.tolist()) if ext.startswith(prefix)}


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    rng = np.random.default_rng(3)
    rows = []
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    for u in range(40):
        prefix = "a" if u < 20 else "b"
        liked = rng.choice(10, size=6, replace=False)
        for k, i in enumerate(liked):
            event = ("view", "add_to_cart", "purchase")[k % 3]
            rows.append((f"u{u:02d}", f"{prefix}{i}", event, t0 + pd.Timedelta(minutes=u * 10 + k)))
        # a little noise across groups
        other = "b" if prefix == "a" else "a"
        rows.append((f"u{u:02d}", f"{other}{rng.integers(10)}", "view",
                     t0 + pd.Timedelta(minutes=u * 10 + 9)))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    users, items = IdMap.from_ids(df["user_id"]), IdMap.from_ids(df["item_id"])
    matrix = user_item_matrix(df, users, items, {"view": 1, "add_to_cart": 4, "purchase": 8})
    groups = np.array([0 if int(u[1:]) < 20 else 1 for u in users.ids.tolist()])
    return Tiny(df, users, items, matrix, groups)


@pytest.fixture(scope="session")
def served_template(tmp_path_factory: pytest.TempPathFactory, shop_dir: Path) -> Path:
    """A data folder ready to serve: shop data, Feast online store, production model."""
    from mlplatform.features import FeatureStoreAdapter
    from recommender.cli import train_and_register
    from recommender.pii import prepare_profiles

    data_dir = tmp_path_factory.mktemp("recommender-served")
    shutil.copytree(shop_dir, data_dir / "shop")
    settings = Settings.from_env({}).with_(data_dir=data_dir)
    store = FeatureStoreAdapter.from_settings(settings)
    store.apply()
    store.materialize()
    # As the stack's start hook does: Feast's user profiles keyed by tokens.
    prepare_profiles(settings)
    train_and_register(settings, alias="production", progress=False)
    return data_dir


@pytest.fixture
def served_settings(settings: Settings, served_template: Path) -> Settings:
    """``settings`` (session Redis, flushed) on a private copy of the served folder."""
    shutil.copytree(served_template, settings.data_dir)
    return settings.with_(model_poll_seconds=0.1)


ONLY = "RECOMMENDER_EXPERIMENT"


def only(variant: str) -> Experiment:
    """An experiment that sends every user to ``variant``."""
    return Experiment("recommender_model", "tests", {variant: 1.0})


@pytest.fixture
def make_app(served_settings: Settings, redis_client: redis.Redis
             ) -> Iterator[Callable[..., Flask]]:
    """Build recommender apps on the served folder; their background threads stop after."""
    from recommender.app import create_app
    from recommender.worker import publish_snapshots

    apps: list[Flask] = []
    publish_snapshots(served_settings, redis_client)

    def build(settings: Settings | None = None, **config: Any) -> Flask:
        app = create_app(settings or served_settings, {"TESTING": True, **config})
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["recommender.engine"].stop()


@pytest.fixture
def worker(served_settings: Settings, redis_client: redis.Redis) -> Iterator[Worker]:
    """The recommender worker, running in this process (short periods), stopped after."""
    from recommender.worker import WorkerConfig, build

    running = Worker("recommender", served_settings, redis_client)
    build(served_settings, running, WorkerConfig(catalogue_seconds=0.5, popularity_seconds=0.2,
                                                 retry_seconds=0.5))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    """A test client of an app serving ALS to everyone."""
    return make_app(**{ONLY: only("als")}).test_client()


@pytest.fixture
def keyed_client(make_app: Callable[..., Flask], served_settings: Settings,
                 redis_client: redis.Redis) -> FlaskClient:
    """As ``client``, with API keys on and a key with the recommender's scopes: bad input
    still gets its 400 naming the field once past the key check."""
    from mlplatform.security import KeyStore

    key, _ = KeyStore(redis_client).create("tests", ("recommend", "events", "catalogue"))
    client = make_app(served_settings.with_(auth=True), **{ONLY: only("als")}).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture
def known_user(served_template: Path) -> str:
    """A user with a long training history."""
    df = pd.read_parquet(served_template / "shop" / "interactions.parquet")
    return str(df["user_id"].value_counts().index[0])
