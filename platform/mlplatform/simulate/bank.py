"""The payments world: countries, currencies, merchant categories, cards, merchants.

Cards carry hidden habits (activity rate, online share, three devices: the main one, an
occasional one and the phone it may be replaced by) that only the transaction stream reveals; merchants carry a category, a country, a risk score and a
popularity. ``MerchantPicker`` draws merchants the way a card holder would: by
popularity, restricted to what is possible (a card-present payment happens in the
country where the card is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlplatform.simulate._common import entity_ids, segmented_sample

__all__ = ["COUNTRY_CURRENCY", "HIGH_VALUE", "MERCHANT_CATEGORIES", "SHOPPING", "SUBSCRIPTIONS",
           "Bank", "MerchantPicker"]

COUNTRY_CURRENCY: dict[str, str] = {
    "DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "IT": "EUR", "GB": "GBP",
    "US": "USD", "CA": "CAD", "CH": "CHF", "SE": "SEK", "PL": "PLN", "BR": "BRL",
}
# Where cards and merchants are based (same order as COUNTRY_CURRENCY).
_HOME_WEIGHTS = np.array([0.2, 0.13, 0.07, 0.08, 0.08, 0.14, 0.18, 0.04, 0.03, 0.02, 0.02, 0.01])
# category -> (share of merchants, amount multiplier, share of payments online, base risk)
MERCHANT_CATEGORIES: dict[str, tuple[float, float, float, float]] = {
    "grocery": (0.20, 0.6, 0.10, 0.05),
    "restaurant": (0.15, 0.7, 0.05, 0.05),
    "fuel": (0.08, 1.0, 0.00, 0.08),
    "fashion": (0.12, 1.3, 0.50, 0.10),
    "electronics": (0.08, 2.5, 0.60, 0.30),
    "travel": (0.06, 3.0, 0.70, 0.25),
    "digital_goods": (0.08, 0.4, 1.00, 0.40),
    "gift_cards": (0.04, 1.5, 0.80, 0.60),
    "jewelry": (0.03, 3.5, 0.30, 0.45),
    "pharmacy": (0.06, 0.5, 0.20, 0.05),
    "entertainment": (0.06, 0.8, 0.60, 0.15),
    "utilities": (0.04, 1.2, 0.90, 0.05),
}
HIGH_VALUE = ("electronics", "jewelry", "gift_cards", "travel")
# Where shopping sprees go, and who bills cards every week or month.
SHOPPING = ("fashion", "electronics", "entertainment", "gift_cards", "jewelry")
SUBSCRIPTIONS = ("digital_goods", "entertainment", "utilities")


def new_devices(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` fresh device ids like ``d0123456789``: 40 random bits, collisions negligible.

    >>> new_devices(np.random.default_rng(0), 2)[0][0]
    'd'
    """
    return np.array([f"d{x:010x}" for x in rng.integers(0, 1 << 40, n)], dtype=object)


class MerchantPicker:
    """Draws merchants by ``weight``; per country (of each row) or from all countries."""

    def __init__(self, weight: np.ndarray, merchant_country: np.ndarray, n_countries: int,
                 by_country: bool) -> None:
        self.width = len(weight)
        if by_country:
            table = weight[None, :] * (merchant_country[None, :] == np.arange(n_countries)[:, None])
            # A country with no suitable merchant falls back to suitable merchants anywhere.
            empty = table.sum(axis=1) == 0
            table[empty] = weight
        else:
            table = weight[None, :]
        cdf = np.cumsum(table, axis=1)
        self._cdf = (cdf / cdf[:, -1:] + np.arange(len(cdf))[:, None]).ravel()
        self.by_country = by_country

    def draw(self, rng: np.random.Generator, country: np.ndarray | None = None, n: int = 0
             ) -> np.ndarray:
        """Merchant rows: one per entry of ``country`` if picking by country, else ``n``."""
        if self.by_country:
            if country is None:
                raise ValueError("this picker draws per country: pass country rows")
            return segmented_sample(rng, self._cdf, np.asarray(country, np.int64), self.width)
        return segmented_sample(rng, self._cdf, np.zeros(n, np.int64), self.width)


