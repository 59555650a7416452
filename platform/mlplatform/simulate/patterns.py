"""Fraud patterns: each turns a number of episodes into transaction rows.

- ``card_testing``: one stolen card, a burst of 8-30 tiny online amounts seconds apart,
  mostly at one risky merchant, from a fraud-ring device in any country.
- ``account_takeover``: 2-5 high online amounts (4-12x the card's usual) within about an
  hour, on a device new to the card, from a country that is not the card's home.
- ``merchant_attack``: a compromised high-risk merchant charges 12-40 different cards
  high amounts (3-8x usual) within 1-3 hours.
- ``bust_out`` (the drift; only from ``DRIFT_START_FRACTION`` of the period on): the
  card's own device and home country, so it looks like the owner, but 6-15 purchases
  of 2.5-6x the usual amount at different merchants of expensive categories within
  hours, in person or online, on young cards. Only velocity (counts, sums, distinct merchants, seconds since previous) and
  the amount ratio give it away; no earlier pattern teaches a model that.

Rows come back as internal columns (row numbers, not ids), unsorted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplatform.simulate._common import US_PER_HOUR, US_PER_SECOND, Columns, masked
from mlplatform.simulate.bank import Bank, new_devices

__all__ = ["DRIFT_PATTERN", "DRIFT_START_FRACTION", "PATTERNS", "episodes", "fraud_rows"]

DRIFT_PATTERN = "bust_out"
DRIFT_START_FRACTION = 0.6
_MINUTE = 60 * US_PER_SECOND


def _bursts(
    rng: np.random.Generator, n: int, sizes: tuple[int, int], t0: int, t1: int,
    mean_gap: float, gap_range: tuple[float, float], room: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Episode number and timestamp of every row for ``n`` bursts starting in [t0, t1 - room)."""
    size = rng.integers(sizes[0], sizes[1] + 1, n)
    ep = np.repeat(np.arange(n), size)
    gaps = np.clip(rng.exponential(mean_gap, len(ep)), *gap_range).astype(np.int64)
    first = np.cumsum(size) - size
    gaps[first] = 0
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], size)
    start = rng.integers(t0, max(t0 + 1, t1 - room), n)
    return ep, start[ep] + elapsed


def _rows(ts: np.ndarray, card: np.ndarray, merchant: np.ndarray, amount: np.ndarray,
          country: np.ndarray, online: np.ndarray, device: np.ndarray) -> Columns:
    return {"timestamp": ts, "card": card, "merchant": merchant,
            "amount": np.round(np.maximum(amount, 0.01), 2), "country": country,
            "online": online, "device": device}


