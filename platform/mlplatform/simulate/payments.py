"""Simulated payments: cards, merchants, and a labelled transaction stream with fraud and drift.

Legit payments (``mlplatform.simulate.legit``): everyday spending plus the legit bursts
that look like fraud (travel abroad, subscriptions, in-app purchase bursts, holiday
sprees, travel bookings, big purchases, phone changes, new devices). Fraud (about 1-2%
of rows) follows the patterns in ``mlplatform.simulate.patterns``, each overlapping some
legit behaviour; ``bust_out`` only starts at ``DRIFT_START_FRACTION`` (60%) of the
period: the drift.

Labels are noisy, as a bank's are: some victims never report a fraud (``UNREPORTED`` per
pattern: labelled legit), and some legit payments are disputed as fraud (friendly fraud,
``FRIENDLY_FRAUD_SHARE`` of the fraud labels, more often online, larger, subscriptions
and in-app purchases). Profiles are incomplete: a few cards and merchants have no
profile row, a few have null fields, and a card's ``avg_amount`` is the issuer's
estimate, not the exact habit.

Field meanings:
- ``country``: where the payment was made (the merchant's country for card-present,
  the device's location online); ``currency`` is that country's currency.
- ``amount``: in the card's billing currency, so amounts compare across countries.
- ``device_id``: null for card-present payments.
- ``is_fraud``: the observed label (a chargeback or dispute was filed); what models learn.
- ``true_fraud``: the ground truth (was it really fraud); for analysis only.
- ``fraud_pattern``: the story behind the row: a fraud pattern for true fraud (reported
  or not), ``friendly_fraud`` for a disputed legit payment, else ``none``.
- ``labelled_at``: when the label becomes known. A reported fraud: the chargeback,
  timestamp + a lognormal delay (median 6 days, clipped to 1-20 days); a friendly-fraud
  dispute: median 10 days, same clip. Everything else (legit and unreported fraud):
  timestamp + a fixed settlement delay of 2 days (``LEGIT_LABEL_DELAY``), after which no
  chargeback is assumed.
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
    progress_bar,
    to_us,
    write_table,
)
from mlplatform.simulate.bank import Bank
from mlplatform.simulate.legit import STORIES, Habits, Pickers, everyday, legit_bursts
from mlplatform.simulate.patterns import DRIFT_PATTERN, DRIFT_START_FRACTION, PATTERNS, fraud_rows
from mlplatform.simulate.schema import CARDS_SCHEMA, MERCHANTS_SCHEMA, TRANSACTIONS_SCHEMA

__all__ = [
    "DRIFT_PATTERN",
    "FRAUD_PATTERNS",
    "FRIENDLY_FRAUD",
    "FRIENDLY_FRAUD_SHARE",
    "LEGIT_LABEL_DELAY",
    "simulate_payments",
]

FRAUD_PATTERNS: tuple[str, ...] = ("none", *PATTERNS)
FRIENDLY_FRAUD = "friendly_fraud"
FRIENDLY_FRAUD_SHARE = 0.05  # of all fraud labels
LEGIT_LABEL_DELAY = 2 * US_PER_DAY  # microseconds
_CHANNELS = np.array(["card_present", "online"], dtype=object)
_STORY_NAMES = np.array([*FRAUD_PATTERNS, FRIENDLY_FRAUD], dtype=object)
_FRIENDLY = len(FRAUD_PATTERNS)
_DISPUTED = np.array([STORIES.index("subscription"), STORIES.index("app_burst")])
# Profiles: share of entities without a row, and with one null field.
_NO_PROFILE, _NULL_FIELD = 0.02, 0.04
_COLUMNS = ("timestamp", "card", "merchant", "amount", "country", "online", "device",
            "pattern", "observed", "delay", "story")


def _delays(rng: np.random.Generator, median_days: float, n: int) -> np.ndarray:
    days = np.clip(rng.lognormal(np.log(median_days), 0.7, n), 1, 20)
    return (days * US_PER_DAY).astype(np.int64)


def _label_legit(rng: np.random.Generator, bank: Bank, rows: Columns, rate: float) -> Columns:
    """Observed labels of legit rows: settled, or disputed (friendly fraud) at ``rate`` on
    average, more often online, larger than usual, subscriptions and in-app purchases."""
    n = len(rows["timestamp"])
    weight = ((1.0 + 2.0 * rows["online"]) * np.sqrt(rows["amount"] / bank.card_avg_amount[
        rows["card"]]) * np.where(np.isin(rows["story"], _DISPUTED), 3.0, 1.0))
    disputed = rng.random(n) < np.minimum(1.0, rate * weight / max(weight.mean(), 1e-9))
    delay = np.where(disputed, _delays(rng, 10.0, n), LEGIT_LABEL_DELAY)
    return {**rows, "pattern": np.where(disputed, _FRIENDLY, 0), "observed": disputed,
            "delay": delay}


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
        "is_fraud": rows["observed"].astype(bool),
        "fraud_pattern": _STORY_NAMES[rows["pattern"]],
        "labelled_at": rows["timestamp"] + rows["delay"],
        "true_fraud": (rows["pattern"] > 0) & (rows["pattern"] < _FRIENDLY),
    }


def _gaps(rng: np.random.Generator, n: int, keep_first: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``n`` entities have a profile row, and which have a null field (never
    the first ``keep_first``: the reference rows stay complete; at least one of each
    once there are ten others)."""
    pool = rng.permutation(np.arange(keep_first, n))
    def count(share: float) -> int:
        return max(1, round(share * len(pool))) if len(pool) >= 10 else 0
    k_none, k_null = count(_NO_PROFILE), count(_NULL_FIELD)
    has, gap = np.ones(n, bool), np.zeros(n, bool)
    has[pool[:k_none]] = False
    gap[pool[k_none:k_none + k_null]] = True
    return has, gap


