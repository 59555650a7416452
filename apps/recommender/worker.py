"""The recommender worker (``mlsuite worker recommender``): the service's background state.

Request workers only answer requests; everything that keeps their state fresh runs here
(``build`` adds the jobs to a ``mlplatform.worker.Worker``):

- consumer group "popularity" on ``mlsuite:rec:events``: decayed popularity and trending
  counters in Redis (``trending.PopularityCounter``, exactly once per event);
- "popularity", every 2 s: those counters in the served version's item order, published
  as the popularity snapshot request workers blend into cold start;
- consumer group "feast-push" on ``mlsuite:rec:updates``: PUT updates pushed to Feast in
  batches (``pusher.FeastPusher``), users' new segments published as overrides;
- "catalogue": the served version's item flags from Feast (one batched read), published
  as the catalogue snapshot every 2 s, right after pushes, and when a version is promoted;
- "user-overrides", every minute: expired segment overrides dropped;
- retention (archive to the lake, then trim) of the events, updates and dead letters.

Several workers may run: the groups share the entries, a lease keeps one popularity
publisher, and a lock serialises catalogue publications, so a read taken before another
worker's push is never published after that worker's newer one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.lease import Lease
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.snapshots import SnapshotStore
from mlplatform.streams import Consumer, consumer_name
from mlplatform.worker import Worker
from recommender.bundle import ModelBundle
from recommender.catalogue import CATALOGUE_KEY, decode_catalogue, encode_catalogue, read_item_state
from recommender.data import DEFAULT_EVENT_WEIGHTS
from recommender.history import STREAM_KEY
from recommender.pusher import FeastPusher
from recommender.trending import POPULARITY_KEY, PopularityCounter, encode_popularity
from recommender.updates import UPDATES_STREAM, publish_overrides

__all__ = ["DEAD_LETTERS", "WorkerConfig", "build", "publish_snapshots"]

log = logging.getLogger(__name__)

DEAD_LETTERS = "mlsuite:rec:dead-letters"
CATALOGUE_LOCK = "mlsuite:rec:catalogue:lock"
POPULARITY_LEASE = "mlsuite:rec:popularity:lease"


@dataclass(frozen=True)
class WorkerConfig:
    """Periods and the model followed (defaults for production; tests shorten them)."""

    model_name: str = "recommender"
    alias: str = "production"
    catalogue_seconds: float = 2.0
    popularity_seconds: float = 2.0
    overrides_seconds: float = 60.0
    retry_seconds: float = 5.0  # Feast down: pending updates are retried this often


class Served:
    """The bundle of the version the service serves, followed like request workers do."""

    def __init__(self, settings: Settings, config: WorkerConfig,
                 on_swap: Any = None) -> None:
        registry = ModelRegistry(settings.data_dir / "models")
        self.live = registry.live(config.model_name, config.alias, lambda v: ModelBundle.load(v.path),
                                  poll_seconds=settings.model_poll_seconds, on_swap=on_swap)

    def get(self) -> tuple[ModelVersion, ModelBundle] | None:
        try:
            return self.live.get()
        except Unavailable:
            return None

    def event_weights(self) -> dict[str, float]:
        served = self.get()
        return served[1].event_weights if served else DEFAULT_EVENT_WEIGHTS


class FeastHandle:
    """One job's Feast adapter, created on first use (importing Feast takes seconds).

    One per thread: the catalogue reader and the pusher never share a connection.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._adapter: Any = None

    def get(self) -> Any:
        if self._adapter is None:
            from mlplatform.features import FeatureStoreAdapter

            try:
                self._adapter = FeatureStoreAdapter.from_settings(self.settings)
            except Unavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - any set-up failure is an outage here
                raise Unavailable(f"feast cannot be set up: {exc}", dependency="feast") from exc
        return self._adapter

    def reader(self) -> Any:
        """The adapter, or None when Feast cannot be set up (the state degrades)."""
        try:
            return self.get()
        except Unavailable as exc:
            log.warning("catalogue: %s", exc)
            return None