@dataclass(frozen=True, eq=False)
class Bank:
    """Cards and merchants as aligned arrays (row k = card/merchant id number k + 1)."""

    countries: np.ndarray  # ISO-2, object
    currencies: np.ndarray  # ISO-4217 aligned with countries
    card_ids: np.ndarray
    card_home: np.ndarray  # country row
    card_age_days: np.ndarray
    card_avg_amount: np.ndarray
    card_rate: np.ndarray  # relative activity
    card_online_share: np.ndarray
    card_devices: np.ndarray  # (cards, 3): main, occasional, and the next phone
    merchant_ids: np.ndarray
    merchant_category: np.ndarray  # category row
    merchant_country: np.ndarray  # country row
    merchant_risk: np.ndarray
    merchant_popularity: np.ndarray

    @classmethod
    def generate(cls, rng: np.random.Generator, n_cards: int, n_merchants: int) -> Bank:
        countries = np.array(list(COUNTRY_CURRENCY), dtype=object)
        if n_merchants < len(countries):
            raise ValueError(f"n_merchants must be >= {len(countries)} (one per country), "
                             f"got {n_merchants}")
        home_p = _HOME_WEIGHTS / _HOME_WEIGHTS.sum()
        cat = np.array(list(MERCHANT_CATEGORIES.values()))
        # The first merchants guarantee every country a grocery shop for card-present payments.
        m_country = np.concatenate([np.arange(len(countries)),
                                    rng.choice(len(countries), n_merchants - len(countries),
                                               p=home_p)])
        m_cat = np.concatenate([np.zeros(len(countries), np.int64),
                                rng.choice(len(cat), n_merchants - len(countries),
                                           p=cat[:, 0] / cat[:, 0].sum())])
        risk = np.round(np.clip(cat[m_cat, 3] + rng.normal(0, 0.1, n_merchants), 0.01, 0.99), 3)
        return cls(
            countries=countries,
            currencies=np.array(list(COUNTRY_CURRENCY.values()), dtype=object),
            card_ids=entity_ids("c", n_cards, 6),
            card_home=rng.choice(len(countries), n_cards, p=home_p),
            card_age_days=np.clip(np.round(rng.lognormal(np.log(700), 0.9, n_cards)), 1, 7300)
            .astype(np.int64),
            card_avg_amount=np.maximum(np.round(rng.lognormal(np.log(45), 0.7, n_cards), 2), 2.0),
            card_rate=rng.gamma(2.0, 0.5, n_cards),
            card_online_share=rng.beta(2.0, 3.0, n_cards),
            card_devices=new_devices(rng, 3 * n_cards).reshape(n_cards, 3),
            merchant_ids=entity_ids("m", n_merchants, 5),
            merchant_category=m_cat,
            merchant_country=m_country,
            merchant_risk=risk,
            merchant_popularity=rng.lognormal(0, 1.0, n_merchants),
        )

    @property
    def category_names(self) -> np.ndarray:
        return np.array(list(MERCHANT_CATEGORIES), dtype=object)

    def category_column(self, index: int) -> np.ndarray:
        """A per-merchant column of the category table (1 amount, 2 online share, 3 risk)."""
        return np.array([v[index] for v in MERCHANT_CATEGORIES.values()])[self.merchant_category]

    def in_categories(self, categories: Sequence[str]) -> np.ndarray:
        """Per merchant: is its category one of ``categories``."""
        return np.isin(self.category_names[self.merchant_category], list(categories))

    def picker(self, *, online: bool, categories: Sequence[str] = (), by_country: bool
               ) -> MerchantPicker:
        """Merchants for online or card-present payments, optionally of ``categories`` only."""
        share = self.category_column(2)
        weight = self.merchant_popularity * (share if online else 1.0 - share)
        if categories:
            weight = weight * self.in_categories(categories)
        if weight.sum() == 0:  # tiny worlds: fall back to popularity
            weight = self.merchant_popularity.copy()
        return MerchantPicker(weight, self.merchant_country, len(self.countries), by_country)