def _nulled(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = values.astype(object)
    out[mask] = None
    return out


def _write_entities(rng: np.random.Generator, bank: Bank, out: Path, t0: int
                    ) -> tuple[dict[str, Path], dict[str, int]]:
    paths = {"cards": out / "cards.parquet", "merchants": out / "merchants.parquet"}
    n_cards, n_merchants = len(bank.card_ids), len(bank.merchant_ids)
    # The issuer's estimate of a card's usual amount, not the exact habit.
    estimate = np.round(bank.card_avg_amount * rng.lognormal(0.0, 0.25, n_cards), 2)
    has, gap = _gaps(rng, n_cards, 1)
    field = rng.integers(0, 3, n_cards)
    write_table({k: v[has] for k, v in {
        "card_id": bank.card_ids,
        "home_country": _nulled(bank.countries[bank.card_home], gap & (field == 0)),
        "card_age_days": _nulled(bank.card_age_days, gap & (field == 1)),
        "avg_amount": _nulled(estimate, gap & (field == 2)),
        "event_timestamp": np.full(n_cards, t0)}.items()}, CARDS_SCHEMA, paths["cards"])
    m_has, m_gap = _gaps(rng, n_merchants, len(bank.countries))
    m_field = rng.integers(0, 2, n_merchants)
    write_table({k: v[m_has] for k, v in {
        "merchant_id": bank.merchant_ids,
        "merchant_category": _nulled(bank.category_names[bank.merchant_category],
                                     m_gap & (m_field == 0)),
        "merchant_country": bank.countries[bank.merchant_country],
        "risk_score": _nulled(bank.merchant_risk, m_gap & (m_field == 1)),
        "event_timestamp": np.full(n_merchants, t0)}.items()}, MERCHANTS_SCHEMA,
        paths["merchants"])
    return paths, {"cards_without_profile": int((~has).sum()),
                   "cards_with_null_fields": int(gap.sum()),
                   "merchants_without_profile": int((~m_has).sum()),
                   "merchants_with_null_fields": int(m_gap.sum())}


def simulate_payments(
    data_dir: Path, *, seed: int, n_cards: int, n_merchants: int, n_transactions: int,
    progress: bool = True, n_days: int = 30, start: datetime | None = None,
) -> dict[str, Any]:
    """Write ``<data_dir>/payments/{cards,merchants,transactions}.parquet``.

    ``n_transactions`` is a target (the streams are random; the summary has exact counts).
    ``start`` (an aware datetime) defaults to 2025-01-01 UTC; the period is ``n_days`` long.
    """
    check_sizes(n_cards=n_cards, n_merchants=n_merchants, n_transactions=n_transactions,
                n_days=n_days)
    out = Path(data_dir) / "payments"
    out.mkdir(parents=True, exist_ok=True)
    t0 = to_us(start or DEFAULT_START)
    t1 = t0 + n_days * US_PER_DAY
    (bank_rng, legit_rng, label_rng, habit_rng, profile_rng,
     *streams) = generators(seed, 5 + len(PATTERNS) + 1 + 4, "payments")
    bank = Bank.generate(bank_rng, n_cards, n_merchants)
    habits = Habits.generate(habit_rng, bank, t0, t1)
    pickers = Pickers.of(bank)
    paths, profiles = _write_entities(profile_rng, bank, out, t0)
    paths["transactions"] = out / "transactions.parquet"

    fraud, drift_start = fraud_rows(streams[:len(PATTERNS) + 1], bank, n_transactions, t0, t1)
    reported = fraud.pop("reported")
    fraud.pop("ep")
    fraud.update(observed=reported, story=np.full(len(reported), -1),
                 delay=np.where(reported, _delays(label_rng, 6.0, len(reported)),
                                LEGIT_LABEL_DELAY))
    bursts = legit_bursts(streams[len(PATTERNS) + 1:], bank, habits, pickers, n_transactions,
                          t0, t1)
    n_everyday = max(0, n_transactions - len(fraud["timestamp"]) - len(bursts["timestamp"]))
    rate = bank.card_rate / bank.card_rate.sum() * n_everyday / n_days
    n_legit = max(1, n_transactions - len(reported))
    friendly_rate = FRIENDLY_FRAUD_SHARE / (1 - FRIENDLY_FRAUD_SHARE) * reported.sum() / n_legit

    ids = ("transaction_id", "t", id_width(7, int(n_transactions * 1.2)))
    before = {"rows": 0, "fraud": 0}
    stories = np.zeros(len(STORIES), np.int64)
    friendly = 0
    with SortedParquetWriter(paths["transactions"], TRANSACTIONS_SCHEMA, "timestamp",
                             id_column=ids) as writer, \
            progress_bar(n_days, "payments transactions", progress) as bar:
        for day in range(n_days):
            lo, hi = t0 + day * US_PER_DAY, t0 + (day + 1) * US_PER_DAY
            daily = everyday(legit_rng, bank, habits, pickers, rate, lo)
            a, b = np.searchsorted(bursts["timestamp"], [lo, hi], side="left")
            legit = {k: np.concatenate([daily[k], bursts[k][a:b]]) for k in daily}
            legit = _label_legit(label_rng, bank, legit, friendly_rate)
            stories += np.bincount(legit["story"], minlength=len(STORIES))
            friendly += int(legit["observed"].sum())
            a, b = np.searchsorted(fraud["timestamp"], [lo, hi], side="left")
            rows = {k: np.concatenate([legit[k], fraud[k][a:b]]) for k in _COLUMNS}
            early = rows["timestamp"] < drift_start
            before["rows"] += int(early.sum())
            before["fraud"] += int((early & rows["observed"]).sum())
            writer.add(_output(bank, rows), flush_before=hi)
            bar.update()

    n_labels = int(reported.sum()) + friendly
    by_pattern = np.bincount(fraud["pattern"], minlength=len(FRAUD_PATTERNS))
    after_rows = writer.rows - before["rows"]
    return {
        "dir": str(out), "cards": n_cards, "merchants": n_merchants,
        "transactions": writer.rows, "fraud": n_labels,
        "fraud_rate": round(n_labels / max(1, writer.rows), 5),
        "true_fraud": len(reported), "unreported_fraud": int((~reported).sum()),
        "friendly_fraud": friendly,
        "fraud_by_pattern": {p: int(by_pattern[k]) for k, p in enumerate(FRAUD_PATTERNS) if k},
        "fraud_rate_before_drift": round(before["fraud"] / max(1, before["rows"]), 5),
        "fraud_rate_after_drift": round((n_labels - before["fraud"]) / max(1, after_rows), 5),
        "drift_pattern": DRIFT_PATTERN, "drift_start": iso(drift_start),
        "drift_start_fraction": DRIFT_START_FRACTION,
        "legit_by_story": {s: int(stories[k]) for k, s in enumerate(STORIES)},
        "phone_changes": int((habits.phone_change_at < t1).sum()),
        "trips": int((habits.trip_start < t1).sum()), "profiles": profiles,
        "start": iso(t0), "end": iso(t1), "paths": {k: str(p) for k, p in paths.items()},
    }
