"""Simulated payments: cards, merchants, and a labelled transaction stream with fraud and drift.

Legit payments: each card pays at its own Poisson rate (busier at weekends and in the
evening), mostly in its home country, card-present or online by the card's own habit;
online payments come from the card's main device (90%) or its second one. Amounts are
lognormal around the card's usual amount times the merchant category's multiplier.
Fraud (about 1.5% of rows) follows the patterns in ``mlplatform.simulate.patterns``;
``bust_out`` only starts at ``DRIFT_START_FRACTION`` (60%) of the period: the drift.

Field meanings:
- ``country``: where the payment was made (the merchant's country for card-present,
  the device's location online); ``currency`` is that country's currency.
- ``amount``: in the card's billing currency, so amounts compare across countries.
- ``device_id``: null for card-present payments.
- ``labelled_at``: when the label becomes known. Fraud: the chargeback, timestamp +
  a lognormal delay (median 6 days, clipped to 1-20 days). Legit: timestamp + a fixed
  settlement delay of 2 days (``LEGIT_LABEL_DELAY``), after which no chargeback is assumed.
Card and merchant rows are stamped at the start of the period (``card_age_days`` is the
age on that date).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.simulate._common import (
    DEFAULT_START,
    US_PER_DAY,
    Columns,
    SortedParquetWriter,
    check_sizes,
    generators,
    id_width,
    iso,
    masked,
    progress_bar,
    time_of_day,
    to_us,
    weekday_factor,
    write_table,
)
from mlplatform.simulate.bank import Bank, MerchantPicker
from mlplatform.simulate.patterns import DRIFT_PATTERN, DRIFT_START_FRACTION, PATTERNS, fraud_rows
from mlplatform.simulate.schema import CARDS_SCHEMA, MERCHANTS_SCHEMA, TRANSACTIONS_SCHEMA

__all__ = [
    "DRIFT_PATTERN",
    "FRAUD_PATTERNS",
    "LEGIT_LABEL_DELAY",
    "simulate_payments",
]

FRAUD_PATTERNS: tuple[str, ...] = ("none", *PATTERNS)
LEGIT_LABEL_DELAY = 2 * US_PER_DAY  # microseconds
_CHANNELS = np.array(["card_present", "online"], dtype=object)

def _legit_day(
    rng: np.random.Generator, bank: Bank, rate: np.ndarray, day_start: int,
    online_picker: MerchantPicker, present_picker: MerchantPicker,
) -> Columns:
    """One day of legit payments of every card (internal columns, unsorted)."""
    card = np.repeat(np.arange(len(rate)), rng.poisson(rate * weekday_factor(day_start)))
    n, n_countries = len(card), len(bank.countries)
    online = rng.random(n) < bank.card_online_share[card]
    home = bank.card_home[card]
    travel = rng.random(n) < np.where(online, 0.02, 0.04)
    country = np.where(travel, (home + rng.integers(1, n_countries, n)) % n_countries, home)
    merchant = np.where(online, online_picker.draw(rng, n=n), present_picker.draw(rng, country))
    amount = (bank.card_avg_amount[card] * bank.category_column(1)[merchant]
              * rng.lognormal(-0.125, 0.5, n))
    second = (rng.random(n) < 0.1).astype(np.int64)
    return {
        "timestamp": day_start + time_of_day(rng, n), "card": card, "merchant": merchant,
        "amount": np.round(np.maximum(amount, 0.5), 2), "country": country, "online": online,
        "device": masked(online, bank.card_devices[card, second]),
        "pattern": np.zeros(n, np.int64), "delay": np.full(n, LEGIT_LABEL_DELAY),
    }


def _output(bank: Bank, rows: Columns) -> Columns:
    """Internal columns (row numbers) -> the transactions schema (ids and names)."""
    return {
        "timestamp": rows["timestamp"],
        "card_id": bank.card_ids[rows["card"]],
        "merchant_id": bank.merchant_ids[rows["merchant"]],
        "amount": rows["amount"],
        "currency": bank.currencies[rows["country"]],
        "country": bank.countries[rows["country"]],
        "channel": _CHANNELS[rows["online"].astype(np.int64)],
        "device_id": rows["device"],
        "is_fraud": rows["pattern"] > 0,
        "fraud_pattern": np.array(FRAUD_PATTERNS, dtype=object)[rows["pattern"]],
        "labelled_at": rows["timestamp"] + rows["delay"],
    }


def _write_entities(bank: Bank, out: Path, t0: int) -> dict[str, Path]:
    paths = {"cards": out / "cards.parquet", "merchants": out / "merchants.parquet"}
    n_cards, n_merchants = len(bank.card_ids), len(bank.merchant_ids)
    write_table({"card_id": bank.card_ids, "home_country": bank.countries[bank.card_home],
                 "card_age_days": bank.card_age_days, "avg_amount": bank.card_avg_amount,
                 "event_timestamp": np.full(n_cards, t0)}, CARDS_SCHEMA, paths["cards"])
    write_table({"merchant_id": bank.merchant_ids,
                 "merchant_category": bank.category_names[bank.merchant_category],
                 "merchant_country": bank.countries[bank.merchant_country],
                 "risk_score": bank.merchant_risk,
                 "event_timestamp": np.full(n_merchants, t0)}, MERCHANTS_SCHEMA, paths["merchants"])
    return paths


def simulate_payments(
    data_dir: Path, *, seed: int, n_cards: int, n_merchants: int, n_transactions: int,
    progress: bool = True, n_days: int = 30, start: datetime | None = None,
) -> dict[str, Any]:
    """Write ``<data_dir>/payments/{cards,merchants,transactions}.parquet``.

    ``n_transactions`` is a target (the streams are random; the summary has exact counts).
    ``start`` (an aware datetime) defaults to 2025-01-01 UTC; the period is ``n_days`` long.
    """
    check_sizes(n_cards=n_cards, n_merchants=n_merchants, n_transactions=n_transactions, n_days=n_days)
    out = Path(data_dir) / "payments"
    out.mkdir(parents=True, exist_ok=True)
    t0 = to_us(start or DEFAULT_START)
    t1 = t0 + n_days * US_PER_DAY
    bank_rng, legit_rng, label_rng, *pattern_rngs = generators(seed, 3 + len(PATTERNS), "payments")
    bank = Bank.generate(bank_rng, n_cards, n_merchants)
    paths = _write_entities(bank, out, t0)
    paths["transactions"] = out / "transactions.parquet"

    fraud, drift_start = fraud_rows(pattern_rngs, bank, n_transactions, t0, t1)
    delay_days = np.clip(label_rng.lognormal(np.log(6.0), 0.7, len(fraud["timestamp"])), 1, 20)
    fraud["delay"] = (delay_days * US_PER_DAY).astype(np.int64)
    n_legit = max(0, n_transactions - len(fraud["timestamp"]))
    rate = bank.card_rate / bank.card_rate.sum() * n_legit / n_days
    online_picker = bank.picker(online=True, by_country=False)
    present_picker = bank.picker(online=False, by_country=True)

    ids = ("transaction_id", "t", id_width(7, int(n_transactions * 1.2)))
    before = {"rows": 0, "fraud": 0}
    with SortedParquetWriter(paths["transactions"], TRANSACTIONS_SCHEMA, "timestamp",
                             id_column=ids) as writer, \
            progress_bar(n_days, "payments transactions", progress) as bar:
        for day in range(n_days):
            lo, hi = t0 + day * US_PER_DAY, t0 + (day + 1) * US_PER_DAY
            legit = _legit_day(legit_rng, bank, rate, lo, online_picker, present_picker)
            a, b = np.searchsorted(fraud["timestamp"], [lo, hi], side="left")
            rows = {k: np.concatenate([legit[k], fraud[k][a:b]]) for k in legit}
            early = rows["timestamp"] < drift_start
            before["rows"] += int(early.sum())
            before["fraud"] += int((early & (rows["pattern"] > 0)).sum())
            writer.add(_output(bank, rows), flush_before=hi)
            bar.update()

    n_fraud = len(fraud["timestamp"])
    by_pattern = np.bincount(fraud["pattern"], minlength=len(FRAUD_PATTERNS))
    after_rows = writer.rows - before["rows"]
    return {
        "dir": str(out), "cards": n_cards, "merchants": n_merchants,
        "transactions": writer.rows, "fraud": n_fraud,
        "fraud_rate": round(n_fraud / max(1, writer.rows), 5),
        "fraud_by_pattern": {p: int(by_pattern[k]) for k, p in enumerate(FRAUD_PATTERNS) if k},
        "fraud_rate_before_drift": round(before["fraud"] / max(1, before["rows"]), 5),
        "fraud_rate_after_drift": round((n_fraud - before["fraud"]) / max(1, after_rows), 5),
        "drift_pattern": DRIFT_PATTERN, "drift_start": iso(drift_start),
        "drift_start_fraction": DRIFT_START_FRACTION,
        "start": iso(t0), "end": iso(t1), "paths": {k: str(p) for k, p in paths.items()},
    }
