"""The transaction schema: what a payment flow sends, validated field by field.

A transaction (JSON object, or a row of a training/replay file):

============== ========================================= ==================================
field          type                                      rule
============== ========================================= ==================================
transaction_id string, 1-128 of ``A-Z a-z 0-9 _ . : @ -`` unique per transaction (an id)
timestamp      ISO 8601 with a timezone, or epoch seconds years 2000-2100
card_id        string (as transaction_id)                the card (Feast entity ``card``)
merchant_id    string (as transaction_id)                the merchant (Feast entity)
amount         number                                    finite, >= 0, <= the currency's max
currency       string                                    ISO 4217: 3 upper-case letters
country        string                                    ISO 3166 alpha-2: 2 upper-case
channel        string                                    ``card_present`` or ``online``
device_id      string or null (optional)                 as transaction_id
<extra>        number (optional)                         declared in ``extra_fields``
============== ========================================= ==================================

The largest amount accepted per currency is ``max_amount`` (``FraudConfig.max_amount``,
default 1,000,000 in any currency) unless ``max_amounts`` names that currency: beyond it
a model has no data, and a card's totals would stop meaning anything.

Files for training and replay have the same columns plus ``is_fraud`` (bool), and may
carry ``labelled_at`` (when the label became known) and ``fraud_pattern``.

>>> t = parse_transaction({"transaction_id": "t1", "timestamp": "2025-01-01T00:00:00Z",
...     "card_id": "c1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
...     "country": "FR", "channel": "online"})
>>> t.timestamp, t.device_id
(1735689600.0, None)
>>> parse_transaction({"transaction_id": "t1"})
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: timestamp is required
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.errors import BadRequest, MLSuiteError
from mlplatform.http import ID_PATTERN, check_id

__all__ = [
    "CHANNELS",
    "DEFAULT_MAX_AMOUNT",
    "REQUIRED",
    "Transaction",
    "TransactionFileError",
    "fingerprint",
    "parse_transaction",
    "parse_transactions",
    "parse_timestamp",
    "read_transactions",
    "transactions_from_frame",
]

CHANNELS = ("card_present", "online")
REQUIRED = ("transaction_id", "timestamp", "card_id", "merchant_id", "amount", "currency",
            "country", "channel")
OPTIONAL = ("device_id",)
_ID = ID_PATTERN
_id_match = ID_PATTERN.match
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MIN_TS = 946_684_800.0  # 2000-01-01
_MAX_TS = 4_102_444_800.0  # 2100-01-01
DEFAULT_MAX_AMOUNT = 1_000_000.0
_NO_LIMITS: Mapping[str, float] = {}


class TransactionFileError(MLSuiteError):
    """A transaction file lacks a column or holds a value outside the schema."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One validated transaction; ``timestamp`` in epoch seconds (UTC)."""

    transaction_id: str
    timestamp: float
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    country: str
    channel: str
    device_id: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def parse_transaction(
    body: Any, *, extra_fields: Sequence[str] = (), where: str = "",
    max_amount: float = DEFAULT_MAX_AMOUNT, max_amounts: Mapping[str, float] = _NO_LIMITS,
) -> Transaction:
    """Validate one JSON object into a ``Transaction``; ``where`` prefixes field names
    in errors (``transactions[3].amount``). ``max_amounts`` (currency -> largest amount)
    overrides ``max_amount`` for the currencies it names.

    >>> parse_transaction({"transaction_id": "t1", "timestamp": 1735689600,
    ...     "card_id": "c1", "merchant_id": "m1", "amount": 1e16, "currency": "EUR",
    ...     "country": "FR", "channel": "online"})
    Traceback (most recent call last):
    ...
    mlplatform.errors.BadRequest: amount must be at most 1000000 EUR, got 1e+16
    """
    if not isinstance(body, dict):
        name = where.rstrip(".") or "body"
        raise BadRequest(f"{name} must be a JSON object (a transaction), got {_kind(body)}",
                         field=name)
    get = body.get
    for name in REQUIRED:
        if get(name) is None:
            raise BadRequest(f"{where}{name} is required", field=where + name)
    if len(body) > len(REQUIRED):
        allowed = _allowed(tuple(extra_fields))
        for name in body:
            if name not in allowed:
                raise BadRequest(
                    f"{where}{name} is not a transaction field; expected "
                    + ", ".join(REQUIRED + OPTIONAL + tuple(extra_fields)),
                    field=where + name,
                )
    amount = body["amount"]
    if (
        isinstance(amount, bool)
        or not isinstance(amount, (int, float))
        or not math.isfinite(amount)
        or amount < 0
    ):
        raise BadRequest(
            f"{where}amount must be a number >= 0, got {amount!r}", field=where + "amount"
        )
    currency = body["currency"]
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise BadRequest(
            f"{where}currency must be an ISO 4217 code of 3 upper-case letters, got {currency!r}",
            field=where + "currency",
        )
    country = body["country"]
    if not isinstance(country, str) or not _COUNTRY.match(country):
        raise BadRequest(
            f"{where}country must be an ISO 3166 code of 2 upper-case letters, got {country!r}",
            field=where + "country",
        )
    limit = max_amounts.get(currency, max_amount) if max_amounts else max_amount
    if amount > limit:
        raise BadRequest(
            f"{where}amount must be at most {limit:.15g} {currency}, got {amount!r}",
            field=where + "amount",
        )
    channel = body["channel"]
    if channel not in CHANNELS:
        raise BadRequest(
            f"{where}channel must be one of {', '.join(CHANNELS)}, got {channel!r}",
            field=where + "channel",
        )
    device = get("device_id")
    extra: dict[str, float] = {}
    for name in extra_fields:
        value = body.get(name)
        if value is None:
            extra[name] = 0.0
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value
        ):
            raise BadRequest(
                f"{where}{name} must be a finite number, got {value!r}", field=where + name
            )
        else:
            extra[name] = float(value)
    # Fast paths for the usual shapes (a str id, epoch seconds); anything else goes
    # through the full checks, which also word the errors.
    tid, card, merchant, ts = body["transaction_id"], body["card_id"], body["merchant_id"], body[
        "timestamp"]
    if type(tid) is not str or not _id_match(tid):
        tid = _identifier(tid, where + "transaction_id")
    if type(card) is not str or not _id_match(card):
        card = _identifier(card, where + "card_id")
    if type(merchant) is not str or not _id_match(merchant):
        merchant = _identifier(merchant, where + "merchant_id")
    if device is not None and (type(device) is not str or not _id_match(device)):
        device = _identifier(device, where + "device_id")
    if type(ts) is float and _MIN_TS <= ts < _MAX_TS:
        pass
    else:
        ts = parse_timestamp(ts, where + "timestamp")
    return Transaction(tid, ts, card, merchant, float(amount), currency, country, channel,
                       device, extra)


