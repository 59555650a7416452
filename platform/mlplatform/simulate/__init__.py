"""Deterministic simulated data for both apps: a shop and a payments stream.

``simulate_shop`` writes ``<data_dir>/shop/{users,items,interactions}.parquet`` and the
hidden truth ``world.npz`` (read back with ``ShopWorld.load`` to score what a recommender
shows); ``simulate_payments`` writes ``<data_dir>/payments/{cards,merchants,
transactions}.parquet``: legit spending with its fraud-like bursts (travel, subscriptions,
holiday sprees, new phones), fraud that overlaps it, noisy labels (``is_fraud`` observed,
``true_fraud`` the truth), incomplete profiles, and a fraud pattern that only starts
part way through (the drift). The same seed gives byte-identical files; generation and writing
are chunked by day, so sizes in the millions fit in memory. The Arrow schemas of the
six tables are exported as ``*_SCHEMA``.

>>> sorted(DEFAULT_SIZES) == sorted(SHOP_SIZES + PAYMENTS_SIZES)
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlplatform.simulate.patterns import DRIFT_PATTERN, DRIFT_START_FRACTION
from mlplatform.simulate.payments import (
    FRAUD_PATTERNS,
    FRIENDLY_FRAUD,
    LEGIT_LABEL_DELAY,
    simulate_payments,
)
from mlplatform.simulate.schema import (
    CARDS_SCHEMA,
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    MERCHANTS_SCHEMA,
    TRANSACTIONS_SCHEMA,
    USERS_SCHEMA,
)
from mlplatform.simulate.shop import EVENT_TYPES, ShopWorld, simulate_shop

__all__ = [
    "CARDS_SCHEMA",
    "DEFAULT_SIZES",
    "DRIFT_PATTERN",
    "DRIFT_START_FRACTION",
    "EVENT_TYPES",
    "FRAUD_PATTERNS",
    "FRIENDLY_FRAUD",
    "INTERACTIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "LEGIT_LABEL_DELAY",
    "MERCHANTS_SCHEMA",
    "TRANSACTIONS_SCHEMA",
    "USERS_SCHEMA",
    "ShopWorld",
    "simulate_all",
    "simulate_payments",
    "simulate_shop",
]

# Defaults of the `mlsuite simulate` flags: the whole set takes seconds on 2 cores.
DEFAULT_SIZES: dict[str, int] = {
    "n_users": 5_000,
    "n_items": 1_000,
    "n_interactions": 250_000,
    "n_cards": 5_000,
    "n_merchants": 500,
    "n_transactions": 150_000,
}
SHOP_SIZES = ("n_users", "n_items", "n_interactions")
PAYMENTS_SIZES = ("n_cards", "n_merchants", "n_transactions")


def simulate_all(
    data_dir: Path, *, seed: int, progress: bool = True, **sizes: int
) -> dict[str, dict[str, Any]]:
    """Simulate the shop and the payments; ``sizes`` override ``DEFAULT_SIZES`` by name."""
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise TypeError(f"unknown size {unknown[0]!r}; expected one of {sorted(DEFAULT_SIZES)}")
    chosen = {**DEFAULT_SIZES, **sizes}
    shop = simulate_shop(Path(data_dir), seed=seed, progress=progress,
                         n_users=chosen["n_users"], n_items=chosen["n_items"],
                         n_interactions=chosen["n_interactions"])
    payments = simulate_payments(Path(data_dir), seed=seed, progress=progress,
                                 n_cards=chosen["n_cards"], n_merchants=chosen["n_merchants"],
                                 n_transactions=chosen["n_transactions"])
    return {"shop": shop, "payments": payments}
