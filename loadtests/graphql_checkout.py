"""Locust scenario: a shop front end on the GraphQL API, checkout included.

- ``checkout`` (most traffic): one mutation per payment returns the cart's
  recommendations and the payment's fraud decision (both services called at once).
- ``product page``: a user's recommendations with each item's category, price and stock.
- ``similar``: an item page with its similar items and their prices.
- ``home feed``: several users' recommendations in one query (one batch call upstream).

A response counts as a failure when it is not HTTP 200, carries ``errors``, or misses
the data asked for: GraphQL answers 200 with ``errors`` for an upstream that is down.

Run: ``locust -f loadtests/graphql_checkout.py`` with ``MLSUITE_LOADTEST_GRAPHQL_URL``
(default http://127.0.0.1:8003) and ``MLSUITE_DATA_DIR`` set (see ``loadtest_data``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from loadtest_data import AUTH_HEADERS, new_transaction, shop
from locust import FastHttpUser, between, task

GRAPHQL_URL = os.environ.get("MLSUITE_LOADTEST_GRAPHQL_URL", "http://127.0.0.1:8003")
DECISIONS = {"approve", "review", "decline"}

CHECKOUT = """
mutation Checkout($user: ID!, $cart: [ID!]!, $tx: TransactionInput!) {
  checkout(userId: $user, cart: $cart, transaction: $tx, n: 4) {
    recommendations { itemId score item { category price inStock } }
    decision { transactionId score decision reasons { code text } modelVersion }
  }
}"""
PRODUCT_PAGE = """
query ProductPage($user: ID!) {
  user(id: $user) { variant recommendations(n: 8) { model items { itemId item { category price inStock } } } }
}"""
SIMILAR = """
query Similar($item: ID!) {
  item(id: $item) { category price similar(n: 6) { items { itemId item { price inStock } } } }
}"""
HOME_FEED = """
query HomeFeed($users: [ID!]!) {
  users(ids: $users) { id recommendations(n: 5) { items { itemId } } }
}"""


def _tx_input(body: dict[str, Any]) -> dict[str, Any]:
    """The REST transaction as a GraphQL ``TransactionInput``."""
    names = {"transaction_id": "transactionId", "card_id": "cardId", "merchant_id": "merchantId",
             "device_id": "deviceId"}
    return {names.get(k, k): v for k, v in body.items()}


class ShopFront(FastHttpUser):
    """A front end whose every page is one GraphQL request."""

    host = GRAPHQL_URL
    default_headers = AUTH_HEADERS
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.rng = random.Random()

    def _post(self, name: str, query: str, variables: dict[str, Any],
              check: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        with self.client.post("/graphql", json={"query": query, "variables": variables,
                                                "operationName": name},
                              name=name, catch_response=True) as resp:
            try:
                body = resp.json()
            except Exception as exc:  # noqa: BLE001 - any malformed answer is a failure
                resp.failure(f"HTTP {resp.status_code}, not JSON ({exc}): {resp.text[:200]}")
                return None
            if resp.status_code != 200 or body.get("errors") or not body.get("data"):
                resp.failure(f"HTTP {resp.status_code}: {str(body)[:300]}")
                return
            problem = check(body["data"]) if check is not None else None
            if problem:
                resp.failure(f"{problem}: {str(body)[:300]}")

    @task(5)
    def checkout(self) -> None:
        data = shop()
        body, _ = new_transaction(self.rng)
        cart = self.rng.sample(data.items, self.rng.randint(1, 3))

        def check(found: dict[str, Any]) -> str | None:
            decision = found["checkout"]["decision"]
            if decision["transactionId"] != body["transaction_id"]:
                return "decision for another transaction"
            return None if decision["decision"] in DECISIONS else "unknown decision"

        self._post("Checkout", CHECKOUT, {"user": self.rng.choice(data.users), "cart": cart,
                                          "tx": _tx_input(body)}, check)

    @task(3)
    def product_page(self) -> None:
        self._post("ProductPage", PRODUCT_PAGE, {"user": self.rng.choice(shop().users)})

    @task(1)
    def similar(self) -> None:
        self._post("Similar", SIMILAR, {"item": self.rng.choice(shop().items)})

    @task(1)
    def home_feed(self) -> None:
        self._post("HomeFeed", HOME_FEED, {"users": self.rng.sample(shop().users, 10)})
