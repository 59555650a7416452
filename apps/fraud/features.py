"""The feature vector of a transaction: request fields + Feast profiles + velocity.

``assemble`` is the only place a vector is built, online (the scorer) and offline
(``offline_vectors`` for training and replay), so both see the same features. A vector
is a flat ``dict[str, float]``; the merchant category is one-hot (``mcat=<category>``),
present only for the transaction's category (models fill absent keys with 0).

Values stay in natural units (amounts, counts, seconds) so reasons read plainly; models
apply their own transforms (``LOG_FEATURES`` are log1p-ed by the linear models).

>>> from fraud.schema import Transaction
>>> t = Transaction("t1", 1735732800.0, "c1", "m1", 120.0, "EUR", "FR", "online", "d1")
>>> x = assemble(t, {"home_country": "DE", "card_age_days": 30, "avg_amount": 40.0},
...              {"merchant_category": "jewelry", "merchant_country": "FR", "risk_score": 0.4},
...              {})
>>> x["amount_vs_card_avg"], x["foreign_country"], x["mcat=jewelry"], x["hour_of_day"]
(2.951219512195122, 1.0, 1.0, 12.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fraud.profiles import Profile, ProfileSource
from fraud.schema import Transaction
from fraud.velocity import VELOCITY_FEATURES, Event, VelocityStore, velocity_features

__all__ = [
    "assemble",
    "event_of",
    "offline_vectors",
    "BASE_FEATURES",
    "LOG_FEATURES",
    "CATEGORY_PREFIX",
    "CLOCK_FEATURES",
]

CATEGORY_PREFIX = "mcat="
BASE_FEATURES: tuple[str, ...] = (
    "amount", "channel_online", "has_device", "hour_of_day", "hour_sin", "hour_cos",
    "card_profile_missing", "card_age_days", "card_avg_amount", "amount_vs_card_avg",
    "foreign_country",
    "merchant_profile_missing", "merchant_risk_score", "merchant_cross_border",
    *VELOCITY_FEATURES,
)  # fmt: skip
# Functions of the time of day alone: an hour of live traffic holds one value of them.
CLOCK_FEATURES: tuple[str, ...] = ("hour_of_day", "hour_sin", "hour_cos")
# Heavy-tailed, non-negative: linear models see log1p of these.
LOG_FEATURES = frozenset(
    {"amount", "card_age_days", "card_avg_amount", "amount_vs_card_avg"}
    | {f for f in VELOCITY_FEATURES if "count" in f or "amount" in f or "secs" in f}
)
_TWO_PI_PER_DAY = 2.0 * math.pi / 86400.0


def event_of(t: Transaction) -> Event:
    return Event(t.transaction_id, t.timestamp, t.card_id, t.merchant_id, t.amount, t.country,
                 t.device_id)


def assemble(
    t: Transaction, card: Profile, merchant: Profile, velocity: Mapping[str, float]
) -> dict[str, float]:
    """The feature vector of ``t`` given its card and merchant profiles and velocity."""
    day_seconds = t.timestamp % 86400.0
    x: dict[str, float] = {
        "amount": t.amount,
        "channel_online": 1.0 if t.channel == "online" else 0.0,
        "has_device": 0.0 if t.device_id is None else 1.0,
        "hour_of_day": float(int(day_seconds // 3600)),
        "hour_sin": math.sin(day_seconds * _TWO_PI_PER_DAY),
        "hour_cos": math.cos(day_seconds * _TWO_PI_PER_DAY),
    }
    home = None
    if card is None:
        x.update(card_profile_missing=1.0, card_age_days=0.0, card_avg_amount=0.0,
                 amount_vs_card_avg=1.0, foreign_country=0.0)
    else:
        home = card.get("home_country")
        avg = _number(card.get("avg_amount"))
        x.update(
            card_profile_missing=0.0,
            card_age_days=_number(card.get("card_age_days")),
            card_avg_amount=avg,
            amount_vs_card_avg=(t.amount + 1.0) / (avg + 1.0),
            foreign_country=1.0 if home is not None and home != t.country else 0.0,
        )
    if merchant is None:
        x.update(merchant_profile_missing=1.0, merchant_risk_score=0.0, merchant_cross_border=0.0)
    else:
        mcountry = merchant.get("merchant_country")
        x.update(
            merchant_profile_missing=0.0,
            merchant_risk_score=_number(merchant.get("risk_score")),
            merchant_cross_border=1.0 if home is not None and mcountry not in (None, home) else 0.0,
        )
        category = merchant.get("merchant_category")
        if category:
            x[CATEGORY_PREFIX + str(category)] = 1.0
    x.update(velocity)
    for name, value in t.extra.items():
        x["x_" + name] = value
    return x


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    number = float(value)
    return number if math.isfinite(number) else 0.0


def offline_vectors(
    transactions: Sequence[Transaction], profiles: ProfileSource, store: VelocityStore,
    progress: Iterable[Any] | None = None, chunk: int = 5000,
) -> list[dict[str, float]]:
    """Vectors of time-ordered ``transactions`` through ``store`` (e.g. a fresh
    ``MemoryVelocityStore``), exactly as the scorer would have built them live.
    ``progress``: an object with ``update(n)`` (a tqdm bar)."""
    cards = profiles.get_many("card", list(dict.fromkeys(t.card_id for t in transactions)))
    merchants = profiles.get_many(
        "merchant", list(dict.fromkeys(t.merchant_id for t in transactions))
    )
    out: list[dict[str, float]] = []
    for start in range(0, len(transactions), chunk):
        part = transactions[start:start + chunk]
        events = [event_of(t) for t in part]
        for t, e, h in zip(part, events, store.observe(events)):
            out.append(assemble(t, cards[t.card_id], merchants[t.merchant_id],
                                velocity_features(e, h)))
        if progress is not None:
            progress.update(len(part))  # type: ignore[attr-defined]
    return out
