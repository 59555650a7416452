"""Fraud fixtures: a data folder with the simulated payments, a real Feast store over
them and trained models (once per session); apps on the session's real Redis."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from fraud.app import create_app, get_service
from fraud.config import FraudConfig
from fraud.pii import tokenise_profile_file
from fraud.training import Dataset, load_dataset, train
from fraud.worker import FraudJobs, build
from mlplatform.config import Settings
from mlplatform.redisdb import connect
from mlplatform.registry import ModelRegistry
from mlplatform.worker import Worker

# The worker picks labels up fast, and a standby takes over a second after the holder died.
TEST_FRAUD_CONFIG: dict[str, Any] = {"learner_block_ms": 20, "learner_lease_seconds": 1.0}


def make_tx(i: int | str = 1, **changes: Any) -> dict[str, Any]:
    """A valid transaction body; ``changes`` override fields (``...`` removes one)."""
    body: dict[str, Any] = {
        "transaction_id": f"t-test-{i}", "timestamp": "2025-01-20T12:00:00Z",
        "card_id": "c000001", "merchant_id": "m00001", "amount": 42.5, "currency": "EUR",
        "country": "DE", "channel": "online", "device_id": "d-test",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture
def tx() -> Callable[..., dict[str, Any]]:
    return make_tx


def frame_bodies(frame: Any) -> list[dict[str, Any]]:
    """Rows of a transaction frame as request bodies (what the payment flow would send)."""
    columns = ["transaction_id", "card_id", "merchant_id", "amount", "currency", "country",
               "channel", "device_id"]
    rows = frame[columns].to_dict("records")
    for row, ts in zip(rows, frame["ts"].tolist()):
        row["timestamp"] = ts
        if row["device_id"] is None:
            del row["device_id"]
    return rows  # type: ignore[no-any-return]


@pytest.fixture
def as_bodies() -> Callable[[Any], list[dict[str, Any]]]:
    return frame_bodies


@pytest.fixture(scope="session")
def fraud_data_dir(tmp_path_factory: pytest.TempPathFactory, payments_dir: Path,
                   redis_url: str) -> Path:
    """A data folder: simulated payments, Feast applied + materialized, models trained."""
    from mlplatform.features import FeatureStoreAdapter

    data_dir = tmp_path_factory.mktemp("fraud-data")
    shutil.copytree(payments_dir, data_dir / "payments")
    settings = Settings.from_env({}).with_(data_dir=data_dir, redis_url=redis_url)
    # Feast holds the cards by token, as the service asks for them (fraud.pii).
    assert tokenise_profile_file(data_dir)
    store = FeatureStoreAdapter.from_settings(settings)
    store.apply()
    store.materialize()
    data = load_dataset(data_dir / "payments" / "transactions.parquet")
    train(data, ModelRegistry(data_dir / "models"), FraudConfig(), promote=True)
    return data_dir


@pytest.fixture(scope="session")
def payments_data(fraud_data_dir: Path) -> Dataset:
    """The simulated transactions, featurised offline (in-memory velocity, file profiles)."""
    return load_dataset(fraud_data_dir / "payments" / "transactions.parquet")


@pytest.fixture
def fraud_settings(settings: Settings, fraud_data_dir: Path) -> Settings:
    """Settings on the shared fraud data folder and the session Redis (flushed)."""
    return settings.with_(data_dir=fraud_data_dir, model_poll_seconds=0.2)


@pytest.fixture
def make_app(fraud_settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Build fraud apps (replicas) on the same Redis; their followers stop afterwards."""
    apps: list[Flask] = []

    def make(settings: Settings | None = None, **overrides: Any) -> Flask:
        app = create_app(settings or fraud_settings,
                         {"TESTING": True, "FRAUD": {**TEST_FRAUD_CONFIG, **overrides}})
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_service(app).close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def keyed_app(make_app: Callable[..., Flask], fraud_settings: Settings) -> Flask:
    """An app with API keys on, as in production (the bad-input tests use it)."""
    return make_app(fraud_settings.with_(auth=True))


@pytest.fixture
def keyed_client(keyed_app: Flask, redis_client: Any) -> Any:
    """A client of ``keyed_app`` sending a key with the fraud scopes: bad input still gets
    its 4xx naming the field once past the key check."""
    from mlplatform.security import KeyStore

    key, _ = KeyStore(redis_client).create("tests", ("score", "label", "review", "lists"))
    client = keyed_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def fraud_config(**overrides: Any) -> FraudConfig:
    """The fraud configuration tests run with (``overrides`` on top)."""
    return FraudConfig().with_(**{**TEST_FRAUD_CONFIG, **overrides})


@pytest.fixture
def make_learner(fraud_settings: Settings, redis_client: Any) -> Callable[..., Any]:
    """Learners as separate fraud workers would hold them (own consumer names), driven
    round by round with ``step()``; entries left pending are taken over after 50 ms."""
    from fraud.learner import Learner

    def make(name: str, claim_idle_ms: int = 50, **overrides: Any) -> Learner:
        return Learner(redis_client, fraud_settings, fraud_config(**overrides), name=name,
                       claim_idle_ms=claim_idle_ms)

    return make


@pytest.fixture
def start_worker(fraud_settings: Settings) -> Iterator[Callable[..., FraudJobs]]:
    """Start ``mlsuite worker fraud`` in this process (``overrides``: fraud settings);
    every worker started is stopped after the test."""
    workers: list[Worker] = []

    def start(settings: Settings | None = None, **overrides: Any) -> FraudJobs:
        settings = settings or fraud_settings
        worker = Worker("fraud", settings, connect(settings.redis_url or ""))
        jobs = build(settings, worker, fraud_config(**overrides))
        worker.start()
        workers.append(worker)
        return jobs

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., FraudJobs]) -> FraudJobs:
    """One fraud worker running beside the test's apps."""
    return start_worker()
