"""A/B attribution: which variant and model version led to a cart or a purchase.

Request path (``ExposureLog``, one pipelined round trip per request, nothing read):
each served list appends an exposure (experiment, variant, model version, user, items,
time, latency) to the ``mlsuite:rec:exposures`` stream and remembers a touch per shown
item for the user (``ExperimentStore.remember``: a hash expiring one attribution window
after the user's last exposure). A request that fails records an error entry instead.

Worker (consumer groups, exactly once per entry: effects and acks in one MULTI):

- "experiment-exposures" on ``mlsuite:rec:exposures`` (``ExposureCounter``): exposed
  users per variant, exposures per variant and version, errors, latency histogram;
- "attribution" on ``mlsuite:rec:events`` (``Attributor``): an ``add_to_cart`` or
  ``purchase`` of an item the user was shown within the experiment's window (last touch
  wins) is a conversion of the variant and version that showed it; a purchase adds
  the item's price (from the worker's catalogue snapshot) to the revenue. The same
  conversions and revenue are Prometheus counters per experiment and variant
  (``mlsuite_recommender_attributed_conversions_total``, ``..._revenue_total``), in the
  worker's process, which writes to the service's metrics folder.

The aggregates live in ``mlplatform.experiments.store``; the report is built from them
(``GET /v1/experiments/<name>``, ``mlsuite experiments report``). The exposure stream
is archived and trimmed like the others (the worker's retention).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter

from mlplatform.experiments.definition import DEFAULT_WINDOW_SECONDS, ExperimentDefinition
from mlplatform.experiments.store import ExperimentStore, Touch, latency_field
from mlplatform.rollouts.measure import count_guard
from mlplatform.snapshots import SnapshotStore
from mlplatform.streams import Entry
from recommender.catalogue import CATALOGUE_KEY, decode_catalogue

__all__ = ["EXPOSURES_STREAM", "Attributor", "ExposureCounter", "ExposureLog", "PriceBook"]

log = logging.getLogger(__name__)

EXPOSURES_STREAM = "mlsuite:rec:exposures"
CONVERSION_EVENTS = ("add_to_cart", "purchase")
CLOCK_SKEW_MS = 5_000  # an event stamped this much before its exposure still counts

LOST = Counter("mlsuite_recommender_exposures_lost_total",
               "Exposures not recorded because Redis failed (the response was still served)")
# Business metrics: what each variant brought in. Counted once per attributed event (the
# "attribution" group); revenue in the catalogue's price units.
ATTRIBUTED = Counter("mlsuite_recommender_attributed_conversions_total",
                     "Cart and purchase events attributed to an experiment variant",
                     ["experiment", "variant", "event_type"])
REVENUE = Counter("mlsuite_recommender_attributed_revenue_total",
                  "Revenue of purchases attributed to an experiment variant (catalogue prices)",
                  ["experiment", "variant"])


class ExposureLog:
    """Records what one experiment showed, from the request path (one round trip)."""

    def __init__(self, client: redis.Redis, definition: ExperimentDefinition) -> None:
        self.client = client
        self.definition = definition
        self.window_ms = int(definition.window_seconds * 1000)
        self._failing = False

    def record(self, shown: Sequence[tuple[str, str, Sequence[str], str]],
               latency_ms: float) -> None:
        """``shown``: (user, variant, item ids, model version) per served list (a rollout
        serves users of one batch by different versions); never raises."""
        now_ms = int(time.time() * 1000)
        name = self.definition.name
        pipe = self.client.pipeline(transaction=False)
        for user, variant, items, version in shown:
            # The entry's id is its time: no timestamp field.
            pipe.xadd(EXPOSURES_STREAM, {"experiment": name, "variant": variant,
                                         "model": version, "user": user,
                                         "items": ",".join(items), "ms": f"{latency_ms:.3f}"})
            ExperimentStore.remember(pipe, user, items, Touch(now_ms, name, variant, version),
                                     self.window_ms)
        self._send(pipe)

    def record_error(self, variants: Sequence[str]) -> None:
        """A failed request (5xx) of users in ``variants``: counted for the guardrails."""
        pipe = self.client.pipeline(transaction=False)
        for variant in variants:
            pipe.xadd(EXPOSURES_STREAM, {"experiment": self.definition.name,
                                         "variant": variant, "error": "1"})
        self._send(pipe)

    def _send(self, pipe: Any) -> None:
        try:
            pipe.execute()
            self._failing = False
        except redis.RedisError as exc:
            LOST.inc()
            if not self._failing:  # once per outage, not once per request
                log.warning("exposures not recorded (redis: %s); serving goes on", exc)
            self._failing = True


class ExposureCounter:
    """Handler of "experiment-exposures": per-variant counts of the exposure stream."""

    def __init__(self, store: ExperimentStore) -> None:
        self.store = store

    def handle(self, entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        rejected: dict[str, str] = {}
        # experiment -> counters / exposed users: a batch costs a few commands, not one
        # per entry.
        counters: dict[str, dict[str, float]] = {}
        users: dict[str, dict[str, set[str]]] = {}
        exposed: dict[int, int] = {}  # model version -> exposures (a rollout's guard)
        for entry in entries:
            name, variant = entry.get("experiment"), entry.get("variant")
            if not name or not variant:
                rejected[entry.id] = "exposure without experiment or variant"
                continue
            c = counters.setdefault(name, {})
            per_variant = users.setdefault(name, {}).setdefault(variant, set())
            if entry.get("error"):
                c[f"{variant}|errors"] = c.get(f"{variant}|errors", 0) + 1
                continue
            user, model = entry.get("user"), entry.get("model", "")
            try:
                ms = float(entry.get("ms") or "nan")
            except ValueError:
                ms = math.nan
            if not user:
                rejected[entry.id] = "exposure without user"
                continue
            per_variant.add(user)
            for fld in (f"{variant}|exposures", f"{variant}|{model}|exposures"):
                c[fld] = c.get(fld, 0) + 1
            version = _version_of(model)
            if version is not None:
                exposed[version] = exposed.get(version, 0) + 1
            if math.isfinite(ms):
                c[f"{variant}|latency_ms_sum"] = c.get(f"{variant}|latency_ms_sum", 0.0) + ms
                bucket = latency_field(variant, ms)
                c[bucket] = c.get(bucket, 0) + 1
        for name, c in counters.items():
            self.store.count_exposures(tx, name, c, users.get(name, {}))
        for version, n in exposed.items():  # conversion per exposure, in the same MULTI
            count_guard(tx, ROLLOUT_NAME, version, "conversion", 0, n)
        return rejected


class PriceBook:
    """Item prices from the worker's catalogue snapshot (re-read when it moves)."""

    def __init__(self, client: redis.Redis) -> None:
        self.store = SnapshotStore(client, CATALOGUE_KEY)
        self._seq = -1
        self._prices: dict[str, float] = {}

    def price(self, item_id: str) -> float | None:
        seq = self.store.seq()
        if seq != self._seq:
            snapshot = self.store.read()
            if snapshot is not None:
                catalogue = decode_catalogue(snapshot)
                prices = catalogue.state.price
                if prices is not None:
                    self._prices = {str(i): float(p) for i, p in
                                    zip(catalogue.item_ids.tolist(), prices.tolist(),
                                        strict=True) if np.isfinite(p)}
            self._seq = seq
        return self._prices.get(item_id)


