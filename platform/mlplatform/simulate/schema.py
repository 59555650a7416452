"""The parquet schemas of the simulated data: the brief's contract, in one place.

Ids are strings, timestamps ``timestamp[us, tz=UTC]``; entity tables carry an
``event_timestamp`` for Feast's point-in-time joins. Profile fields may be null (missing
data). In transactions, ``is_fraud`` is the observed label (what a bank would train on)
and ``true_fraud`` the ground truth; ``fraud_pattern`` says which story made the row.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "CARDS_SCHEMA",
    "INTERACTIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "MERCHANTS_SCHEMA",
    "TRANSACTIONS_SCHEMA",
    "USERS_SCHEMA",
    "UTC_US",
]

UTC_US = pa.timestamp("us", tz="UTC")

USERS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("segment", pa.string()), ("country", pa.string()),
    ("event_timestamp", UTC_US),
])
ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("category", pa.string()), ("price", pa.float64()),
    ("in_stock", pa.bool_()), ("event_timestamp", UTC_US),
])
INTERACTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
    ("timestamp", UTC_US),
])
CARDS_SCHEMA = pa.schema([
    ("card_id", pa.string()), ("home_country", pa.string()), ("card_age_days", pa.int64()),
    ("avg_amount", pa.float64()), ("event_timestamp", UTC_US),
])
MERCHANTS_SCHEMA = pa.schema([
    ("merchant_id", pa.string()), ("merchant_category", pa.string()),
    ("merchant_country", pa.string()), ("risk_score", pa.float64()), ("event_timestamp", UTC_US),
])
TRANSACTIONS_SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("timestamp", UTC_US), ("card_id", pa.string()),
    ("merchant_id", pa.string()), ("amount", pa.float64()), ("currency", pa.string()),
    ("country", pa.string()), ("channel", pa.string()), ("device_id", pa.string()),
    ("is_fraud", pa.bool_()), ("fraud_pattern", pa.string()), ("labelled_at", UTC_US),
    ("true_fraud", pa.bool_()),
])
