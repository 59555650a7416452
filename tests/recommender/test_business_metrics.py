"""Business metrics: attributed conversions and revenue per variant as Prometheus counters.

The pattern of the attribution tests (real app, real Redis, the worker's consumer groups
drained here), read back from the metrics the service exposes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY

from mlplatform.config import Settings
from mlplatform.experiments import ExperimentStore
from mlplatform.streams import Consumer, partition_count
from recommender.attribution import EXPOSURES_STREAM, Attributor, ExposureCounter, PriceBook
from recommender.history import STREAM_KEY
from recommender.worker import DEAD_LETTERS

from .conftest import ONLY
from .test_recommender_attribution import NAME, SPLIT, assigned, drain, post, price_of, recommend

CONVERSIONS = "mlsuite_recommender_attributed_conversions_total"
REVENUE = "mlsuite_recommender_attributed_revenue_total"


def counted(variant: str) -> dict[str, float]:
    """This process's counters for ``variant`` (process-wide: tests compare differences)."""
    labels = {"experiment": NAME, "variant": variant}
    return {
        "add_to_cart": REGISTRY.get_sample_value(CONVERSIONS, {**labels, "event_type":
                                                                "add_to_cart"}) or 0.0,
        "purchase": REGISTRY.get_sample_value(CONVERSIONS, {**labels, "event_type":
                                                             "purchase"}) or 0.0,
        "revenue": REGISTRY.get_sample_value(REVENUE, labels) or 0.0,
    }


def test_conversions_and_revenue_are_counted_per_variant(
        make_app: Callable[..., Flask], redis_client: redis.Redis, known_user: str,
        served_settings: Settings) -> None:
    client = make_app(**{ONLY: SPLIT}).test_client()
    variant = assigned(served_settings, known_user)
    other = "popularity" if variant == "als" else "als"
    before = {v: counted(v) for v in (variant, other)}
    shown = [i["item_id"] for i in recommend(client, known_user, n=10)["items"]]
    catalogue = client.application.extensions["recommender.engine"].current().bundle.items
    unseen = next(str(i) for i in catalogue.ids.tolist() if str(i) not in shown)
    post(client, known_user, shown[0], "add_to_cart")
    post(client, known_user, shown[0], "purchase")
    post(client, known_user, shown[1], "purchase")
    post(client, known_user, unseen, "purchase")  # never shown: no variant gets it
    post(client, known_user, shown[2], "purchase", timestamp=time.time() + 200)  # out of the window
    drain(redis_client, windows={NAME: 60.0})
    mine, theirs = counted(variant), counted(other)
    assert mine["add_to_cart"] - before[variant]["add_to_cart"] == 1
    assert mine["purchase"] - before[variant]["purchase"] == 2
    price = price_of(client, shown[0]) + price_of(client, shown[1])
    assert price > 0
    assert mine["revenue"] - before[variant]["revenue"] == pytest.approx(price)
    assert theirs == before[other]
    # The same numbers in the service's exposition (the console reads them there).
    text = client.get("/metrics").get_data(as_text=True)
    line = f'{REVENUE}{{experiment="{NAME}",variant="{variant}"}} {mine["revenue"]!r}'
    assert line in text, [t for t in text.splitlines() if t.startswith(REVENUE)]


def test_a_batch_retried_entry_by_entry_counts_each_conversion_once(
        make_app: Callable[..., Flask], redis_client: redis.Redis, known_user: str,
        served_settings: Settings) -> None:
    """A handler failing on one entry is retried one entry at a time by the consumer:
    conversions read before the failure must not be counted twice."""
    client = make_app(**{ONLY: SPLIT}).test_client()
    variant = assigned(served_settings, known_user)
    shown = [i["item_id"] for i in recommend(client, known_user, n=10)["items"]]
    post(client, known_user, shown[0], "purchase")
    post(client, known_user, shown[1], "purchase")  # its price lookup fails
    prices = PriceBook(redis_client)

    def price(item: str) -> float | None:
        if item == shown[1]:
            raise ValueError(f"no price for {item}")
        return prices.price(item)

    before = counted(variant)
    store = ExperimentStore(redis_client)
    Consumer(redis_client, EXPOSURES_STREAM, "experiment-exposures",
             ExposureCounter(store).handle, DEAD_LETTERS).drain()
    Consumer(redis_client, STREAM_KEY, "attribution", Attributor(store, price).handle,
             DEAD_LETTERS, partitions=partition_count(redis_client)).drain()
    after = counted(variant)
    assert after["purchase"] - before["purchase"] == 1
    assert after["revenue"] - before["revenue"] == pytest.approx(price_of(client, shown[0]))
    assert redis_client.xlen(DEAD_LETTERS) == 1  # the entry at fault, with its reason
