"""Fraud patterns: each turns a number of episodes into transaction rows.

No pattern is a caricature: each overlaps some legit behaviour (``legit.py``), so a
model has to weigh several weak signals, as on real card data.

- ``card_testing``: a stolen card checked with 2-30 small online amounts (mostly under 5,
  some up to 25), seconds to minutes apart, at a risky or a digital-goods merchant, from
  a fraud-ring device shared across cards or a fresh one, from abroad or behind a proxy
  in the card's home country. Legit in-app purchase bursts look much the same.
- ``account_takeover``: 1-5 online purchases (median 3.5x the card's usual), often at
  expensive merchants, on a device new to the card (a fifth on the card's own device:
  malware, remote access), from abroad or from home. Legit phone changes, big purchases
  and travel overlap it.
- ``merchant_attack``: a compromised merchant (riskier ones more often) charges 8-40
  cards about twice their usual amount over 2-24 hours, online or with cloned cards
  in person.
- ``stolen_card``: a lost card used in person in its home country at everyday shops,
  2-6 times within hours, at 1-3x the usual amount: the hardest to tell from the owner.
- ``bust_out`` (the drift; only from ``DRIFT_START_FRACTION`` of the period on): the
  card's own device and home country, so it looks like the owner, but 4-12 purchases of
  2-5.5x the usual amount at different merchants of expensive categories within hours,
  in person or online, on young cards. Only velocity and the amount ratio give it away,
  and legit shopping sprees share the velocity; no earlier pattern teaches a model that.

Fraud starts follow the daily activity curve for most episodes (fraudsters shop when
shops are busy) and any hour for the rest. ``UNREPORTED`` is the share of each pattern's
victims that never report it (labelled legit in the data; ground truth kept apart).

Rows come back as internal columns (row numbers, not ids), unsorted, with ``ep`` (the
episode) so labels can be decided per victim.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplatform.simulate._common import (
    US_PER_HOUR,
    US_PER_SECOND,
    Columns,
    burst_times,
    episode_starts,
    masked,
)
from mlplatform.simulate.bank import HIGH_VALUE, Bank, new_devices

__all__ = ["DRIFT_PATTERN", "DRIFT_START_FRACTION", "PATTERNS", "UNREPORTED", "episodes",
           "fraud_rows"]

DRIFT_PATTERN = "bust_out"
DRIFT_START_FRACTION = 0.6
_MINUTE = 60 * US_PER_SECOND
# Share of episodes starting at any hour instead of following the daily curve.
_ANY_HOUR = 0.35
_EVERYDAY = ("grocery", "restaurant", "fuel", "fashion", "electronics", "pharmacy", "jewelry")


def _rows(ep: np.ndarray, ts: np.ndarray, card: np.ndarray, merchant: np.ndarray,
          amount: np.ndarray, country: np.ndarray, online: np.ndarray, device: np.ndarray
          ) -> Columns:
    return {"ep": ep, "timestamp": ts, "card": card, "merchant": merchant,
            "amount": np.round(np.maximum(amount, 0.01), 2), "country": country,
            "online": online, "device": device}


def _abroad(rng: np.random.Generator, bank: Bank, card: np.ndarray) -> np.ndarray:
    """A country other than each card's home."""
    n = len(bank.countries)
    return (bank.card_home[card] + rng.integers(1, n, len(card))) % n


