"""The hidden truth of the simulated shop: who likes what, and who buys what they see.

Every user has a 16-d taste and every item a 16-d embedding clustered by category; a
user's segment pulls the taste towards the segment's categories and sets their price
sensitivity. A user's score for an item is

    s(u, i) = AFFINITY_SCALE * taste_u . embedding_i - price_sensitivity_u * price_z_i

(``price_z`` = log of the price over its category median). ``relevance =
sigmoid(s - RELEVANCE_SHIFT)``; a view leads to add_to_cart with probability
``CART_MAX * relevance`` (0 when out of stock) and a cart to a purchase with
``BUY_GIVEN_CART``. ``ShopWorld.purchase_probability`` is that product: the chance a
user buys an item once shown it, so an experiment can score what a recommender shows.
The world is saved as ``world.npz`` next to the shop's tables.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.simulate._common import Columns, entity_ids, save_npz

__all__ = ["CATEGORIES", "SEGMENTS", "ShopWorld", "make_world"]

# category -> median price
CATEGORIES: dict[str, float] = {
    "electronics": 180.0, "books": 14.0, "fashion": 45.0, "home": 40.0, "toys": 25.0,
    "sports": 55.0, "beauty": 22.0, "grocery": 8.0, "garden": 35.0, "music": 18.0,
    "games": 50.0, "baby": 30.0,
}
# segment -> (share of users, favourite categories, price sensitivity)
SEGMENTS: dict[str, tuple[float, tuple[str, ...], float]] = {
    "bargain": (0.25, ("grocery", "home", "toys"), 1.2),
    "premium": (0.15, ("fashion", "beauty", "electronics"), -0.3),
    "family": (0.20, ("baby", "toys", "grocery"), 0.6),
    "tech": (0.15, ("electronics", "games", "music"), 0.2),
    "outdoor": (0.12, ("sports", "garden"), 0.4),
    "bookworm": (0.13, ("books", "music"), 0.5),
}
COUNTRIES: dict[str, float] = {
    "DE": 0.25, "FR": 0.15, "GB": 0.15, "US": 0.20, "NL": 0.07, "ES": 0.08, "IT": 0.06, "PL": 0.04,
}

DIM = 16
AFFINITY_SCALE = 7.0
RELEVANCE_SHIFT = 4.0
CART_MAX = 0.2
BUY_GIVEN_CART = 0.55
OUT_OF_STOCK = 0.07


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function.

    >>> sigmoid(np.array([0.0])).tolist()
    [0.5]
    """
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True, eq=False)
class ShopWorld:
    """The hidden truth of a simulated shop: who likes what, and who buys what they see."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    tastes: np.ndarray  # (users, DIM)
    price_sensitivity: np.ndarray  # (users,)
    embeddings: np.ndarray  # (items, DIM)
    price_z: np.ndarray  # (items,) log(price / category median)
    popularity: np.ndarray  # (items,) log-weight of views
    in_stock: np.ndarray  # (items,) bool

    @classmethod
    def load(cls, shop_dir: Path) -> ShopWorld:
        """Read ``world.npz`` written by ``simulate_shop`` into ``shop_dir``."""
        with np.load(Path(shop_dir) / "world.npz", allow_pickle=False) as data:
            arrays: dict[str, Any] = {name: data[name] for name in data.files}
        return cls(**arrays)

    def save(self, shop_dir: Path) -> None:
        """Write ``world.npz`` (byte-identical for the same world)."""
        save_npz(Path(shop_dir) / "world.npz", {
            "user_ids": self.user_ids.astype(str), "item_ids": self.item_ids.astype(str),
            "tastes": self.tastes, "price_sensitivity": self.price_sensitivity,
            "embeddings": self.embeddings, "price_z": self.price_z,
            "popularity": self.popularity, "in_stock": self.in_stock,
        })

    @functools.cached_property
    def _user_row(self) -> dict[str, int]:
        return {str(u): i for i, u in enumerate(self.user_ids)}

    @functools.cached_property
    def _item_row(self) -> dict[str, int]:
        return {str(x): i for i, x in enumerate(self.item_ids)}

    def _rows(self, user_id: str, item_ids: Sequence[str]) -> tuple[int, np.ndarray]:
        if user_id not in self._user_row:
            raise KeyError(f"unknown user_id {user_id!r} (expected one of the simulated users)")
        try:
            items = np.fromiter((self._item_row[i] for i in item_ids), dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"unknown item_id {e.args[0]!r} (expected a simulated item)") from None
        return self._user_row[user_id], items

    def _user_side(self, users: np.ndarray) -> np.ndarray:
        return np.hstack([AFFINITY_SCALE * self.tastes[users],
                          -self.price_sensitivity[users][:, None]])

    def _item_side(self, items: np.ndarray) -> np.ndarray:
        return np.hstack([self.embeddings[items], self.price_z[items][:, None]])

    def scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """s(u, i) for every pair of the given user rows x item rows: (len(users), len(items))."""
        return self._user_side(users) @ self._item_side(items).T

    def view_logits(self, users: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """s(u, i) + popularity_i over all items: the log-odds of what each user views."""
        left = np.hstack([self._user_side(users), np.ones((len(users), 1))])
        return np.matmul(left, self._all_items_with_popularity.T, out=out)

    @functools.cached_property
    def _all_items_with_popularity(self) -> np.ndarray:
        return np.hstack([self._item_side(np.arange(len(self.item_ids))),
                          self.popularity[:, None]])

    def pair_scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """s(u, i) for aligned pairs users[k], items[k]."""
        affinity = np.einsum("kd,kd->k", self.tastes[users], self.embeddings[items])
        return AFFINITY_SCALE * affinity - self.price_sensitivity[users] * self.price_z[items]

    def relevance(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """True relevance in (0, 1) of each item to the user (ignores popularity and stock)."""
        user, items = self._rows(user_id, item_ids)
        return sigmoid(self.scores(np.array([user]), items)[0] - RELEVANCE_SHIFT)

    def purchase_probability(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """Chance the user buys each item once shown it: 0 if out of stock, rising with relevance."""
        user, items = self._rows(user_id, item_ids)
        relevance = sigmoid(self.scores(np.array([user]), items)[0] - RELEVANCE_SHIFT)
        return CART_MAX * BUY_GIVEN_CART * relevance * self.in_stock[items]

    def relevance_matrix(self) -> np.ndarray:
        """Relevance of every item to every user, (users, items), rows/cols as the id arrays."""
        return sigmoid(
            self.scores(np.arange(len(self.user_ids)), np.arange(len(self.item_ids)))
            - RELEVANCE_SHIFT
        )


def make_world(
    rng: np.random.Generator, n_users: int, n_items: int
) -> tuple[ShopWorld, Columns, Columns, np.ndarray]:
    """Draw the hidden world plus the users and items tables and per-user activity."""
    cats = np.array(list(CATEGORIES), dtype=object)
    medians = np.array(list(CATEGORIES.values()))
    centroids = _unit(rng.normal(size=(len(cats), DIM)))
    item_cat = rng.integers(0, len(cats), n_items)
    embeddings = _unit(centroids[item_cat] + rng.normal(0, 0.6 / np.sqrt(DIM), (n_items, DIM)))
    price = np.maximum(np.round(medians[item_cat] * np.exp(rng.normal(0, 0.5, n_items)), 2), 0.99)
    popularity = rng.normal(0, 1.2, n_items)
    in_stock = rng.random(n_items) >= OUT_OF_STOCK

    seg_names = np.array(list(SEGMENTS), dtype=object)
    shares = np.array([s[0] for s in SEGMENTS.values()])
    cat_pos = {c: k for k, c in enumerate(CATEGORIES)}
    seg_dirs = _unit(np.stack([centroids[[cat_pos[c] for c in favs]].sum(0)
                               for _, favs, _ in SEGMENTS.values()]))
    seg_favs = [np.array([cat_pos[c] for c in favs]) for _, favs, _ in SEGMENTS.values()]
    segment = rng.choice(len(seg_names), n_users, p=shares / shares.sum())
    # A personal favourite: half the time one of the segment's categories, else any.
    own = np.array([rng.choice(seg_favs[s]) for s in range(len(seg_names))])[segment]
    personal = np.where(rng.random(n_users) < 0.5, own, rng.integers(0, len(cats), n_users))
    tastes = _unit(0.7 * seg_dirs[segment] + 0.7 * centroids[personal]
                   + rng.normal(0, 0.5 / np.sqrt(DIM), (n_users, DIM)))
    alphas = np.array([s[2] for s in SEGMENTS.values()])
    sensitivity = alphas[segment] + rng.normal(0, 0.3, n_users)
    countries = np.array(list(COUNTRIES), dtype=object)
    cw = np.array(list(COUNTRIES.values()))
    country = countries[rng.choice(len(countries), n_users, p=cw / cw.sum())]
    activity = rng.lognormal(0, 0.9, n_users)

    user_ids = entity_ids("u", n_users, 6)
    item_ids = entity_ids("i", n_items, 5)
    world = ShopWorld(user_ids=user_ids, item_ids=item_ids, tastes=tastes,
                      price_sensitivity=sensitivity, embeddings=embeddings,
                      price_z=np.log(price / medians[item_cat]), popularity=popularity,
                      in_stock=in_stock)
    users = {"user_id": user_ids, "segment": seg_names[segment], "country": country}
    items = {"item_id": item_ids, "category": cats[item_cat], "price": price, "in_stock": in_stock}
    return world, users, items, activity