@functools.lru_cache(maxsize=64)
def _allowed(extra_fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(REQUIRED + OPTIONAL + extra_fields)


def parse_transactions(
    items: Any, *, extra_fields: Sequence[str] = (), max_items: int, name: str = "transactions",
    max_amount: float = DEFAULT_MAX_AMOUNT, max_amounts: Mapping[str, float] = _NO_LIMITS,
) -> list[Transaction]:
    """Validate a whole batch before anything is applied; the first bad item names itself."""
    if not isinstance(items, list) or not items:
        raise BadRequest(f"{name} must be a non-empty list of transactions", field=name)
    if len(items) > max_items:
        raise BadRequest(
            f"{name} holds {len(items)} items; at most {max_items} per request", field=name
        )
    out = [
        parse_transaction(item, extra_fields=extra_fields, where=f"{name}[{i}].",
                          max_amount=max_amount, max_amounts=max_amounts)
        for i, item in enumerate(items)
    ]
    seen: set[str] = set()
    for i, t in enumerate(out):
        if t.transaction_id in seen:
            raise BadRequest(
                f"{name}[{i}].transaction_id {t.transaction_id!r} appears twice in the batch",
                field=f"{name}[{i}].transaction_id",
            )
        seen.add(t.transaction_id)
    return out


def fingerprint(t: Transaction) -> str:
    """A short digest of every field of ``t``: two requests with one transaction id
    carry the same transaction exactly when their fingerprints are equal.

    >>> a = Transaction("t1", 1.0, "c1", "m1", 10.0, "EUR", "FR", "online")
    >>> fingerprint(a) == fingerprint(Transaction("t1", 1.0, "c1", "m1", 10.0, "EUR", "FR",
    ...     "online")), fingerprint(a) == fingerprint(Transaction("t1", 1.0, "c1", "m1", 10.5,
    ...     "EUR", "FR", "online"))
    (True, False)
    """
    extra = "\x1f".join(f"{k}={v!r}" for k, v in sorted(t.extra.items()))
    text = "\x1e".join((t.transaction_id, repr(t.timestamp), t.card_id, t.merchant_id,
                        repr(t.amount), t.currency, t.country, t.channel, t.device_id or "",
                        extra))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:20]


def parse_timestamp(value: Any, name: str = "timestamp") -> float:
    """Epoch seconds from an ISO 8601 string with a timezone or from epoch seconds.

    >>> parse_timestamp("2025-01-01T01:00:00+01:00"), parse_timestamp(1735689600)
    (1735689600.0, 1735689600.0)
    >>> parse_timestamp("2025-01-01 00:00")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlplatform.errors.BadRequest: timestamp must carry a timezone (e.g. ...), got '2025-01-01 00:00'
    """
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(
                f"{name} must be an ISO 8601 time with a timezone or epoch seconds, got {value!r}",
                field=name,
            ) from None
        if parsed.tzinfo is None:
            raise BadRequest(
                f"{name} must carry a timezone (e.g. 2025-01-01T12:00:00Z), got {value!r}",
                field=name,
            )
        seconds = parsed.timestamp()
    else:
        seconds = None
    if seconds is None or not (_MIN_TS <= seconds < _MAX_TS):
        raise BadRequest(
            f"{name} must be an ISO 8601 time with a timezone or epoch seconds "
            f"between 2000 and 2100, got {value!r}",
            field=name,
        )
    return seconds


