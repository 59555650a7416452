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
- consumer groups "experiment-exposures" on ``mlsuite:rec:exposures`` and "attribution"
  on ``mlsuite:rec:events``: the A/B counts (``recommender.attribution``): exposed
  users, exposures, errors and latency per variant; carts and purchases of shown items
  attributed to the variant and model version that showed them, with revenue;
- retention (archive to the lake, then trim) of the events, exposures, updates and
  dead letters.

Several workers may run: the groups share the entries, a lease keeps one popularity
publisher, and a lock serialises catalogue publications, so a read taken before another
worker's push is never published after that worker's newer one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from mlplatform.config import Settings
from mlplatform.errors import ConfigError, Unavailable
from mlplatform.experiments import ExperimentStore, load_definitions
from mlplatform.lease import Lease
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.snapshots import SnapshotStore
from mlplatform.streams import Consumer, consumer_name, partition_count
from mlplatform.worker import Worker
from recommender.attribution import EXPOSURES_STREAM, Attributor, ExposureCounter, PriceBook
from recommender.bundle import ModelBundle
from recommender.catalogue import (
    CATALOGUE_KEY,
    ItemState,
    decode_catalogue,
    encode_catalogue,
    read_item_state,
)
from recommender.data import DEFAULT_EVENT_WEIGHTS
from recommender.history import STREAM_KEY
from recommender.pusher import FeastPusher
from recommender.trending import POPULARITY_KEY, PopularityCounter, encode_popularity
from recommender.updates import UPDATES_STREAM, publish_overrides

__all__ = ["DEAD_LETTERS", "WorkerConfig", "attribution_windows", "build", "publish_snapshots"]

log = logging.getLogger(__name__)

DEAD_LETTERS = "mlsuite:rec:dead-letters"
CATALOGUE_LOCK = "mlsuite:rec:catalogue:lock"
POPULARITY_LEASE = "mlsuite:rec:popularity:lease"
MAX_DUTY = 0.02  # share of a worker's time full catalogue reads may take


@dataclass(frozen=True)
class WorkerConfig:
    """Periods and the model followed (defaults for production; tests shorten them)."""

    model_name: str = "recommender"
    alias: str = "production"
    # Full re-read of the catalogue from Feast (what was written there directly); updates
    # pushed by this service are patched in at once.
    catalogue_seconds: float = 30.0
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
    """Reads the served version's item flags from Feast and publishes the catalogue.

    Two ways: ``publish`` reads every item of the version (at start, on a promotion, and
    every ``period`` to pick up what was written to Feast without going through this
    service), stretched so reads take at most ``MAX_DUTY`` of the time; ``patch`` reads
    only the items an update batch just pushed and writes them into the published flags,
    so a PUT shows at once without re-reading the catalogue.
    """

    def __init__(self, client: redis.Redis, served: Served, feast: FeastHandle,
                 period: float) -> None:
        self.store = SnapshotStore(client, CATALOGUE_KEY)
        self.lock = Lease(client, CATALOGUE_LOCK, ttl_seconds=10)
        self.served, self.feast, self.period = served, feast, period
        self._kicked = threading.Event()
        self._full = True
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._read_seconds = 0.0

    def kick(self, item_ids: Collection[str] | None = None) -> None:
        """Publish now instead of at the next period: only ``item_ids`` (just pushed), or
        the whole catalogue (None: a promotion)."""
        with self._pending_lock:
            if item_ids is None:
                self._full = True
            else:
                self._pending.update(item_ids)
        self._kicked.set()

    def run(self, stop: threading.Event) -> None:
        failing = False
        next_full = 0.0
        while not stop.is_set():
            while not (stop.is_set() or self._kicked.is_set()) \
                    and time.monotonic() < next_full:
                self._kicked.wait(0.05)
            if stop.is_set():
                return
            self._kicked.clear()
            with self._pending_lock:
                full = self._full or time.monotonic() >= next_full
                pending, self._pending, self._full = self._pending, set(), False
            try:
                if full:
                    self.publish()
                    next_full = time.monotonic() + max(self.period,
                                                       self._read_seconds / MAX_DUTY)
                elif pending:
                    self.patch(pending)
                failing = False
            except (redis.RedisError, TimeoutError) as exc:
                if not failing:
                    log.warning("catalogue: cannot publish (%s); will retry", exc)
                failing = True
                self.kick(None if full else pending)
                stop.wait(0.5)

    def _locked(self) -> None:
        deadline = time.monotonic() + 5.0
        while not self.lock.acquire():  # another worker is publishing: wait for it
            if time.monotonic() > deadline:
                raise TimeoutError("catalogue lock held for more than 5 s")
            time.sleep(0.02)

    def publish(self) -> str:
        """Read every item from Feast and publish (under the lock); what was published."""
        served = self.served.get()
        if served is None:
            return "no model served yet"
        version, bundle = served
        ids = [str(i) for i in bundle.items.ids.tolist()]
        self._locked()
        try:
            started = time.perf_counter()
            state = read_item_state(self.feast.reader(), ids, bundle.categories,
                                    bundle.item_category)
            self._read_seconds = time.perf_counter() - started
            if state.degraded:
                state = self._last_good(version.label) or state
            self._publish(state, ids, version.label)
        finally:
            self.lock.release()
        return f"{version.label}: {int(state.in_stock.sum())}/{len(ids)} in stock ({state.source})"

    def patch(self, item_ids: Collection[str]) -> str:
        """Re-read only ``item_ids`` from Feast and write them into the published flags
        (the whole catalogue when there is none yet for the served version)."""
        served = self.served.get()
        if served is None:
            return "no model served yet"
        version, bundle = served
        snapshot = self.store.read()
        current = decode_catalogue(snapshot) if snapshot is not None else None
        if current is None or current.model != version.label or current.state.degraded:
            return self.publish()
        found = [(i, bundle.items.lookup(i)) for i in sorted(item_ids)]
        known = [(i, k) for i, k in found if k is not None]  # others: not in the model
        if not known:
            return "no served item changed"
        self._locked()
        try:
            snapshot = self.store.read()  # again, under the lock: the newest flags
            if snapshot is None:
                return self.publish()
            state = decode_catalogue(snapshot).state
            rows = np.array([k for _, k in known])
            sub = read_item_state(self.feast.reader(), [i for i, _ in known],
                                  bundle.categories, bundle.item_category[rows])
            if sub.degraded:
                raise TimeoutError("feast read of the updated items failed")
            categories = list(state.categories)
            for name in sub.categories:
                if name not in categories:
                    categories.append(name)  # appended: existing codes keep their meaning
            remap = np.array([categories.index(c) for c in sub.categories] + [-1], np.int16)
            in_stock, category = state.in_stock.copy(), state.category.copy()
            in_stock[rows] = sub.in_stock
            category[rows] = remap[sub.category]
            price = None
            if state.price is not None and sub.price is not None:
                price = state.price.copy()
                price[rows] = sub.price
            patched = ItemState(in_stock, category, categories, "feast", state.loaded_at,
                                price)
            self._publish(patched, [str(i) for i in bundle.items.ids.tolist()], version.label)
        finally:
            self.lock.release()
        return f"{version.label}: {len(known)} items patched"

    def _publish(self, state: ItemState, ids: list[str], model: str) -> None:
        body, meta = encode_catalogue(state, ids, model, refresh_seconds=self.period)
        # Same flags as published: republished once a minute only (its age), not handed
        # to every request worker to decode every period.
        self.store.publish_changed(body, meta, digest=catalogue_digest(state, model))

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
        counts = self.counter.read()
        body, meta = encode_popularity(counts, [str(i) for i in bundle.items.ids.tolist()],
                                       version.label)
        # No new event: the ranking is unchanged (decay scales every item alike), so
        # republish only once a minute.
        self.store.publish_changed(body, meta, digest=f"{version.label}:{counts.events}")
        return None