def card_testing(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Stolen cards checked with bursts of tiny online payments."""
    ep, ts = _bursts(rng, n, (8, 30), t0, t1, 15 * US_PER_SECOND,
                     (US_PER_SECOND, 2 * _MINUTE), US_PER_HOUR)
    picker = bank.picker(online=True, by_country=False)
    risky = bank.merchant_risk >= np.quantile(bank.merchant_risk, 0.8)
    weight = bank.merchant_popularity * risky * bank.category_column(2)
    main = picker.draw(rng, n=n) if weight.sum() == 0 else rng.choice(
        len(weight), n, p=weight / weight.sum())
    spread = rng.random(n) < 0.3  # some testers rotate merchants
    merchant = np.where(spread[ep], picker.draw(rng, n=len(ep)), main[ep])
    amount = np.where(rng.random(len(ep)) < 0.25, 1.0, rng.uniform(0.5, 5.0, len(ep)))
    ring = new_devices(rng, max(3, n // 3))  # fraud rings reuse their devices
    return _rows(ts, rng.integers(0, len(bank.card_ids), n)[ep], merchant, amount,
                 rng.integers(0, len(bank.countries), n)[ep], np.ones(len(ep), bool),
                 ring[rng.integers(0, len(ring), n)][ep])


def account_takeover(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Taken-over cards spent big online, from abroad, on a new device."""
    ep, ts = _bursts(rng, n, (2, 5), t0, t1, 8 * _MINUTE, (_MINUTE, 20 * _MINUTE), 2 * US_PER_HOUR)
    card = rng.integers(0, len(bank.card_ids), n)
    abroad = (bank.card_home[card] + rng.integers(1, len(bank.countries), n)) % len(bank.countries)
    merchant = bank.picker(online=True, high_value=True, by_country=False).draw(rng, n=len(ep))
    amount = bank.card_avg_amount[card][ep] * rng.uniform(4.0, 12.0, len(ep))
    return _rows(ts, card[ep], merchant, amount, abroad[ep], np.ones(len(ep), bool),
                 new_devices(rng, n)[ep])


def merchant_attack(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """A compromised risky merchant charging many cards high amounts at once."""
    risk = bank.merchant_risk ** 4 * (bank.category_column(2) > 0)
    merchant = rng.choice(len(risk), n, p=risk / risk.sum())
    size = np.minimum(rng.integers(12, 41, n), len(bank.card_ids))
    ep = np.repeat(np.arange(n), size)
    card = np.concatenate([rng.choice(len(bank.card_ids), k, replace=False) for k in size])
    window = rng.integers(US_PER_HOUR, 3 * US_PER_HOUR, n)
    start = rng.integers(t0, max(t0 + 1, t1 - 3 * US_PER_HOUR), n)
    ts = start[ep] + (rng.random(len(ep)) * window[ep]).astype(np.int64)
    amount = bank.card_avg_amount[card] * rng.uniform(3.0, 8.0, len(ep))
    return _rows(ts, card, merchant[ep], amount, bank.merchant_country[merchant][ep],
                 np.ones(len(ep), bool), new_devices(rng, len(ep)))


def _distinct(rng: np.random.Generator, weight: np.ndarray, k: int) -> np.ndarray:
    """``k`` merchants by ``weight``, all different while enough have a weight."""
    enough = k <= int(np.count_nonzero(weight))
    return rng.choice(len(weight), k, replace=not enough, p=weight / weight.sum())


def bust_out(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Young cards maxed out by their own device at home: only velocity shows it."""
    ep, ts = _bursts(rng, n, (6, 15), t0, t1, 30 * _MINUTE, (2 * _MINUTE, 90 * _MINUTE),
                     12 * US_PER_HOUR)
    young = 1.0 / (bank.card_age_days + 60.0)
    card_ep = rng.choice(len(young), n, p=young / young.sum())
    card, home = card_ep[ep], bank.card_home[card_ep][ep]
    online = rng.random(len(ep)) < 0.5
    # Spend where it is expensive, at a different merchant each time (not where the card
    # usually shops): in person at home, or online anywhere.
    spend, share = bank.category_column(1), bank.category_column(2)
    merchant = np.empty(len(ep), np.int64)
    bounds = np.searchsorted(ep, np.arange(n + 1))
    for e in range(n):
        rows = np.arange(bounds[e], bounds[e + 1])
        local = spend * (1 - share) * (bank.merchant_country == bank.card_home[card_ep[e]])
        off = rows[~online[rows]]
        online[off[np.count_nonzero(local):]] = True  # more visits than local shops: go online
        on, off = rows[online[rows]], rows[~online[rows]]
        merchant[on] = _distinct(rng, spend * share, len(on))
        if len(off):
            merchant[off] = _distinct(rng, local, len(off))
    amount = bank.card_avg_amount[card] * rng.uniform(2.5, 6.0, len(ep))
    device = masked(online, bank.card_devices[card, 0])
    return _rows(ts, card, merchant, amount, home, online, device)


PatternFn = Callable[[np.random.Generator, Bank, int, int, int], Columns]
# name -> (generator, share of all transactions while active, mean rows per episode, drift?)
PATTERNS: dict[str, tuple[PatternFn, float, float, bool]] = {
    "card_testing": (card_testing, 0.006, 19.0, False),
    "account_takeover": (account_takeover, 0.0035, 3.5, False),
    "merchant_attack": (merchant_attack, 0.0035, 26.0, False),
    DRIFT_PATTERN: (bust_out, 0.0075, 10.5, True),
}


def episodes(share: float, mean_rows: float, n_transactions: float) -> int:
    """Episodes needed for a pattern to make ``share`` of ``n_transactions`` (at least one).

    >>> episodes(0.006, 19.0, 150_000), episodes(0.006, 19.0, 100)
    (47, 1)
    """
    return max(1, round(share * n_transactions / mean_rows))


def fraud_rows(
    rngs: list[np.random.Generator], bank: Bank, n_transactions: int, t0: int, t1: int
) -> tuple[Columns, int]:
    """Every fraud row of the period, sorted by time, with a ``pattern`` code (1-based
    position in PATTERNS), plus the drift start in microseconds."""
    drift_start = t0 + round(DRIFT_START_FRACTION * (t1 - t0))
    parts: list[Columns] = []
    for code, (rng, (_name, (fn, share, mean_rows, drift))) in enumerate(
            zip(rngs, PATTERNS.items(), strict=True), start=1):
        lo = drift_start if drift else t0
        expected = n_transactions * (t1 - lo) / (t1 - t0)
        rows = fn(rng, bank, episodes(share, mean_rows, expected), lo, t1)
        rows["pattern"] = np.full(len(rows["timestamp"]), code)
        parts.append(rows)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = merged["timestamp"] < t1
    order = np.argsort(merged["timestamp"][keep], kind="stable")
    return {k: v[keep][order] for k, v in merged.items()}, drift_start