def _identifier(value: Any, name: str) -> str:
    return check_id(value, name)


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------- files


# History files (another team's, or from before a limit) keep their large amounts: only
# what could overflow the velocity arithmetic is refused. Requests get the configured limit.
FILE_MAX_AMOUNT = 1e12


def read_transactions(path: Path, *, extra_fields: Sequence[str] = (),
                      max_amount: float = FILE_MAX_AMOUNT,
                      max_amounts: Mapping[str, float] = _NO_LIMITS) -> pd.DataFrame:
    """A transaction file (parquet or CSV) checked against the schema, sorted by time;
    a row beyond its currency's largest amount is refused like any other bad row.

    ``timestamp`` becomes a float column ``ts`` (epoch seconds) next to the original.
    """
    path = Path(path)
    if not path.is_file():
        raise TransactionFileError(f"transaction file {str(path)!r} does not exist")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
    else:
        df = pd.read_parquet(path)
    missing = [c for c in (*REQUIRED, "is_fraud") if c not in df.columns]
    if missing:
        raise TransactionFileError(f"{path.name} lacks the column(s) {', '.join(missing)}")
    df = df.copy()
    df["ts"] = _epoch_seconds(df["timestamp"], path.name, "timestamp")
    if "labelled_at" in df.columns:
        df["labelled_ts"] = _epoch_seconds(df["labelled_at"], path.name, "labelled_at")
    amount = pd.to_numeric(df["amount"], errors="coerce")
    bad = amount.isna() | (amount < 0) | ~np.isfinite(amount)
    _reject(df, bad, path.name, "amount", "a number >= 0")
    df["amount"] = amount.astype("float64")
    limit = df["currency"].map(dict(max_amounts)).fillna(max_amount) if max_amounts \
        else max_amount
    _reject(df, df["amount"] > limit, path.name, "amount",
            f"at most {max_amount:.15g} in its currency"
            + (f" ({', '.join(f'{c} {v:.15g}' for c, v in max_amounts.items())})"
               if max_amounts else ""))
    for column, pattern, rule in (
        ("currency", _CURRENCY, "3 upper-case letters"),
        ("country", _COUNTRY, "2 upper-case letters"),
        ("transaction_id", _ID, "an identifier"),
        ("card_id", _ID, "an identifier"),
        ("merchant_id", _ID, "an identifier"),
    ):
        values = df[column].astype("string")
        _reject(df, ~values.str.fullmatch(pattern.pattern).fillna(False), path.name, column, rule)
    _reject(df, ~df["channel"].isin(CHANNELS), path.name, "channel", " or ".join(CHANNELS))
    if "device_id" not in df.columns:
        df["device_id"] = None
    for name in extra_fields:
        df[name] = pd.to_numeric(df[name], errors="coerce").fillna(0.0) if name in df else 0.0
    df["is_fraud"] = df["is_fraud"].astype(bool)
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def transactions_from_frame(df: pd.DataFrame, extra_fields: Sequence[str] = ()
                            ) -> list[Transaction]:
    """Rows of a checked frame (``read_transactions``) as ``Transaction`` objects."""
    devices = df["device_id"].astype(object).where(df["device_id"].notna(), None)
    extras = [df[n].astype(float).tolist() for n in extra_fields]
    columns = zip(
        df["transaction_id"].tolist(), df["ts"].tolist(), df["card_id"].tolist(),
        df["merchant_id"].tolist(), df["amount"].tolist(), df["currency"].tolist(),
        df["country"].tolist(), df["channel"].tolist(), devices.tolist(),
    )
    return [
        Transaction(
            transaction_id=tid, timestamp=ts, card_id=card, merchant_id=merchant, amount=amount,
            currency=currency, country=country, channel=channel, device_id=device,
            extra={n: col[i] for n, col in zip(extra_fields, extras)},
        )
        for i, (tid, ts, card, merchant, amount, currency, country, channel, device)
        in enumerate(columns)
    ]


def _epoch_seconds(column: pd.Series, file: str, name: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    ts = pd.to_datetime(column, utc=True, errors="coerce")
    _reject(ts.to_frame(), ts.isna(), file, name, "a timestamp")
    return (ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64") / 1e6).astype(
        "float64"
    )


def _reject(df: pd.DataFrame, bad: pd.Series, file: str, column: str, rule: str) -> None:
    if bool(bad.any()):
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise TransactionFileError(
            f"{file}: row {row}: {column} must be {rule}, got {df[column].iloc[row]!r}"
            if column in df
            else f"{file}: row {row}: {column} must be {rule}"
        )