class CataloguePublisher:
    """Reads the served version's item flags from Feast and publishes the catalogue."""

    def __init__(self, client: redis.Redis, served: Served, feast: FeastHandle,
                 period: float) -> None:
        self.store = SnapshotStore(client, CATALOGUE_KEY)
        self.lock = Lease(client, CATALOGUE_LOCK, ttl_seconds=10)
        self.served, self.feast, self.period = served, feast, period
        self._kicked = threading.Event()

    def kick(self) -> None:
        """Publish now (after a push, or a promotion) instead of at the next period."""
        self._kicked.set()

    def run(self, stop: threading.Event) -> None:
        failing = False
        while not stop.is_set():
            due = time.monotonic() + self.period
            while not (stop.is_set() or self._kicked.is_set()) and time.monotonic() < due:
                self._kicked.wait(0.05)
            if stop.is_set():
                return
            self._kicked.clear()
            try:
                self.publish()
                failing = False
            except (redis.RedisError, TimeoutError) as exc:
                if not failing:
                    log.warning("catalogue: cannot publish (%s); will retry", exc)
                failing = True
                self._kicked.set()
                stop.wait(0.5)

    def publish(self) -> str:
        """Read Feast and publish (under the lock); what was published."""
        served = self.served.get()
        if served is None:
            return "no model served yet"
        version, bundle = served
        ids = [str(i) for i in bundle.items.ids.tolist()]
        deadline = time.monotonic() + 5.0
        while not self.lock.acquire():  # another worker is publishing: wait for it
            if time.monotonic() > deadline:
                raise TimeoutError("catalogue lock held for more than 5 s")
            time.sleep(0.02)
        try:
            state = read_item_state(self.feast.reader(), ids, bundle.categories,
                                    bundle.item_category)
            if state.degraded:
                state = self._last_good(version.label) or state
            body, meta = encode_catalogue(state, ids, version.label,
                                          refresh_seconds=self.period)
            self.store.publish(body, meta)
        finally:
            self.lock.release()
        return f"{version.label}: {int(state.in_stock.sum())}/{len(ids)} in stock ({state.source})"

    def _last_good(self, model: str) -> Any:
        """The published flags of ``model`` marked stale: Feast failed, keep filtering."""
        snapshot = self.store.read()
        if snapshot is None or snapshot.meta.get("model") != model \
                or snapshot.meta.get("source") not in ("feast", "stale"):
            return None
        from dataclasses import replace

        return replace(decode_catalogue(snapshot).state, source="stale")


class PopularityPublisher:
    """Publishes the live counts in the served version's item order (one worker at a time)."""

    def __init__(self, client: redis.Redis, served: Served, counter: PopularityCounter,
                 period: float) -> None:
        self.store = SnapshotStore(client, POPULARITY_KEY)
        self.lease = Lease(client, POPULARITY_LEASE, ttl_seconds=max(3 * period, 2.0))
        self.served, self.counter = served, counter

    def publish(self) -> str | None:
        served = self.served.get()
        if served is None or not self.lease.acquire():
            return None
        version, bundle = served
        body, meta = encode_popularity(self.counter.read(),
                                       [str(i) for i in bundle.items.ids.tolist()],
                                       version.label)
        self.store.publish(body, meta)
        return None


def build(settings: Settings, worker: Worker, config: WorkerConfig | None = None) -> None:
    """Add the recommender's jobs to ``worker`` (the "mlsuite.workers" entry point)."""
    config = config or WorkerConfig()
    client = worker.client
    kick: list[Any] = []
    served = Served(settings, config, on_swap=lambda _v, _b: [k() for k in kick])
    catalogue = CataloguePublisher(client, served, FeastHandle(settings),
                                   config.catalogue_seconds)
    kick.append(catalogue.kick)
    counter = PopularityCounter(client, served.event_weights)
    popularity = PopularityPublisher(client, served, counter, config.popularity_seconds)
    push_feast = FeastHandle(settings)
    pusher = FeastPusher(client, push_feast.get, on_items=catalogue.kick)

    worker.consume(Consumer(client, STREAM_KEY, "popularity", counter.handle, DEAD_LETTERS,
                            name=consumer_name("popularity")))
    worker.consume(Consumer(client, UPDATES_STREAM, "feast-push", pusher.handle, DEAD_LETTERS,
                            name=consumer_name("feast-push"),
                            claim_idle_ms=int(config.retry_seconds * 1000),
                            claim_every_seconds=min(1.0, config.retry_seconds)))
    worker.loop("catalogue", catalogue.run)
    # Set Feast up now (seconds: imports, registry), not on the first PUT's batch.
    worker.loop("feast-setup", lambda _stop: push_feast.reader() and None)
    worker.loop("served-model", lambda stop: (stop.wait(), served.live.stop(), None)[-1])
    worker.every("popularity", config.popularity_seconds, popularity.publish, first_after=0.0)
    worker.every("user-overrides", config.overrides_seconds, lambda: publish_overrides(client))
    worker.retain(STREAM_KEY, UPDATES_STREAM, DEAD_LETTERS)


def publish_snapshots(settings: Settings, client: redis.Redis,
                      config: WorkerConfig | None = None) -> str:
    """Publish the catalogue and popularity snapshots once, as a running worker would
    (the benchmark, and tests that serve without a worker); what was published."""
    config = config or WorkerConfig()
    served = Served(settings, config)
    try:
        done = CataloguePublisher(client, served, FeastHandle(settings), 0).publish()
        popularity = PopularityPublisher(client, served,
                                         PopularityCounter(client, served.event_weights), 1.0)
        popularity.publish()
        popularity.lease.release()  # a running worker's publisher takes over at once
        return done
    finally:
        served.live.stop()