class Attributor:
    """Handler of "attribution": carts and purchases of shown items -> conversions."""

    def __init__(self, store: ExperimentStore, prices: Callable[[str], float | None],
                 windows: Mapping[str, float] | None = None,
                 default_window: float = DEFAULT_WINDOW_SECONDS) -> None:
        self.store = store
        self.prices = prices
        self.windows = dict(windows or {})
        self.default_window = default_window

    def handle(self, entries: Sequence[Entry], tx: Any) -> dict[str, str]:
        todo: list[tuple[Entry, str, str, str, float]] = []
        for entry in entries:
            kind = entry.get("event_type")
            if kind not in CONVERSION_EVENTS:
                continue  # views: nothing to attribute
            user, item = entry.get("user_id"), entry.get("item_id")
            try:
                ts = float(entry.get("ts") or "nan")
            except ValueError:
                ts = math.nan
            if not user or not item or not math.isfinite(ts):
                continue  # the popularity group dead-letters malformed events
            todo.append((entry, user, item, kind or "", ts))
        touches = self.store.touches([(user, item) for _, user, item, _, _ in todo])
        # Counted after the loop: a handler that raises midway is retried entry by entry,
        # and counters bumped before the raise would count those entries twice.
        conversions: dict[tuple[str, str, str], int] = {}
        revenues: dict[tuple[str, str], float] = {}
        for (_entry, user, item, kind, ts), touch in zip(todo, touches, strict=True):
            if touch is None:
                continue
            age_ms = ts * 1000 - touch.at_ms
            window_ms = self.windows.get(touch.experiment, self.default_window) * 1000
            if not -CLOCK_SKEW_MS <= age_ms <= window_ms:
                continue
            purchase = kind == "purchase"
            revenue = (self.prices(item) or 0.0) if purchase else 0.0
            self.store.add_conversion(tx, touch, user, purchase=purchase, revenue=revenue)
            version = _version_of(touch.version)
            if version is not None:
                count_guard(tx, ROLLOUT_NAME, version, "conversion", 1, 0)
            key = (touch.experiment, touch.variant, kind)
            conversions[key] = conversions.get(key, 0) + 1
            if purchase:
                pair = (touch.experiment, touch.variant)
                revenues[pair] = revenues.get(pair, 0.0) + revenue
        for (experiment, variant, kind), n in conversions.items():
            ATTRIBUTED.labels(experiment, variant, kind).inc(n)
        for (experiment, variant), amount in revenues.items():
            REVENUE.labels(experiment, variant).inc(amount)
        return {}


# The recommender's rollouts are named after its model (``mlsuite rollout start recommender``).
ROLLOUT_NAME = "recommender"


def _version_of(label: str | None) -> int | None:
    """``recommender:v3`` -> 3 (None for anything else)."""
    if not label or ":v" not in label:
        return None
    try:
        return int(label.rsplit(":v", 1)[1])
    except ValueError:
        return None
