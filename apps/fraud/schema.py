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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import msgspec
import numpy as np
import pandas as pd

from fraud.pii import data_dir_of, folder_tokeniser, tokenise_columns
from mlplatform import openapi
from mlplatform.errors import BadRequest, MLSuiteError
from mlplatform.http import ID_PATTERN
from mlplatform.openapi import Timestamp, timestamp_seconds
from mlplatform.security.pii import Tokeniser

__all__ = [
    "CHANNELS",
    "DEFAULT_MAX_AMOUNT",
    "REQUIRED",
    "Transaction",
    "TransactionBody",
    "TransactionFileError",
    "batch_type",
    "decode_transaction",
    "decode_transactions",
    "fingerprint",
    "parse_transaction",
    "parse_transactions",
    "parse_timestamp",
    "read_transactions",
    "transactions_from_frame",
    "transaction_type",
]

CHANNELS = ("card_present", "online")
REQUIRED = ("transaction_id", "timestamp", "card_id", "merchant_id", "amount", "currency",
            "country", "channel")
OPTIONAL = ("device_id",)
_ID = ID_PATTERN
_id_match = ID_PATTERN.match
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MIN_TS = openapi.MIN_EPOCH
_MAX_TS = openapi.MAX_EPOCH
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


# -- the wire type: what a request carries, checked by msgspec in one pass ----------------

Amount = Annotated[float, msgspec.Meta(ge=0, description="a number >= 0")]
Channel = Annotated[Literal["card_present", "online"], msgspec.Meta(
    description="one of " + ", ".join(CHANNELS))]


def _checked_here(pattern: re.Pattern[str], rule: str, max_length: int) -> Any:
    """A string whose pattern the schema states and ``_finish`` checks: msgspec calls
    the regex per field through Python (~1.1 us each, 7 on a transaction); a precompiled
    ``match`` here costs ~0.4 us (tests/contract/parse_bench.py)."""
    return Annotated[str, msgspec.Meta(max_length=max_length, extra_json_schema={
        "pattern": pattern.pattern, "description": rule})]


_CURRENCY_RULE = "an ISO 4217 code of 3 upper-case letters"
_COUNTRY_RULE = "an ISO 3166 code of 2 upper-case letters"
if TYPE_CHECKING:  # strings to the type checker; built at run time for msgspec
    WireId = str
    Currency = str
    Country = str
else:
    WireId = _checked_here(ID_PATTERN, openapi.ID_RULE, 128)
    Currency = _checked_here(_CURRENCY, _CURRENCY_RULE, 3)
    Country = _checked_here(_COUNTRY, _COUNTRY_RULE, 2)
ExtraNumber = Annotated[float | None, msgspec.Meta(description="a finite number or null")]


class TransactionBody(msgspec.Struct, forbid_unknown_fields=True):
    """One transaction as the payment flow sends it (the table in ``fraud.schema``)."""

    transaction_id: WireId
    timestamp: Timestamp
    card_id: WireId
    merchant_id: WireId
    amount: Amount
    currency: Currency
    country: Country
    channel: Channel
    device_id: WireId | None = None


@functools.lru_cache(maxsize=16)
def transaction_type(extra_fields: tuple[str, ...] = ()) -> Any:
    """The wire type of a transaction with the deployment's extra numeric fields."""
    if not extra_fields:
        return TransactionBody
    return msgspec.defstruct("Transaction", [(n, ExtraNumber, None) for n in extra_fields],
                             bases=(TransactionBody,), forbid_unknown_fields=True)


@functools.lru_cache(maxsize=16)
def batch_type(extra_fields: tuple[str, ...] = (), max_items: int = 1000) -> Any:
    """A batch: ``{"transactions": [...]}`` or the bare list, 1 to ``max_items`` long."""
    items = Annotated[list[transaction_type(extra_fields)],  # type: ignore[misc,valid-type]
                      msgspec.Meta(min_length=1, max_length=max_items)]
    batch = msgspec.defstruct("TransactionBatch", [("transactions", items)],
                              forbid_unknown_fields=True)
    return batch | items  # type: ignore[operator]


def decode_transaction(
    data: bytes, *, extra_fields: Sequence[str] = (), max_amount: float = DEFAULT_MAX_AMOUNT,
    max_amounts: Mapping[str, float] = _NO_LIMITS, pii: Tokeniser | None = None,
) -> Transaction:
    """A request body (JSON bytes) as a ``Transaction``, or BadRequest naming the field;
    with ``pii``, its card and device ids are tokens (``fraud.pii``)."""
    body = openapi.decode(data, transaction_type(tuple(extra_fields)))
    return _finish(body, extra_fields, max_amount, max_amounts, "", pii)


def decode_transactions(
    data: bytes, *, extra_fields: Sequence[str] = (), max_items: int,
    max_amount: float = DEFAULT_MAX_AMOUNT, max_amounts: Mapping[str, float] = _NO_LIMITS,
    pii: Tokeniser | None = None,
) -> list[Transaction]:
    """A batch body as ``Transaction`` objects, all checked before any is used; the first
    bad item names itself (``transactions[3].amount``)."""
    body = openapi.decode(data, batch_type(tuple(extra_fields), max_items), root="transactions")
    items = body if isinstance(body, list) else body.transactions
    return _finish_batch(items, extra_fields, max_amount, max_amounts, "transactions", pii)


