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
On a Redis Cluster a request costs three pipelines, each one round trip per master: the
transaction ids' claims, then one velocity script per card, merchant and device
(``fraud.velocity``), then the decisions, one script per partition (``fraud.decisions``),
with the same guarantees for a retried id.

A transaction id already decided is not scored again: its velocity is left untouched
and the stored decision comes back, flagged ``duplicate`` (safe client retries).

While Redis is down, ``FraudConfig.fail_mode`` decides (``MLSUITE_FRAUD_FAIL_MODE``):
``closed`` (the default) answers 503 naming redis, with no decision, and the payment flow
applies its own policy, as for a timeout; ``open`` lets the model decide on what the
request carries, with the velocity features at their training means, and says so in the
response (``"degraded"``), including that the decision is not recorded: there is no
audit entry, no label can train on it, and a retry is scored again. Each such decision
is counted (``mlsuite_fraud_unrecorded_decisions_total``). Nothing is queued in memory
to be written later: a process that dies would lose it, and the response would have
promised more than was kept.

Nothing here learns or refreshes in the background beyond following snapshots: the
fraud worker (``fraud.worker``) learns the labels and pushes profile updates; this
process swaps in what it publishes (``fraud.serving_state``, profile overrides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter

from fraud import metrics
from fraud.config import FraudConfig
from fraud.decisions import PENDING, Decision, DecisionLog, fingerprint_of, mget
from fraud.features import assemble, event_of
from fraud.keys import Keys
from fraud.labels import Appended, Label, LabelStream
from fraud.lists import Lists
from fraud.profile_push import decode_overrides
from fraud.profile_updates import ProfileUpdates, parse_profile
from fraud.profiles import ProfileSource, known_entities
from fraud.reasons import describe
from fraud.rollout import FraudRollout
from fraud.rules import Policy
from fraud.schema import Transaction, fingerprint
from fraud.serving_state import ModelView, ServingState
from fraud.thresholds import DECISIONS
from fraud.velocity import Claimed, History, RedisVelocityStore, velocity_features
from mlplatform.config import Settings
from mlplatform.errors import Conflict, Unavailable
from mlplatform.lake import Lake
from mlplatform.redisdb import DirectCommands, is_cluster
from mlplatform.security.pii import tokeniser
from mlplatform.snapshots import Follower, Snapshot, SnapshotStore

__all__ = ["FraudService", "UnrecordedDecision", "UNRECORDED"]

log = logging.getLogger(__name__)

UNRECORDED = Counter(
    "mlsuite_fraud_unrecorded_decisions_total",
    "Decisions answered under the fail-open policy while Redis was down: not recorded, "
    "not joinable to a label, not protected against a retry scoring them again",
    ["decision"],
)
# What a card, device and merchant look like with no history at all: the velocity
# features of a fail-open score where the model has no training means.
_NO_HISTORY = History(card_events=[], card_n=0, card_amount_milli=0, card_last_ts=None,
                      device_known=False, country_known=False, merchant_counts=(0, 0, 0),
                      device_events=[])
FAIL_OPEN_DETAIL = ("redis is unavailable: scored by the model on what the request carries "
                    "(velocity features at their training means); the decision is not "
                    "recorded, so no label can train on it and a retry is scored again")


class UnrecordedDecision(Decision):
    """A fail-open decision: its response says what it was made without, and that it was
    not recorded."""

    __slots__ = ()

    def to_response(self) -> dict[str, Any]:
        out = Decision.to_response(self)  # slots dataclass: no zero-argument super()
        out["degraded"] = {"dependency": "redis", "policy": "fail-open", "recorded": False,
                           "detail": FAIL_OPEN_DETAIL}
        return out

    @classmethod
    def of(cls, decision: Decision) -> UnrecordedDecision:
        return cls(*(getattr(decision, f.name) for f in fields(Decision)))


# Per-transaction keys outlive their stream entry by this much: the archiver trims on a
# schedule, and a key that expired first would let a retried transaction be scored twice.
KEY_MARGIN_SECONDS = 3600
# A claimed id whose process died before recording its decision is free again after this:
# a retry may then count twice in the velocity state, but a payment is never refused for
# hours (the decision script gives a recorded id the full key lifetime).
PENDING_TTL_SECONDS = 60
# A request that finds its transaction being scored by another waits this long for that
# decision (then 409, retry), polling every DUPLICATE_POLL_SECONDS.
DUPLICATE_WAIT_SECONDS = 2.0
DUPLICATE_POLL_SECONDS = 0.005


class FraudService:
    """Everything one request process needs to score, log decisions and accept writes."""

    def __init__(self, settings: Settings, config: FraudConfig, client: redis.Redis,
                 profiles: ProfileSource) -> None:
        self.settings = settings
        self.config = config
        self.redis = client
        self.profiles = profiles
        self.keys = Keys(config.key_prefix, config.model_name)
        # Card and device ids are tokens from the request's parsing on (``fraud.pii``).
        self.pii = tokeniser(settings)
        # A score's two script calls (velocity, then the decision) skip redis-py's
        # per-command layers on a single server (``DirectCommands``).
        self._direct = None if is_cluster(client) else DirectCommands(client)
        self.velocity = RedisVelocityStore(client, config.key_prefix, self._direct)
        key_ttl = int(settings.stream_retention_seconds
                      + max(KEY_MARGIN_SECONDS, 2 * settings.archive_interval_seconds))
        self.decisions = DecisionLog(client, config.key_prefix, key_ttl,
                                     Lake.from_settings(settings), self._direct)
        self.labels = LabelStream(client, self.decisions, config.decision_ttl_seconds)
        self.profile_updates = ProfileUpdates(client, self.keys.profile_updates)
        self.model = ModelView(settings, config, client, self.labels)
        # Lists (block / allow) and rules around the model; a canary's candidate.
        self.lists = Lists(client, config.key_prefix, poll_seconds=config.follow_seconds,
                           max_values=config.list_max_values, pii=self.pii)
        self.policy = Policy.load(config, self.lists)
        self.rollout = FraudRollout(settings, config, client)
        self._typical: tuple[Any, dict[str, float]] | None = None
        self._redis_failing = False  # log a Redis outage once, not once per request
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
        self.lists.start()
        self.rollout.start()

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
                      in known_entities(self.settings.data_dir / "payments", self.pii).items()}
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
        """Decide ``transactions`` (in order) and log every new decision; while Redis is
        down, as ``config.fail_mode`` says (module docstring)."""
        state = self.model.state()  # Unavailable(model) before touching any state
        try:
            decisions = self._score(state, transactions)
        except redis.RedisError as exc:
            if not self._redis_failing:
                self._redis_failing = True
                log.warning("fraud: redis is unavailable, failing %s until it answers: %s",
                            self.config.fail_mode, exc)
            if self.config.fail_mode != "open":
                raise Unavailable(
                    "redis is unavailable: no decision was made (the fraud scorer fails "
                    "closed; retry, or apply the payment flow's own policy)",
                    dependency="redis", details={"policy": "fail-closed"}) from None
            return self._score_unrecorded(state, transactions)
        if self._redis_failing:
            self._redis_failing = False
            log.warning("fraud: redis answers again; decisions are recorded")
        return decisions

    def _score_unrecorded(self, state: ServingState, transactions: Sequence[Transaction]
                          ) -> list[Decision]:
        """Fail-open: the model's decisions without Redis (velocity features at the
        model's training means), neither recorded nor checked for an earlier decision."""
        typical = self._typical_of(state.predictor)
        velocity = []
        for t in transactions:
            values = velocity_features(event_of(t), _NO_HISTORY)
            velocity.append({k: typical.get(k, v) for k, v in values.items()})
        decided: list[Decision] = [
            UnrecordedDecision.of(d) for d in self._decide(state, list(transactions), velocity)]
        for d in decided:
            UNRECORDED.labels(d.decision).inc()
        return decided

    def _score(self, state: ServingState, transactions: Sequence[Transaction]
               ) -> list[Decision]:
        """``score`` with Redis: the velocity script claims each transaction id (its decision key holds a pending
        marker with the payload's fingerprint) as it counts it, so of concurrent requests
        for one id exactly one scores it; the others wait for its decision
        (``_fill_duplicates``). If anything fails after the velocity update, the update is
        taken back (counts, windows, claim) before the error propagates."""
        events = [event_of(t) for t in transactions]
        guards = [self.decisions.key(t.transaction_id) for t in transactions]
        markers = [PENDING + fingerprint(t) for t in transactions]
        histories: list[History | Claimed | None] = [None] * len(transactions)
        fresh: list[int] = []
        decided: list[Decision] = []

        def decide(lo: int, hi: int) -> None:  # a part of the request, once it is counted
            part = [i for i in range(lo, hi) if isinstance(histories[i], History)]
            if part:
                decided.extend(self._decide(
                    state, [transactions[i] for i in part],
                    [velocity_features(events[i], histories[i])  # type: ignore[arg-type]
                     for i in part]))
                fresh.extend(part)

        try:
            self.velocity.observe_in_parts(
                events, guards, markers,
                min(PENDING_TTL_SECONDS, self.decisions.key_ttl_seconds), decide, histories)
            if fresh:  # one call for the whole request's decisions: all or none
                self.decisions.record(decided, [markers[i][1:] for i in fresh])
        except BaseException:
            if any(isinstance(h, History) for h in histories):
                self._undo_velocity(events, histories, guards, markers)  # type: ignore[arg-type]
            raise
        results: list[Decision | None] = [None] * len(transactions)
        for i, d in zip(fresh, decided):
            results[i] = d
        if len(fresh) < len(transactions):
            self._fill_duplicates(transactions, results, histories)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _undo_velocity(self, events: Sequence[Any], histories: Sequence[History | Claimed],
                       guards: Sequence[str], markers: Sequence[str]) -> None:
        try:
            undone = self.velocity.undo(events, histories, guards, markers)
            log.warning("fraud: scoring failed after the velocity update; undid %d "
                        "transaction(s)", undone)
        except Exception as exc:  # the original error matters more; say what is left
            log.error("fraud: scoring failed and its velocity update could not be undone "
                      "(%s): %d transaction(s) counted without a decision", exc,
                      sum(isinstance(h, History) for h in histories))

    def _decide(self, state: ServingState, txs: list[Transaction],
                velocity: list[dict[str, float]]) -> list[Decision]:
        """Score ``txs`` (production, or a canary's candidate for the cards it serves),
        then apply the rules and lists; reasons as codes and sentences."""
        cards = self.profiles.get_many("card", [t.card_id for t in txs])
        merchants = self.profiles.get_many("merchant", [t.merchant_id for t in txs])
        xs = [assemble(t, cards[t.card_id], merchants[t.merchant_id], v)
              for t, v in zip(txs, velocity)]
        n, k = len(txs), self.config.top_reasons
        scores: list[float] = [0.0] * n
        raw: list[list[Any]] = [[] for _ in range(n)]
        labels: list[str] = ["approve"] * n
        model_of: list[tuple[str, int, float, Any]] = [
            (state.label, state.labels, state.thresholds.review, state.predictor)] * n
        production = list(range(n))
        rollout = self.rollout
        candidate = rollout.candidate()
        if candidate is not None:
            routes = rollout.route(
                [t.card_id for t in txs], production_version=state.version.version,
                attributes=[{"country": t.country, "channel": t.channel,
                             "currency": t.currency} for t in txs])
            chosen = [i for i, r in enumerate(routes) if r is not None]
            if chosen:
                production = [i for i, r in enumerate(routes) if r is None]
                self._score_candidate(candidate, chosen, xs, k, scores, raw, labels, model_of,
                                      production)
        if production:
            started = time.perf_counter()
            part = xs if len(production) == n else [xs[i] for i in production]
            got, why = state.predictor.score(part, k)
            review, decline = state.thresholds.review, state.thresholds.decline
            decided = ["decline" if s >= decline else "review" if s >= review else "approve"
                       for s in got]
            for i, s, r, d in zip(production, got, why, decided):
                scores[i], raw[i], labels[i] = s, r, d
            if candidate is not None or rollout.active():
                rollout.record(state.version.version, time.perf_counter() - started, decided)
                mirrored = [j for j, i in enumerate(production)
                            if rollout.mirrored(txs[i].card_id)]
                if mirrored:
                    rollout.mirror([part[j] for j in mirrored], [got[j] for j in mirrored],
                                   state.thresholds)
        final = self.policy.apply(txs, xs, scores, labels)
        now = time.time()
        out = []
        for i, (t, x, (decision, rules)) in enumerate(zip(txs, xs, final)):
            label, n_labels, review_cut, predictor = model_of[i]
            typical = self._typical_of(predictor)
            reasons = [describe(r.feature, r.value, typical.get(r.feature), r.contribution)
                       for r in raw[i]]
            out.append(Decision(t.transaction_id, t.timestamp, float(scores[i]), decision,
                                reasons + rules, label, n_labels, review_cut, x, now))
        metrics.observe_scores(scores)
        decisions = [d.decision for d in out]
        for name, counter in self._decision_counters.items():
            count = decisions.count(name)
            if count:
                counter.inc(count)
        return out

    def _score_candidate(self, candidate: Any, chosen: list[int], xs: list[dict[str, float]],
                         k: int, scores: list[float], raw: list[list[Any]], labels: list[str],
                         model_of: list[tuple[str, int, float, Any]], production: list[int]
                         ) -> None:
        """The canary's share: scored by the candidate; on its error, by production."""
        started = time.perf_counter()
        try:
            got, why = candidate.predictor.score([xs[i] for i in chosen], k)
            decided = candidate.decide(np.asarray(got))
        except Exception as exc:  # noqa: BLE001 - a failing candidate must not fail payments
            self.rollout.record(candidate.version.version, time.perf_counter() - started,
                                ["error"] * len(chosen), error=True)
            log.warning("fraud: candidate %s failed (%s); production scored its share",
                        candidate.label, exc)
            production[:] = sorted(set(production) | set(chosen))
            return
        self.rollout.record(candidate.version.version, time.perf_counter() - started, decided)
        for i, s, r, d in zip(chosen, got, why, decided):
            scores[i], raw[i], labels[i] = s, r, d
            model_of[i] = (candidate.label, 0, candidate.thresholds.review, candidate.predictor)

    def _typical_of(self, predictor: Any) -> dict[str, float]:
        """Per feature, what "usually" means for this predictor (its training mean)."""
        cached = self._typical
        if cached is not None and cached[0] is predictor:
            return cached[1]
        values = getattr(predictor, "typical", None)
        typical = {} if values is None else dict(zip(predictor.feature_names,
                                                     np.asarray(values, dtype=float).tolist()))
        self._typical = (predictor, typical)
        return typical

    def _fill_duplicates(self, txs: Sequence[Transaction], results: list[Decision | None],
                         claims: Sequence[History | Claimed]) -> None:
        """The stored decisions of ``txs`` already claimed (``claims[i]``): a retry, or a
        concurrent request still scoring it (waited for up to DUPLICATE_WAIT_SECONDS).
        An id claimed with another payload is a 409."""
        missing = [i for i, r in enumerate(results) if r is None]
        held: dict[int, str | None] = {
            i: c.held for i in missing if isinstance(c := claims[i], Claimed)}
        deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
        while True:
            pending = []
            for i in missing:
                value, tid = held[i], txs[i].transaction_id
                if value is None:  # the request scoring it failed and took its claim back
                    raise Conflict(f"transaction {tid!r} could not be scored by a concurrent "
                                   "request; retry", field="transaction_id")
                stored = fingerprint_of(value)
                if stored and stored != fingerprint(txs[i]):
                    raise Conflict(
                        f"transaction_id {tid!r} reused with a different payload: it was "
                        "scored with other fields; a new transaction needs a new id",
                        field="transaction_id", code="transaction_id_reused")
                if value.startswith(PENDING):
                    pending.append(i)
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise Conflict(f"transaction {txs[pending[0]].transaction_id!r} is being "
                               "scored concurrently; retry", field="transaction_id")
            time.sleep(DUPLICATE_POLL_SECONDS)
            values = mget(self.redis, [self.decisions.key(txs[i].transaction_id)
                                       for i in pending])
            for i, v in zip(pending, values):
                held[i] = None if v is None else v.decode()
        records = self.decisions.fetch([txs[i].transaction_id for i in missing])
        for i, record in zip(missing, records):
            if record is None:  # expired between the claim and now
                raise Conflict(
                    f"transaction {txs[i].transaction_id!r} is being scored concurrently; retry",
                    field="transaction_id",
                )
            decision = Decision.from_record(record)
            decision.duplicate = True
            results[i] = decision

    # -- labels and model ----------------------------------------------------------

    def add_labels(self, labels: Sequence[Label], where: str = "labels") -> list[str]:
        """Append ``labels`` (repeats ignored); the offsets of those appended."""
        return self.record_labels(labels, where).offsets

    def record_labels(self, labels: Sequence[Label], where: str = "labels") -> Appended:
        """Append the new or changed ``labels`` (``LabelStream.add``) and count them."""
        appended = self.labels.add(labels, where=where)
        for lb in appended.labels:
            metrics.LABELS_RECEIVED.labels("true" if lb.is_fraud else "false").inc()
        if appended.corrections:
            metrics.LABEL_CORRECTIONS.inc(appended.corrections)
        return appended

    def put_profile(self, kind: str, entity_id: str, body: Any) -> dict[str, Any]:
        """Validate a whole card or merchant profile and queue it for the worker (a card
        under its token: the stream, Feast and the cache never see the card id)."""
        profile = parse_profile(kind, entity_id, body)
        stored = self.pii.token("card", entity_id) if kind == "card" else entity_id
        queued = self.profile_updates.append(kind, stored, profile)
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
        if self._direct is not None:
            self._direct.close()
        self.model.stop()
        self.overrides.stop()
        self.lists.close()
        self.rollout.stop()
