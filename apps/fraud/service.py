"""The fraud scorer: validated transactions in, logged decisions out (no HTTP here).

Per request, whatever its size, the hot path costs:

1. one Redis round trip: one velocity script call for all the request's transactions
   (up to ``velocity.CHUNK`` per call; a larger batch pipelines its chunks);
2. cache reads for card and merchant profiles (one Feast call per kind for the misses);
3. one vectorised predict + explain over the whole request's matrix;
4. one Redis round trip: one script call appends every decision to the stream and keys
   it for labels (atomic), before the response is sent.

The two round trips cannot be merged without giving something up: the decision depends
on the velocity the first call returns, and it must be durable before the caller sees it.

A transaction id already decided is not scored again: its velocity is left untouched
and the stored decision comes back, flagged ``duplicate`` (safe client retries).

Nothing here learns or refreshes in the background beyond following snapshots: the
fraud worker (``fraud.worker``) learns the labels and pushes profile updates; this
process swaps in what it publishes (``fraud.serving_state``, profile overrides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from fraud import metrics
from fraud.config import FraudConfig
from fraud.decisions import Decision, DecisionLog
from fraud.features import assemble, event_of
from fraud.keys import Keys
from fraud.labels import Label, LabelStream
from fraud.profile_push import decode_overrides
from fraud.profile_updates import ProfileUpdates, parse_profile
from fraud.profiles import ProfileSource, known_entities
from fraud.schema import Transaction
from fraud.serving_state import ModelView, ServingState
from fraud.thresholds import DECISIONS
from fraud.velocity import RedisVelocityStore, velocity_features
from mlplatform.config import Settings
from mlplatform.errors import Conflict, Unavailable
from mlplatform.lake import Lake
from mlplatform.snapshots import Follower, Snapshot, SnapshotStore

__all__ = ["FraudService"]

log = logging.getLogger(__name__)


# Per-transaction keys outlive their stream entry by this much: the archiver trims on a
# schedule, and a key that expired first would let a retried transaction be scored twice.
KEY_MARGIN_SECONDS = 3600


class FraudService:
    """Everything one request process needs to score, log decisions and accept writes."""

    def __init__(self, settings: Settings, config: FraudConfig, client: redis.Redis,
                 profiles: ProfileSource) -> None:
        self.settings = settings
        self.config = config
        self.redis = client
        self.profiles = profiles
        self.keys = Keys(config.key_prefix, config.model_name)
        self.velocity = RedisVelocityStore(client, config.key_prefix)
        key_ttl = int(settings.stream_retention_seconds
                      + max(KEY_MARGIN_SECONDS, 2 * settings.archive_interval_seconds))
        self.decisions = DecisionLog(client, config.key_prefix, key_ttl,
                                     Lake.from_settings(settings))
        self.labels = LabelStream(client, self.decisions, config.decision_ttl_seconds)
        self.profile_updates = ProfileUpdates(client, self.keys.profile_updates)
        self.model = ModelView(settings, config, client, self.labels)
        self.overrides: Follower[dict[str, dict[str, Any]]] = Follower(
            SnapshotStore(client, self.keys.profile_overrides), decode_overrides,
            poll_seconds=config.follow_seconds, name="fraud-profile-overrides",
            on_swap=self._apply_overrides)
        # Labelled children looked up once (in the worker process, after any fork).
        self._decision_counters = {d: metrics.DECISIONS.labels(d) for d in DECISIONS}

    def start(self) -> None:
        """Load everything a request needs before the server takes traffic: the model
        (base version + the worker's snapshot), then the profile cache (prefetched),
        then the profile overrides. A missing model is logged; requests answer 503."""
        try:
            state = self.model.load()
            log.info("fraud: serving %s (%d labels learned)", state.label, state.labels)
        except Unavailable as exc:
            log.warning("fraud: no model to serve yet (%s)", exc.message)
        self._prefetch_profiles()
        self.overrides.start()

    def _prefetch_profiles(self) -> None:
        """Open the profile store and load the known entities into the cache (one
        feature-store read per 2000 entities: well under a second for the demo data)."""
        warm = getattr(self.profiles, "warm_up", None)
        if warm is not None:
            warm()
        prefetch = getattr(self.profiles, "prefetch", None)
        if prefetch is None or self.config.profile_cache_seconds <= 0:
            return
        try:
            started = time.perf_counter()
            loaded = {kind: prefetch(kind, ids, chunk=2000) for kind, ids
                      in known_entities(self.settings.data_dir / "payments").items()}
            if loaded:
                log.info("fraud profiles prefetched %s in %.2fs", loaded,
                         time.perf_counter() - started)
        except Exception as exc:  # requests fetch on a miss, as without the prefetch
            log.warning("could not prefetch profiles: %s", exc)

    def _apply_overrides(self, snapshot: Snapshot, overrides: dict[str, dict[str, Any]]
                         ) -> None:
        override = getattr(self.profiles, "override", None)
        if override is not None:
            for kind, profiles in overrides.items():
                override(kind, profiles)

    # -- scoring -------------------------------------------------------------------

    def score(self, transactions: Sequence[Transaction]) -> list[Decision]:
        """Decide ``transactions`` (in order) and log every new decision."""
        state = self.model.state()  # Unavailable(model) before touching any state
        events = [event_of(t) for t in transactions]
        histories = self.velocity.observe_guarded(
            events, [self.decisions.key(t.transaction_id) for t in transactions]
        )
        fresh = [i for i, h in enumerate(histories) if h is not None]
        results: list[Decision | None] = [None] * len(transactions)
        if fresh:
            decided = self._decide(state, [transactions[i] for i in fresh],
                                   [velocity_features(events[i], histories[i])  # type: ignore[arg-type]
                                    for i in fresh])
            self.decisions.record(decided)
            for i, d in zip(fresh, decided):
                results[i] = d
        if len(fresh) < len(transactions):
            self._fill_duplicates(transactions, results)
        return results  # type: ignore[return-value]

    def _decide(self, state: ServingState, txs: list[Transaction],
                velocity: list[dict[str, float]]) -> list[Decision]:
        cards = self.profiles.get_many("card", [t.card_id for t in txs])
        merchants = self.profiles.get_many("merchant", [t.merchant_id for t in txs])
        xs = [assemble(t, cards[t.card_id], merchants[t.merchant_id], v)
              for t, v in zip(txs, velocity)]
        scores, reasons = state.predictor.score(xs, self.config.top_reasons)
        thresholds = state.thresholds
        review, decline = thresholds.review, thresholds.decline
        labels = ["decline" if s >= decline else "review" if s >= review else "approve"
                  for s in scores]
        now = time.time()
        version, n_labels = state.label, state.labels
        out = [
            Decision(t.transaction_id, t.timestamp, float(s), d, [r.to_dict() for r in rs],
                     version, n_labels, review, x, now)
            for t, s, d, rs, x in zip(txs, scores, labels, reasons, xs)
        ]
        observe = metrics.SCORES.observe
        for s in scores:
            observe(s)
        for name, counter in self._decision_counters.items():
            n = labels.count(name)
            if n:
                counter.inc(n)
        return out

    def _fill_duplicates(self, txs: Sequence[Transaction], results: list[Decision | None]) -> None:
        missing = [i for i, r in enumerate(results) if r is None]
        records = self.decisions.fetch([txs[i].transaction_id for i in missing])
        for i, record in zip(missing, records):
            if record is None:  # being written by a concurrent request, or just expired
                raise Conflict(
                    f"transaction {txs[i].transaction_id!r} is being scored concurrently; retry",
                    field="transaction_id",
                )
            decision = Decision.from_record(record)
            decision.duplicate = True
            results[i] = decision

    # -- labels and model ----------------------------------------------------------

    def add_labels(self, labels: Sequence[Label], where: str = "labels") -> list[str]:
        offsets = self.labels.append(labels, where=where)
        for lb in labels:
            metrics.LABELS_RECEIVED.labels("true" if lb.is_fraud else "false").inc()
        return offsets

    def put_profile(self, kind: str, entity_id: str, body: Any) -> dict[str, Any]:
        """Validate a whole card or merchant profile and queue it for the worker."""
        profile = parse_profile(kind, entity_id, body)
        queued = self.profile_updates.append(kind, entity_id, profile)
        return {"queued": queued, "kind": kind, "id": entity_id, "profile": profile}

    def model_info(self) -> dict[str, Any]:
        state = self.model.state()
        meta = state.version.metadata
        return {
            "name": state.version.name,
            "version": state.version.version,
            "model_version": state.label,
            "kind": meta.get("params", {}).get("kind"),
            "online": state.online,
            "alias": self.config.model_alias,
            "created_at": meta.get("created_at"),
            "labels_learned": state.labels,
            "label_offset": state.offset,
            "thresholds": {"review": state.thresholds.review,
                           "decline": state.thresholds.decline,
                           "review_fpr": state.thresholds.review_fpr,
                           "decline_fpr": state.thresholds.decline_fpr},
            "training_metrics": meta.get("metrics", {}),
            "online_metrics": {k: v for k, v in state.quality.items() if k != "drift"},
            "drift": state.quality["drift"],
            "features": list(state.predictor.feature_names),
        }

    def close(self) -> None:
        self.model.stop()
        self.overrides.stop()