def catalogue_digest(state: Any, model: str) -> str:
    """What identifies a catalogue's flags (not when they were read)."""
    digest = hashlib.sha256(f"{model}|{state.source}|{state.categories}".encode())
    for array in (state.in_stock, state.category, state.price):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


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

    # The event stream is partitioned by user on a cluster (recommender.history).
    parts = partition_count(client)
    worker.consume(Consumer(client, STREAM_KEY, "popularity", counter.handle, DEAD_LETTERS,
                            name=consumer_name("popularity"), partitions=parts))
    worker.consume(Consumer(client, UPDATES_STREAM, "feast-push", pusher.handle, DEAD_LETTERS,
                            name=consumer_name("feast-push"),
                            claim_idle_ms=int(config.retry_seconds * 1000),
                            claim_every_seconds=min(1.0, config.retry_seconds)))
    experiments = ExperimentStore(client)
    worker.consume(Consumer(client, EXPOSURES_STREAM, "experiment-exposures",
                            ExposureCounter(experiments).handle, DEAD_LETTERS,
                            name=consumer_name("experiment-exposures")))
    worker.consume(Consumer(client, STREAM_KEY, "attribution",
                            Attributor(experiments, PriceBook(client).price,
                                       attribution_windows(settings)).handle,
                            DEAD_LETTERS, name=consumer_name("attribution"),
                            partitions=parts))
    worker.loop("catalogue", catalogue.run)
    # Set Feast up and publish the first catalogue before the worker says it runs:
    # importing Feast takes seconds of CPU, which must not land in the first requests.
    push_feast.reader()
    try:
        log.info("catalogue: %s", catalogue.publish())
    except (redis.RedisError, TimeoutError) as exc:
        log.warning("catalogue: first publication failed (%s); retrying in the background",
                    exc)
    worker.loop("served-model", lambda stop: (stop.wait(), served.live.stop(), None)[-1])
    worker.every("popularity", config.popularity_seconds, popularity.publish, first_after=0.0)
    worker.every("user-overrides", config.overrides_seconds, lambda: publish_overrides(client))
    worker.retain(STREAM_KEY, partitions=parts)
    worker.retain(UPDATES_STREAM, EXPOSURES_STREAM, DEAD_LETTERS)


def attribution_windows(settings: Settings) -> dict[str, float]:
    """Experiment name -> attribution window in seconds, from the experiments file."""
    try:
        return {name: d.window_seconds
                for name, d in load_definitions(settings.experiments_file).items()}
    except ConfigError as exc:
        log.warning("attribution: experiment definitions unavailable (%s); every "
                    "experiment gets the default window", exc)
        return {}


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