def parse_transaction(
    body: Any, *, extra_fields: Sequence[str] = (), where: str = "",
    max_amount: float = DEFAULT_MAX_AMOUNT, max_amounts: Mapping[str, float] = _NO_LIMITS,
    pii: Tokeniser | None = None,
) -> Transaction:
    """Validate one decoded JSON object into a ``Transaction`` (the rules of
    ``decode_transaction``); ``where`` prefixes field names in errors
    (``transactions[3].amount``). ``max_amounts`` (currency -> largest amount)
    overrides ``max_amount`` for the currencies it names.

    >>> parse_transaction({"transaction_id": "t1", "timestamp": 1735689600,
    ...     "card_id": "c1", "merchant_id": "m1", "amount": 1e16, "currency": "EUR",
    ...     "country": "FR", "channel": "online"})
    Traceback (most recent call last):
    ...
    mlplatform.errors.BadRequest: amount must be at most 1000000 EUR, got 1e+16
    """
    wire = openapi.convert(body, transaction_type(tuple(extra_fields)), where=where)
    return _finish(wire, extra_fields, max_amount, max_amounts, where, pii)


def parse_transactions(
    items: Any, *, extra_fields: Sequence[str] = (), max_items: int, name: str = "transactions",
    max_amount: float = DEFAULT_MAX_AMOUNT, max_amounts: Mapping[str, float] = _NO_LIMITS,
    pii: Tokeniser | None = None,
) -> list[Transaction]:
    """Validate a whole decoded batch before anything is applied."""
    wire = openapi.convert(items, batch_type(tuple(extra_fields), max_items), root=name)
    wire = wire if isinstance(wire, list) else wire.transactions
    return _finish_batch(wire, extra_fields, max_amount, max_amounts, name, pii)


def _finish(body: Any, extra_fields: Sequence[str], max_amount: float,
            max_amounts: Mapping[str, float], where: str, pii: Tokeniser | None = None
            ) -> Transaction:
    """The checks msgspec leaves to us (patterns: see ``_checked_here``; a time's range, a
    currency's limit) and the domain object."""
    tid, card, merchant, device = body.transaction_id, body.card_id, body.merchant_id, \
        body.device_id
    if not (_id_match(tid) and _id_match(card) and _id_match(merchant)
            and (device is None or _id_match(device))):
        for name in ("transaction_id", "card_id", "merchant_id", "device_id"):
            value = getattr(body, name)
            if value is not None and not _id_match(value):
                _refuse(where + name, openapi.ID_RULE, value)
    currency, country = body.currency, body.country
    if not _CURRENCY.match(currency):
        _refuse(where + "currency", _CURRENCY_RULE, currency)
    if not _COUNTRY.match(country):
        _refuse(where + "country", _COUNTRY_RULE, country)
    ts = body.timestamp
    # Fast path: epoch seconds in range (what payment flows send); anything else goes
    # through the one timestamp rule, which also words the error.
    if type(ts) is not float or not (_MIN_TS <= ts < _MAX_TS):
        ts = timestamp_seconds(ts, where + "timestamp")
    amount = body.amount
    limit = max_amounts.get(currency, max_amount) if max_amounts else max_amount
    if amount > limit:
        raise BadRequest(
            f"{where}amount must be at most {limit:.15g} {currency}, got {amount!r}",
            field=where + "amount",
        )
    extra: dict[str, float] = {}
    for name in extra_fields:
        value = getattr(body, name)
        extra[name] = 0.0 if value is None else value
    if pii is not None:  # the edge: nothing after this sees the ids as sent
        card = pii.token("card", card)
        if device is not None:
            device = pii.token("device", device)
    return Transaction(tid, ts, card, merchant, amount, currency, country, body.channel,
                       device, extra)


def _refuse(name: str, rule: str, value: str) -> NoReturn:
    raise BadRequest(f"{name} must be {rule}, got {value[:64]!r}", field=name)


def _finish_batch(items: Sequence[Any], extra_fields: Sequence[str], max_amount: float,
                  max_amounts: Mapping[str, float], name: str, pii: Tokeniser | None = None
                  ) -> list[Transaction]:
    out = [_finish(item, extra_fields, max_amount, max_amounts, f"{name}[{i}].", pii)
           for i, item in enumerate(items)]
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
    """Epoch seconds from an ISO 8601 string with a timezone or from epoch seconds: the
    one rule of every service (``mlplatform.openapi.timestamp_seconds``).

    >>> parse_timestamp("2025-01-01T01:00:00+01:00"), parse_timestamp(1735689600)
    (1735689600.0, 1735689600.0)
    """
    return timestamp_seconds(value, name)


# ---------------------------------------------------------------------------------- files


# History files (another team's, or from before a limit) keep their large amounts: only
# what could overflow the velocity arithmetic is refused. Requests get the configured limit.
FILE_MAX_AMOUNT = 1e12


def read_transactions(path: Path, *, extra_fields: Sequence[str] = (),
                      max_amount: float = FILE_MAX_AMOUNT,
                      max_amounts: Mapping[str, float] = _NO_LIMITS,
                      pii: Tokeniser | None = None) -> pd.DataFrame:
    """A transaction file (parquet or CSV) checked against the schema, sorted by time;
    a row beyond its currency's largest amount is refused like any other bad row.

    ``timestamp`` becomes a float column ``ts`` (epoch seconds) next to the original.
    ``card_id`` and ``device_id`` become tokens (``pii``; default: the key of the data
    folder holding ``path``, as its services use), so training, replay and the velocity
    seed join with what the service stores.
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
    tokenise_columns(df, pii or folder_tokeniser(data_dir_of(path)))
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
