"""Locust scenario: the e-commerce site calling the recommender on every page view.

A visitor browses like a shopper: the home page shows their recommendations, product
pages record a view and show similar items, some products go to the cart, and a few
carts are bought. Weights follow a typical shop funnel (views >> add to cart >>
purchase); think times of 1-4 s are a person reading a page. One in eight visitors is
new to the shop (unknown user id): they get the flagged fallback, never an error.
A nightly-style e-mail campaign asks for recommendations in batches alongside.

Run: ``mlsuite loadtest --scenario shop`` (or ``locust -f loadtests/shop_site.py``).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from loadtest_data import AUTH_HEADERS, RECOMMENDER_URL, shop
from locust import FastHttpUser, between, constant, task

RECS = "/v1/users/[user_id]/recommendations"
SIMILAR = "/v1/items/[item_id]/similar"
NEW_VISITOR_SHARE = 0.125


def _check_list(resp: Any, key: str = "items") -> list[dict[str, Any]] | None:
    """The response's item list, or None after marking the request failed."""
    try:
        body = resp.json()
        items = body[key]
        if not isinstance(items, list):
            raise TypeError(f"{key} is {type(items).__name__}")
    except Exception as exc:  # noqa: BLE001 - any malformed answer is a failure
        resp.failure(f"bad body ({exc}): {resp.text[:200]}")
        return None
    return items  # not marked: the status decides (non-2xx is a failure)


class ShopVisitor(FastHttpUser):
    """One shopper's session on the site."""

    host = RECOMMENDER_URL
    default_headers = AUTH_HEADERS
    wait_time = between(1, 4)
    weight = 10

    def on_start(self) -> None:
        self.rng = random.Random()
        data = shop()
        if self.rng.random() < NEW_VISITOR_SHARE:
            self.user_id = f"visitor-{uuid.uuid4().hex[:12]}"
        else:
            self.user_id = self.rng.choice(data.users)
        self.shown: list[str] = []  # item ids the site has shown this visitor
        self.viewed: str | None = None
        self.cart: list[str] = []

    def _events(self, *events: tuple[str, str]) -> None:
        body = {"events": [{"user_id": self.user_id, "item_id": i, "event_type": t}
                           for i, t in events]}
        with self.client.post("/v1/events", json=body, name="/v1/events",
                              catch_response=True) as resp:
            if resp.status_code != 201 or f'"accepted":{len(events)}' not in resp.text.replace(" ", ""):
                resp.failure(f"events not accepted: {resp.status_code} {resp.text[:200]}")

    @task(3)
    def home_page(self) -> None:
        with self.client.get(f"/v1/users/{self.user_id}/recommendations?n=10", name=RECS,
                             catch_response=True) as resp:
            items = _check_list(resp)
        if items:
            self.shown = [it["item_id"] for it in items]

    @task(1)
    def category_page(self) -> None:
        category = self.rng.choice(shop().categories)
        with self.client.get(f"/v1/users/{self.user_id}/recommendations?n=10&category={category}",
                             name=f"{RECS}?category", catch_response=True) as resp:
            _check_list(resp)

    @task(6)
    def product_page(self) -> None:
        # Most product views come from what the site showed; the rest from search.
        if self.shown and self.rng.random() < 0.6:
            item = self.rng.choice(self.shown)
        else:
            item = self.rng.choice(shop().items)
        self.viewed = item
        self._events((item, "view"))
        with self.client.get(f"/v1/items/{item}/similar?n=10", name=SIMILAR,
                             catch_response=True) as resp:
            items = _check_list(resp)
        if items:
            self.shown = [it["item_id"] for it in items]

    @task(2)
    def add_to_cart(self) -> None:
        if self.viewed is not None and self.viewed not in self.cart:
            self.cart.append(self.viewed)
            self._events((self.viewed, "add_to_cart"))

    @task(1)
    def checkout(self) -> None:
        if self.cart and self.rng.random() < 0.5:
            self._events(*[(item, "purchase") for item in self.cart])
            self.cart = []


class EmailCampaign(FastHttpUser):
    """The marketing job: recommendations for a batch of users every few seconds."""

    host = RECOMMENDER_URL
    default_headers = AUTH_HEADERS
    wait_time = constant(5)
    fixed_count = 1
    batch_size = 100

    @task
    def batch(self) -> None:
        users = random.sample(shop().users, min(self.batch_size, len(shop().users)))
        with self.client.post("/v1/recommendations/batch", json={"user_ids": users, "n": 10},
                              name="/v1/recommendations/batch", catch_response=True) as resp:
            results = _check_list(resp, "results")
            if results is not None and len(results) != len(users):
                resp.failure(f"{len(results)} results for {len(users)} users")
