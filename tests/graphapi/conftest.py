"""Fixtures of the GraphQL tests: real servers (recommender, fraud, GraphQL) and their metrics.

``graph_stack`` is one ``mlplatform.stack.Stack`` per test module: a private Redis, Feast
applied and materialized in a copy of the session's small simulated data, the apps'
production models trained, each service under granian on a free port, both workers.
API keys are on, as in production: GraphQL forwards the caller's ``Authorization`` to
the services, so ``gql`` sends an admin key unless told otherwise (``api_keys``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.config import Settings
from mlplatform.stack import Stack


@pytest.fixture(scope="module")
def graph_stack(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("graphql") / "data"
    for part in ("shop", "payments"):  # a copy: models and Feast files are written next to it
        shutil.copytree(sim_data_dir / part, data_dir / part)
    settings = Settings.from_env({}).with_(data_dir=data_dir)
    with Stack(settings, ["recommender", "fraud", "graphql"], server="granian", workers=1,
               name="graphql-tests", say=lambda _: None) as stack:
        yield stack


@pytest.fixture(scope="module")
def api_keys(graph_stack: Stack) -> dict[str, str]:
    """Keys in the stack's Redis: ``admin`` (every scope) and ``shop`` (recommend only)."""
    from mlplatform.redisdb import connect
    from mlplatform.security.keys import KeyStore

    client = connect(str(graph_stack.settings.redis_url))
    store = KeyStore(client)
    keys = {"admin": store.create("graphql-tests", ("admin",))[0],
            "shop": store.create("graphql-shop", ("recommend",))[0]}
    client.close()
    return keys


@pytest.fixture
def auth(api_keys: dict[str, str]) -> dict[str, str]:
    """Headers with the admin key, for the tests' own REST calls."""
    return {"Authorization": f"Bearer {api_keys['admin']}"}


@pytest.fixture(scope="module")
def shop_ids(sim_data_dir: Path) -> dict[str, list[str]]:
    shop = sim_data_dir / "shop"
    return {"users": pq.read_table(shop / "users.parquet", columns=["user_id"])
            .column(0).to_pylist(),
            "items": pq.read_table(shop / "items.parquet", columns=["item_id"])
            .column(0).to_pylist()}


@pytest.fixture(scope="module")
def payment(sim_data_dir: Path) -> dict[str, Any]:
    """A transaction of the simulated stream (a card and merchant Feast knows), as the
    GraphQL ``TransactionInput`` fields without id and timestamp."""
    row = pq.read_table(sim_data_dir / "payments" / "transactions.parquet").slice(0, 1).to_pylist()[0]
    return {"cardId": row["card_id"], "merchantId": row["merchant_id"], "amount": row["amount"],
            "currency": row["currency"], "country": row["country"], "channel": row["channel"]}


@pytest.fixture
def gql(graph_stack: Stack, api_keys: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """POST a GraphQL document with an API key (``key``: a name in ``api_keys``, or None for
    no key); the response's JSON (asserting HTTP 200: GraphQL errors, refusals included,
    are 200 with ``errors``)."""

    def post(query: str, variables: dict[str, Any] | None = None, *, url: str | None = None,
             key: str | None = "admin") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {api_keys[key]}"} if key else {}
        response = httpx.post(f"{url or graph_stack.urls['graphql']}/graphql", headers=headers,
                              json={"query": query, "variables": variables or {}}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    return post


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` at ``url``/metrics whose labels include ``labels``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
def read_metric() -> Callable[..., float]:
    return metric