def card_testing(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Stolen cards checked with bursts of small online payments."""
    size = np.minimum(2 + rng.geometric(0.13, n), 30)
    slow = rng.random(n) < 0.3  # careful testers wait minutes between tries
    ep, ts = burst_times(rng, size, t0, t1, np.where(slow, 4 * _MINUTE, 15 * US_PER_SECOND),
                         (US_PER_SECOND, 20 * _MINUTE), _ANY_HOUR)
    card = rng.integers(0, len(bank.card_ids), n)
    picker = bank.picker(online=True, by_country=False)
    digital = bank.picker(online=True, categories=("digital_goods", "entertainment"),
                          by_country=False)
    risky = bank.merchant_risk >= np.quantile(bank.merchant_risk, 0.7)
    weight = bank.merchant_popularity * risky * bank.category_column(2)
    main = picker.draw(rng, n=n) if weight.sum() == 0 else rng.choice(
        len(weight), n, p=weight / weight.sum())
    main = np.where(rng.random(n) < 0.5, main, digital.draw(rng, n=n))
    spread = rng.random(n) < 0.3  # some testers rotate merchants
    merchant = np.where(spread[ep], picker.draw(rng, n=len(ep)), main[ep])
    big = rng.random(n) < 0.15  # some test with amounts a real purchase would have
    amount = np.where(rng.random(len(ep)) < 0.25, 1.0, rng.uniform(0.5, 5.0, len(ep)))
    amount = np.where(big[ep], rng.uniform(5.0, 25.0, len(ep)), amount)
    country = np.where(rng.random(n) < 0.45, bank.card_home[card], _abroad(rng, bank, card))
    ring = new_devices(rng, max(3, n // 4))  # fraud rings reuse their devices
    device = np.where(rng.random(n) < 0.55, ring[rng.integers(0, len(ring), n)],
                      new_devices(rng, n))
    return _rows(ep, ts, card[ep], merchant, amount, country[ep], np.ones(len(ep), bool),
                 device[ep])


def account_takeover(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Taken-over cards spent online, mostly on a new device, from abroad or at home."""
    ep, ts = burst_times(rng, rng.integers(1, 6, n), t0, t1, 8 * _MINUTE,
                         (_MINUTE, 30 * _MINUTE), _ANY_HOUR)
    card = rng.integers(0, len(bank.card_ids), n)
    country = np.where(rng.random(n) < 0.55, _abroad(rng, bank, card), bank.card_home[card])
    expensive = rng.random(len(ep)) < 0.6
    merchant = np.where(expensive,
                        bank.picker(online=True, categories=HIGH_VALUE, by_country=False)
                        .draw(rng, n=len(ep)),
                        bank.picker(online=True, by_country=False).draw(rng, n=len(ep)))
    amount = bank.card_avg_amount[card][ep] * np.maximum(
        rng.lognormal(np.log(3.5), 0.6, len(ep)), 0.8)
    own = rng.random(n) < 0.2  # malware on the owner's phone
    device = np.where(own, bank.card_devices[card, 0], new_devices(rng, n))
    return _rows(ep, ts, card[ep], merchant, amount, country[ep], np.ones(len(ep), bool),
                 device[ep])


def merchant_attack(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """A compromised merchant charging many cards above their usual amounts."""
    risk = bank.merchant_risk ** 2 * (bank.category_column(2) > 0)
    merchant = rng.choice(len(risk), n, p=risk / risk.sum())
    size = np.minimum(rng.integers(8, 41, n), len(bank.card_ids))
    ep = np.repeat(np.arange(n), size)
    card = np.concatenate([rng.choice(len(bank.card_ids), k, replace=False) for k in size])
    window = rng.integers(2 * US_PER_HOUR, 24 * US_PER_HOUR, n)
    start = episode_starts(rng, n, t0, t1, _ANY_HOUR)
    ts = start[ep] + (rng.random(len(ep)) * window[ep]).astype(np.int64)
    amount = bank.card_avg_amount[card] * rng.lognormal(np.log(2.2), 0.5, len(ep))
    # Else cloned cards at the till (web-only merchants have none).
    online = np.repeat((rng.random(n) < 0.7) | (bank.category_column(2)[merchant] >= 1.0), size)
    return _rows(ep, ts, card, merchant[ep], amount, bank.merchant_country[merchant][ep],
                 online, masked(online, new_devices(rng, len(ep))))


def stolen_card(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """A lost card used in person near home, at everyday shops, a little above usual."""
    ep, ts = burst_times(rng, rng.integers(2, 7, n), t0, t1, 40 * _MINUTE,
                         (5 * _MINUTE, 3 * US_PER_HOUR))
    card = rng.integers(0, len(bank.card_ids), n)[ep]
    home = bank.card_home[card]
    merchant = bank.picker(online=False, categories=_EVERYDAY, by_country=True).draw(rng, home)
    amount = (bank.card_avg_amount[card] * bank.category_column(1)[merchant]
              * rng.lognormal(np.log(1.6), 0.6, len(ep)))
    online = np.zeros(len(ep), bool)
    return _rows(ep, ts, card, merchant, amount, home, online, np.full(len(ep), None, object))


def _distinct(rng: np.random.Generator, weight: np.ndarray, k: int) -> np.ndarray:
    """``k`` merchants by ``weight``, all different while enough have a weight."""
    enough = k <= int(np.count_nonzero(weight))
    return rng.choice(len(weight), k, replace=not enough, p=weight / weight.sum())


def bust_out(rng: np.random.Generator, bank: Bank, n: int, t0: int, t1: int) -> Columns:
    """Young cards maxed out by their own device at home: only velocity shows it."""
    ep, ts = burst_times(rng, rng.integers(4, 13, n), t0, t1, 30 * _MINUTE,
                         (2 * _MINUTE, 120 * _MINUTE), _ANY_HOUR)
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
    amount = bank.card_avg_amount[card] * rng.uniform(2.0, 5.5, len(ep))
    device = masked(online, bank.card_devices[card, 0])
    return _rows(ep, ts, card, merchant, amount, home, online, device)


PatternFn = Callable[[np.random.Generator, Bank, int, int, int], Columns]
# name -> (generator, share of all transactions while active, mean rows per episode, drift?)
PATTERNS: dict[str, tuple[PatternFn, float, float, bool]] = {
    "card_testing": (card_testing, 0.004, 9.4, False),
    "account_takeover": (account_takeover, 0.003, 3.0, False),
    "merchant_attack": (merchant_attack, 0.0025, 24.0, False),
    "stolen_card": (stolen_card, 0.0025, 4.0, False),
    DRIFT_PATTERN: (bust_out, 0.0075, 8.0, True),
}
# Share of victims (card, episode) who never report the fraud: tiny test charges go
# unnoticed; a stolen card's owner usually calls the bank.
UNREPORTED: dict[str, float] = {
    "card_testing": 0.35, "account_takeover": 0.08, "merchant_attack": 0.15,
    "stolen_card": 0.1, DRIFT_PATTERN: 0.1,
}


def episodes(share: float, mean_rows: float, n_transactions: float) -> int:
    """Episodes needed for a pattern to make ``share`` of ``n_transactions`` (at least one).

    >>> episodes(0.004, 9.4, 150_000), episodes(0.006, 19.0, 100)
    (64, 1)
    """
    return max(1, round(share * n_transactions / mean_rows))


def fraud_rows(
    rngs: list[np.random.Generator], bank: Bank, n_transactions: int, t0: int, t1: int
) -> tuple[Columns, int]:
    """Every fraud row of the period, sorted by time, with a ``pattern`` code (1-based
    position in PATTERNS) and ``reported`` (does the victim report it), plus the drift
    start in microseconds. ``rngs``: one per pattern, then one for the reports."""
    drift_start = t0 + round(DRIFT_START_FRACTION * (t1 - t0))
    parts: list[Columns] = []
    offset = 0
    for code, (rng, (_name, (fn, share, mean_rows, drift))) in enumerate(
            zip(rngs, PATTERNS.items(), strict=False), start=1):
        lo = drift_start if drift else t0
        expected = n_transactions * (t1 - lo) / (t1 - t0)
        n = episodes(share, mean_rows, expected)
        rows = fn(rng, bank, n, lo, t1)
        rows["pattern"] = np.full(len(rows["timestamp"]), code)
        rows["ep"] = rows["ep"] + offset
        offset += n
        parts.append(rows)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = merged["timestamp"] < t1
    order = np.argsort(merged["timestamp"][keep], kind="stable")
    out = {k: v[keep][order] for k, v in merged.items()}
    # One decision per victim: the card of an episode is reported (all its rows) or not.
    _, victim = np.unique(out["ep"] * len(bank.card_ids) + out["card"], return_inverse=True)
    silent = np.array([0.0, *(UNREPORTED[p] for p in PATTERNS)])[out["pattern"]]
    out["reported"] = rngs[len(PATTERNS)].random(victim.max() + 1 if len(victim) else 0)[
        victim] >= silent
    return out, drift_start
