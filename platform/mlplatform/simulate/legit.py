"""Legit payments: everyday spending and the legit bursts that look like fraud.

Everyday spending: each card pays at its own Poisson rate (busier at weekends and in the
evening), mostly in its home country, card-present or online by the card's own habit.
Amounts are lognormal (wide) around the card's usual amount times the merchant
category's multiplier; 3% are big purchases (1.5-5x more, at expensive merchants).
Online payments come from the card's main device (85%), its occasional one (12%) or a
device never seen before (3%: a friend's phone, a new browser); 1-3% happen abroad
without a trip (a border town, roaming, a foreign web shop's redirect).

Hidden habits per card (``Habits``): a phone change part way through (about 10% of cards
over 30 days: from then on the main device is a new one), and a trip abroad (about 8%:
2-10 days in another country, paying there in person and online, half again as often).

Legit bursts (episodes, sized as a share of all transactions like the fraud patterns):
- ``subscription``: a fixed price charged by the same merchant every month or week,
  more than half of them billed at night;
- ``app_burst``: 2-8 small in-app purchases seconds to minutes apart (the legit twin of
  card testing);
- ``spree``: 3-10 purchases at several shops within hours at around the usual amounts of
  those shops (holiday shopping; 60% on the period's two sale days);
- ``travel_booking``: 1-2 large online bookings at travel merchants in the weeks before
  each trip.

Every row carries a ``story`` code (``STORIES``) for the summary; it is not written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlplatform.simulate._common import (
    US_PER_DAY,
    US_PER_HOUR,
    US_PER_SECOND,
    Columns,
    burst_times,
    masked,
    time_of_day,
    weekday_factor,
)
from mlplatform.simulate.bank import (
    HIGH_VALUE,
    SHOPPING,
    SUBSCRIPTIONS,
    Bank,
    MerchantPicker,
    new_devices,
)

__all__ = ["BURSTS", "STORIES", "Habits", "Pickers", "everyday", "legit_bursts"]

STORIES = ("everyday", "big_purchase", "travel", "subscription", "app_burst", "spree",
           "travel_booking")
_CODE = {name: k for k, name in enumerate(STORIES)}
NEVER = np.iinfo(np.int64).max
_MINUTE = 60 * US_PER_SECOND
_PRICES = np.array([2.99, 4.99, 7.99, 9.99, 12.99, 14.99, 19.99])
_APP_PRICES = np.array([0.99, 1.99, 2.99, 4.99, 9.99])
# name -> share of all transactions (travel bookings follow the trips instead)
BURSTS: dict[str, float] = {"subscription": 0.05, "app_burst": 0.02, "spree": 0.03}


@dataclass(frozen=True)
class Pickers:
    """The merchant pickers legit payments draw from, built once per bank."""

    online: MerchantPicker
    present: MerchantPicker
    online_big: MerchantPicker
    present_big: MerchantPicker
    subscription: MerchantPicker
    app: MerchantPicker
    spree_online: MerchantPicker
    spree_present: MerchantPicker
    travel: MerchantPicker

    @classmethod
    def of(cls, bank: Bank) -> Pickers:
        return cls(
            online=bank.picker(online=True, by_country=False),
            present=bank.picker(online=False, by_country=True),
            online_big=bank.picker(online=True, categories=HIGH_VALUE, by_country=False),
            present_big=bank.picker(online=False, categories=HIGH_VALUE, by_country=True),
            subscription=bank.picker(online=True, categories=SUBSCRIPTIONS, by_country=False),
            app=bank.picker(online=True, categories=("digital_goods", "entertainment"),
                            by_country=False),
            spree_online=bank.picker(online=True, categories=SHOPPING, by_country=False),
            spree_present=bank.picker(online=False, categories=SHOPPING, by_country=True),
            travel=bank.picker(online=True, categories=("travel",), by_country=False),
        )


@dataclass(frozen=True, eq=False)
class Habits:
    """Per-card phone changes and trips, and the period's sale days (microseconds)."""

    phone_change_at: np.ndarray  # NEVER: the card keeps its phone
    trip_start: np.ndarray  # NEVER: no trip
    trip_end: np.ndarray
    trip_country: np.ndarray  # country row
    sale_days: np.ndarray  # day starts

    @classmethod
    def generate(cls, rng: np.random.Generator, bank: Bank, t0: int, t1: int) -> Habits:
        n, n_countries = len(bank.card_ids), len(bank.countries)
        days = max(1, (t1 - t0) // US_PER_DAY)
        change = rng.random(n) < min(0.5, 0.1 * days / 30)
        phone = np.where(change, rng.integers(t0, t1, n), NEVER)
        trip = rng.random(n) < min(0.5, 0.08 * days / 30)
        start = (t0 + rng.integers(0, days, n) * US_PER_DAY
                 + rng.integers(6 * US_PER_HOUR, 14 * US_PER_HOUR, n))
        end = start + rng.integers(2, 11, n) * US_PER_DAY
        country = (bank.card_home + rng.integers(1, n_countries, n)) % n_countries
        sale = (np.array([rng.uniform(0.1, 0.5), rng.uniform(0.65, 0.95)]) * days).astype(np.int64)
        return cls(phone_change_at=phone, trip_start=np.where(trip, start, NEVER),
                   trip_end=np.where(trip, end, NEVER), trip_country=country,
                   sale_days=t0 + sale * US_PER_DAY)

    def away(self, card: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Is each card on its trip at each time."""
        return (ts >= self.trip_start[card]) & (ts < self.trip_end[card])

    def location(self, bank: Bank, card: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Country row where each card's holder is: the trip's country, else home."""
        return np.where(self.away(card, ts), self.trip_country[card], bank.card_home[card])

    def main_device(self, bank: Bank, card: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Each card's main device at each time (the new phone after a change)."""
        changed = ts >= self.phone_change_at[card]
        return np.where(changed, bank.card_devices[card, 2], bank.card_devices[card, 0])

    def devices(self, rng: np.random.Generator, bank: Bank, card: np.ndarray, ts: np.ndarray
                ) -> np.ndarray:
        """Devices of legit online payments: main 85%, occasional 12%, never seen 3%."""
        u = rng.random(len(card))
        device = np.where(u < 0.12, bank.card_devices[card, 1], self.main_device(bank, card, ts))
        fresh = u >= 0.97
        device[fresh] = new_devices(rng, int(fresh.sum()))
        return device

    def day_boost(self, day_start: int) -> np.ndarray:
        """Per card: 1.5 on days it travels (people on holiday pay more often), else 1."""
        travelling = (self.trip_start < day_start + US_PER_DAY) & (self.trip_end > day_start)
        return np.where(travelling, 1.5, 1.0)


def everyday(rng: np.random.Generator, bank: Bank, habits: Habits, pickers: Pickers,
             rate: np.ndarray, day_start: int) -> Columns:
    """One day of everyday legit payments of every card (internal columns, unsorted)."""
    expected = rate * weekday_factor(day_start) * habits.day_boost(day_start)
    card = np.repeat(np.arange(len(rate)), rng.poisson(expected))
    n, n_countries = len(card), len(bank.countries)
    ts = day_start + time_of_day(rng, n)
    away = habits.away(card, ts)
    online = rng.random(n) < bank.card_online_share[card] * np.where(away, 0.5, 1.0)
    home = bank.card_home[card]
    stray = rng.random(n) < np.where(online, 0.03, 0.01)
    country = np.where(stray, (home + rng.integers(1, n_countries, n)) % n_countries, home)
    country = np.where(away, habits.trip_country[card], country)
    big = rng.random(n) < 0.03
    merchant = np.where(online, pickers.online.draw(rng, n=n), pickers.present.draw(rng, country))
    merchant = np.where(big, np.where(online, pickers.online_big.draw(rng, n=n),
                                      pickers.present_big.draw(rng, country)), merchant)
    amount = (bank.card_avg_amount[card] * bank.category_column(1)[merchant]
              * rng.lognormal(-0.245, 0.7, n) * np.where(big, rng.uniform(1.5, 5.0, n), 1.0))
    story = np.where(away, _CODE["travel"], np.where(big, _CODE["big_purchase"], 0))
    return _rows(ts, card, merchant, amount, country, online,
                 masked(online, habits.devices(rng, bank, card, ts)), story)


def _rows(ts: np.ndarray, card: np.ndarray, merchant: np.ndarray, amount: np.ndarray,
          country: np.ndarray, online: np.ndarray, device: np.ndarray, story: np.ndarray | int
          ) -> Columns:
    return {"timestamp": ts.astype(np.int64), "card": card, "merchant": merchant,
            "amount": np.round(np.maximum(amount, 0.5), 2), "country": country,
            "online": online, "device": device,
            "story": np.broadcast_to(np.asarray(story, np.int64), ts.shape).copy()}


def _subscriptions(rng: np.random.Generator, bank: Bank, habits: Habits, pickers: Pickers,
                   n: int, t0: int, t1: int) -> Columns:
    card = rng.integers(0, len(bank.card_ids), n)
    merchant = pickers.subscription.draw(rng, n=n)
    utility = bank.category_names[bank.merchant_category[merchant]] == "utilities"
    amount = np.where(utility, bank.card_avg_amount[card] * rng.uniform(0.6, 2.0, n),
                      rng.choice(_PRICES, n))
    period = np.where(rng.random(n) < 0.2, 7, 30) * US_PER_DAY
    night = rng.random(n) < 0.55  # billing runs overnight
    hour = np.where(night, rng.integers(0, 6 * US_PER_HOUR, n), time_of_day(rng, n))
    first = t0 + (rng.random(n) * period).astype(np.int64) // US_PER_DAY * US_PER_DAY + hour
    count = np.where(first < t1, (t1 - 1 - first) // period + 1, 0)
    ep = np.repeat(np.arange(n), count)
    k = np.arange(len(ep)) - np.repeat(np.cumsum(count) - count, count)
    ts = first[ep] + k * period[ep]
    c = card[ep]
    return _rows(ts, c, merchant[ep], amount[ep], bank.card_home[c], np.ones(len(ep), bool),
                 habits.main_device(bank, c, ts), _CODE["subscription"])


def _app_bursts(rng: np.random.Generator, bank: Bank, habits: Habits, pickers: Pickers,
                n: int, t0: int, t1: int) -> Columns:
    share = bank.card_online_share
    card = rng.choice(len(share), n, p=share / share.sum())
    ep, ts = burst_times(rng, rng.integers(2, 9, n), t0, t1, 40 * US_PER_SECOND,
                         (3 * US_PER_SECOND, 5 * _MINUTE), uniform_share=0.3)
    c = card[ep]
    return _rows(ts, c, pickers.app.draw(rng, n=n)[ep], rng.choice(_APP_PRICES, len(ep)),
                 habits.location(bank, c, ts), np.ones(len(ep), bool),
                 habits.main_device(bank, c, ts), _CODE["app_burst"])


def _sprees(rng: np.random.Generator, bank: Bank, habits: Habits, pickers: Pickers,
            n: int, t0: int, t1: int) -> Columns:
    card = rng.choice(len(bank.card_rate), n, p=bank.card_rate / bank.card_rate.sum())
    size = rng.integers(3, 11, n)
    ep, ts = burst_times(rng, size, t0, t1, 25 * _MINUTE, (3 * _MINUTE, 90 * _MINUTE))
    first = ts[np.cumsum(size) - size]
    sale = habits.sale_days[rng.integers(0, len(habits.sale_days), n)]
    day = t0 + (first - t0) // US_PER_DAY * US_PER_DAY
    ts = ts + np.where(rng.random(n) < 0.6, sale - day, 0)[ep]
    c = card[ep]
    online = rng.random(len(ep)) < 0.5
    country = habits.location(bank, c, ts)
    merchant = np.where(online, pickers.spree_online.draw(rng, n=len(ep)),
                        pickers.spree_present.draw(rng, country))
    amount = (bank.card_avg_amount[c] * bank.category_column(1)[merchant]
              * rng.lognormal(0.1, 0.6, len(ep)))
    return _rows(ts, c, merchant, amount, country, online,
                 masked(online, habits.main_device(bank, c, ts)), _CODE["spree"])


def _travel_bookings(rng: np.random.Generator, bank: Bank, habits: Habits, pickers: Pickers,
                     t0: int) -> Columns:
    trips = np.flatnonzero(habits.trip_start != NEVER)
    ep = np.repeat(trips, rng.integers(1, 3, len(trips)))
    before = habits.trip_start[ep] - rng.integers(1, 21, len(ep)) * US_PER_DAY
    ts = before // US_PER_DAY * US_PER_DAY + time_of_day(rng, len(ep))
    merchant = pickers.travel.draw(rng, n=len(ep))
    amount = (bank.card_avg_amount[ep] * bank.category_column(1)[merchant]
              * rng.lognormal(0.3, 0.6, len(ep)))
    rows = _rows(ts, ep, merchant, amount, bank.card_home[ep],
                 np.ones(len(ep), bool), habits.main_device(bank, ep, ts),
                 _CODE["travel_booking"])
    keep = rows["timestamp"] >= t0
    return {k: v[keep] for k, v in rows.items()}


def legit_bursts(rngs: list[np.random.Generator], bank: Bank, habits: Habits, pickers: Pickers,
                 n_transactions: int, t0: int, t1: int) -> Columns:
    """Every legit burst row of the period, sorted by time (``rngs``: four streams)."""
    days = max(1.0, (t1 - t0) / US_PER_DAY)
    mean_rows = {"subscription": 0.8 * max(1.0, days / 30) + 0.2 * days / 7,
                 "app_burst": 5.0, "spree": 6.5}
    parts = []
    for rng, (name, fn) in zip(rngs, (("subscription", _subscriptions),
                                      ("app_burst", _app_bursts), ("spree", _sprees)),
                               strict=False):
        n = max(1, round(BURSTS[name] * n_transactions / mean_rows[name]))
        parts.append(fn(rng, bank, habits, pickers, n, t0, t1))
    parts.append(_travel_bookings(rngs[3], bank, habits, pickers, t0))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = (merged["timestamp"] >= t0) & (merged["timestamp"] < t1)
    order = np.argsort(merged["timestamp"][keep], kind="stable")
    return {k: v[keep][order] for k, v in merged.items()}
