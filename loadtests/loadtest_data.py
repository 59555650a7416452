"""What the Locust scenarios share: where the services are, ids and transactions to send.

Set by ``mlsuite loadtest`` (or by hand when running ``locust -f loadtests/<scenario>.py``):

- ``MLSUITE_LOADTEST_RECOMMENDER_URL`` (default http://127.0.0.1:8001)
- ``MLSUITE_LOADTEST_FRAUD_URL`` (default http://127.0.0.1:8002)
- ``MLSUITE_DATA_DIR``: the data folder the services were built from (default ./data);
  users, items and transactions are read from its parquet files, so requests name
  users and items the recommender knows and cards and merchants Feast has profiles for.

This module runs inside Locust's process (gevent-patched): it imports neither the apps
nor mlplatform, only pyarrow to read the files.
"""

from __future__ import annotations

import functools
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECOMMENDER_URL = os.environ.get("MLSUITE_LOADTEST_RECOMMENDER_URL", "http://127.0.0.1:8001")
FRAUD_URL = os.environ.get("MLSUITE_LOADTEST_FRAUD_URL", "http://127.0.0.1:8002")
DATA_DIR = Path(os.environ.get("MLSUITE_DATA_DIR", "data"))
# Every user sends the run's API key (``mlsuite loadtest`` makes one; else MLSUITE_API_KEY).
_KEY = os.environ.get("MLSUITE_API_KEY", "")
AUTH_HEADERS: dict[str, str] | None = {"Authorization": f"Bearer {_KEY}"} if _KEY else None
RUN_ID = uuid.uuid4().hex[:8]  # transaction ids of this run never collide with another's

TX_FIELDS = ("card_id", "merchant_id", "amount", "currency", "country", "channel", "device_id",
             "is_fraud")


def _read(relative: str, columns: list[str]) -> Any:
    import pyarrow.parquet as pq

    path = DATA_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: set MLSUITE_DATA_DIR to the data folder the services were "
            "built from (`mlsuite simulate` writes one)")
    return pq.read_table(path, columns=columns)


@dataclass(frozen=True)
class Shop:
    users: list[str]
    items: list[str]
    categories: list[str]


@functools.cache
def shop() -> Shop:
    users = _read("shop/users.parquet", ["user_id"]).column("user_id").to_pylist()
    items = _read("shop/items.parquet", ["item_id", "category"])
    return Shop(users, items.column("item_id").to_pylist(),
                sorted(set(items.column("category").to_pylist())))


@functools.cache
def transactions(n: int = 20_000) -> list[dict[str, Any]]:
    """A sample of the payment stream: card, merchant, amount... and whether it was fraud."""
    table = _read("payments/transactions.parquet", list(TX_FIELDS))
    rows = random.Random(7).sample(range(table.num_rows), min(n, table.num_rows))
    return table.take(rows).to_pylist()  # type: ignore[no-any-return]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_transaction(rng: random.Random) -> tuple[dict[str, Any], bool]:
    """A transaction happening now, modelled on a real one; and whether that one was fraud."""
    row = dict(rng.choice(transactions()))
    is_fraud = bool(row.pop("is_fraud"))
    body = {"transaction_id": f"lt-{RUN_ID}-{uuid.uuid4().hex[:16]}", "timestamp": now_iso(),
            **{k: v for k, v in row.items() if v is not None}}
    return body, is_fraud
