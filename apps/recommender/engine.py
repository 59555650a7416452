"""The serving engine: recommendations, similar items and events, with no HTTP in sight.

One request (one user or a batch) costs one Redis round trip (the users' live histories,
pipelined), no Feast read for users the model knows (item flags and live popularity
come from the worker's snapshots, swapped into the ``ServingModel`` by ``live``), and
one vectorised scoring pass per A/B variant (a batch:
sparse matrices and implicit; one user: the same maths in plain numpy, which is what a
page view asks for and costs a fraction of the sparse-matrix overhead):

    live.get() -> model version          (swapped in the background on promotion)
    experiment.assign(user) -> variant   (same answer on every replica; a hash, memoised)
    training history + live events newer than the model's cutoff -> fold-in -> scores
    mask out-of-stock / other categories / already seen -> top n

Live events are summed straight from the bytes Redis returns (``parse_events``) and
the JSON body is encoded once with a shared encoder (views), so the per-request cost is
the Redis round trip, one small solve (ALS) or mean (BPR), and one partition of the
catalogue's scores.

The model is loaded before the app takes traffic (``Engine.start``) and swapped in the
background when its alias moves; no request ever loads one.

A user with no usable history gets the popular items of their segment (Feast), else of
everyone, flagged ``fallback``: the trained shares blended with live popularity. If Redis is down, recommendations use the training
history alone and say ``degraded: ["redis"]``; if Feast is down, ``degraded: ["feast"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter, Histogram

from mlplatform.assignment import EXPOSURES, Experiment
from mlplatform.errors import BadRequest, Unavailable
from mlplatform.metrics import set_model_info
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.rollouts.routing import RolloutRouter
from recommender.bundle import ModelBundle
from recommender.catalogue import ItemState, SegmentCache
from recommender.history import Event, HistoryStore
from recommender.live import LiveState
from recommender.popularity import PopularityRecommender
from recommender.ranking import exclude, top_n
from recommender.updates import UpdateQueue

__all__ = ["Engine", "ServingModel", "SimilarItems", "UserRecommendations", "load_serving_model"]

log = logging.getLogger(__name__)

SERVICE = "recommender"
COLD = "_cold"  # the group of users with no usable history

RECOMMENDATIONS = Counter(
    "mlsuite_recommender_recommendations_total",
    "Recommendation lists served, by A/B variant and what produced them",
    ["variant", "strategy"],
)
EVENTS = Counter("mlsuite_recommender_events_total", "Interaction events recorded", ["event_type"])
DEGRADED = Counter(
    "mlsuite_recommender_degraded_total",
    "Responses served without a dependency (redis: no live history; feast: no stock filter)",
    ["dependency"],
)
TOP_SCORE = Histogram(
    "mlsuite_recommender_top_score", "Score of the first item of each list, by strategy",
    ["strategy"], buckets=(-1.0, 0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
)


@dataclass(eq=False)
class ServingModel:
    """A loaded version, the item flags of its catalogue and its (live-blended) popularity;
    ``items`` and ``popularity`` are replaced as the worker's snapshots move.

    Also the lookups the per-request path needs, built once per version: encoded item
    id -> index and encoded event type -> weight, so live events read from Redis are
    added up without decoding them to text first.
    """

    version: ModelVersion
    bundle: ModelBundle
    items: ItemState
    # Omitted: the bundle's trained popularity (set in __post_init__).
    popularity: PopularityRecommender = None  # type: ignore[assignment]
    item_key: dict[bytes, int] = field(init=False, repr=False)
    event_weight: dict[bytes, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.popularity is None:
            self.popularity = self.bundle.popularity
        self.item_key = {k.encode(): i for k, i in self.bundle.items.index.items()}
        self.event_weight = {k.encode(): float(w)
                             for k, w in self.bundle.event_weights.items()}


def load_serving_model(version: ModelVersion, state: LiveState, *,
                       announce: bool = True) -> ServingModel:
    """Load a version with the latest snapshots aligned to it (start-up, a promotion or
    a rollout's candidate, in the background); never on a request. ``announce``: set
    the served-model metric (not for a candidate)."""
    bundle = ModelBundle.load(version.path)
    serving = ServingModel(version, bundle, state.items_for(bundle, version.label),
                           state.popularity_for(bundle, version.label))
    # Warm both scoring paths so the first request after a swap pays nothing extra.
    row = 0 if len(bundle.users) else -1
    for model in bundle.models.values():
        model.scores(bundle.histories([row]))
        model.score_one(*bundle.history_of(row))
    if announce:
        set_model_info(SERVICE, version.name, str(version.version))
    return serving


def smoke_check(serving: ServingModel) -> str:
    """Blue-green's smoke check of a loaded candidate: every variant scores a sample user
    (the first known one) with finite scores over the whole catalogue; what it saw."""
    b = serving.bundle
    row = 0 if len(b.users) else -1
    items, weights = b.history_of(row)
    for name, model in b.models.items():
        scores = np.asarray(model.score_one(items, weights, -1))
        if scores.shape != (len(b.items),) or not np.isfinite(scores).any():
            raise ValueError(f"variant {name} scored the sample user with "
                             f"{scores.shape} scores, not {len(b.items)} finite ones")
    return f"scored a sample user with {', '.join(b.models)} over {len(b.items)} items"


def compare_lists(production: Sequence[str], candidate: Sequence[str]
                  ) -> tuple[float, float | None]:
    """Shadow comparison of two top-n lists: overlap@n, and the rank correlation over
    their union (an item missing from a list ranks just after its end); None for one item.

    >>> compare_lists(["a", "b", "c"], ["a", "b", "c"])
    (1.0, 1.0)
    >>> compare_lists(["a", "b"], ["c", "d"])
    (0.0, -0.818182)
    """
    n = max(len(production), len(candidate), 1)
    agreement = len(set(production) & set(candidate)) / n
    union = list(dict.fromkeys([*production, *candidate]))
    if len(union) < 2:
        return agreement, None
    rank_p = {item: i for i, item in enumerate(production)}
    rank_c = {item: i for i, item in enumerate(candidate)}
    x = np.array([rank_p.get(i, len(production)) for i in union], float)
    y = np.array([rank_c.get(i, len(candidate)) for i in union], float)
    if x.std() == 0 or y.std() == 0:
        return agreement, None
    return agreement, round(float(np.corrcoef(x, y)[0, 1]), 6)


def _chain(first: Any, then: Any) -> Any:
    def both(*args: Any) -> None:
        if first is not None:
            first(*args)
        then(*args)

    return both


@dataclass(frozen=True)
class UserRecommendations:
    user_id: str
    items: list[dict[str, Any]]
    variant: str
    strategy: str  # "als" | "bpr" | "popularity" | "segment_popularity" | "global_popularity"
    fallback: bool
    model: str = ""  # the version that served this user (a rollout splits a batch)


@dataclass(frozen=True)
class SimilarItems:
    item_id: str
    items: list[dict[str, Any]]
    strategy: str
    fallback: bool


MAX_ASSIGNED = 100_000  # users whose variant a process remembers


def parse_events(raw: Sequence[bytes], serving: ServingModel) -> dict[int, float]:
    """Item index -> summed weight of the encoded events (``history.encode_event``)
    newer than the model's cutoff, straight from the bytes Redis returned.

    Same result as decoding each event with ``history.decode_event`` and looking the
    item up in the bundle's id map, at a fraction of the cost.

    >>> import types
    >>> s = types.SimpleNamespace(bundle=types.SimpleNamespace(
    ...     cutoff=100.0, items=types.SimpleNamespace(lookup=lambda k: None)),
    ...     item_key={b"i1": 0, b"i2": 1}, event_weight={b"view": 1.0, b"purchase": 8.0})
    >>> parse_events([b"101000|view|i1", b"100500|purchase|i1", b"99000|view|i2",
    ...               b"100001|other|i2", b"100002|view|nope"], s)
    {0: 9.0, 1: 1.0}
    """
    b = serving.bundle
    cutoff, keys, weights = b.cutoff, serving.item_key, serving.event_weight
    acc: dict[int, float] = {}
    for entry in raw:
        ts, event_type, item = entry.split(b"|", 2)
        if int(ts) / 1000 <= cutoff:
            continue  # already in the training history
        idx = keys.get(item)
        if idx is None:  # e.g. an integer id spelt "007": the id map's own rules
            idx = b.items.lookup(item.decode())
            if idx is None:
                continue
        acc[idx] = acc.get(idx, 0.0) + weights.get(event_type, 1.0)
    return acc


class Engine:
    """Serves one model alias: recommend, similar, record events, describe."""

    def __init__(self, registry: ModelRegistry, name: str, alias: str, *,
                 history: HistoryStore | None, updates: UpdateQueue | None, state: LiveState,
                 segments: SegmentCache, experiment: Experiment | None,
                 poll_seconds: float = 1.0, rollouts: redis.Redis | None = None,
                 rollout_poll_seconds: float = 0.25) -> None:
        self.history = history
        self.updates = updates
        self.state = state
        self.segments = segments
        self.experiment = experiment
        self._serving: ServingModel | None = None
        self.live = registry.live(name, alias, lambda v: load_serving_model(v, state),
                                  poll_seconds=poll_seconds, on_swap=self._swapped)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._degraded_children: dict[str, Any] = {}
        # user -> assigned variant: the assignment is a pure function of the user (a hash),
        # so it is computed once per user; the exposure is still counted on every request.
        self._assigned: dict[str, str] = {}
        self._exposures: dict[str, Any] = {}
        # Rollouts of the production alias: the candidate is loaded in the background
        # (with the latest snapshots, kept current by ``_follow_snapshots``).
        self.rollout: RolloutRouter[ServingModel] | None = None
        if rollouts is not None and alias == "production":
            self.rollout = RolloutRouter(
                rollouts, registry, name, lambda v: load_serving_model(v, state, announce=False),
                smoke=smoke_check, poll_seconds=rollout_poll_seconds)
            self._follow_snapshots()

    # -- model ---------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the snapshots and load the model now, before the server takes traffic.

        No model yet: the registry is polled in the background and requests get a
        retryable 503 until one is promoted.
        """
        self.state.start()
        try:
            self.live.get()  # loads, then polls the alias in the background
        except Unavailable as exc:
            log.warning("%s; serving 503s until one is promoted", exc.message)
        if self.rollout is not None:
            self.rollout.start()

    def stop(self) -> None:
        self.live.stop()
        self.state.stop()
        if self.rollout is not None:
            self.rollout.stop()

    def _follow_snapshots(self) -> None:
        """Swap new catalogue and popularity snapshots into the rollout's candidate too
        (``LiveState`` swaps them into the production model)."""
        state = self.state

        def items(*_: Any) -> None:
            cand = self.rollout.candidate if self.rollout is not None else None
            if cand is not None:
                cand[1].items = state.items_for(cand[1].bundle, cand[0].label)

        def popularity(*_: Any) -> None:
            cand = self.rollout.candidate if self.rollout is not None else None
            if cand is not None:
                cand[1].popularity = state.popularity_for(cand[1].bundle, cand[0].label)

        for follower, also in ((state.catalogue, items), (state.popularity, popularity)):
            if follower is not None:
                follower.on_swap = _chain(follower.on_swap, also)

    def current(self) -> ServingModel:
        """The model being served (never loads one: see ``start``)."""
        serving = self._serving
        if serving is None:
            raise Unavailable(f"no model {self.live.name!r} at alias {self.live.alias!r} "
                              f"loaded yet", dependency="model")
        return serving

    def _swapped(self, version: ModelVersion, serving: ServingModel) -> None:
        self.state.serving = serving
        self._serving = serving

    def _blocked(self, state: ItemState, category: str | None) -> np.ndarray:
        """Indices of items a request must not get: out of stock or another category."""
        blocked = state.masks.get(category)
        if blocked is None:
            allowed = state.in_stock.copy()
            if category is not None:
                in_category = state.category_mask(category)
                if in_category is None:
                    raise BadRequest(
                        f"category must be one of {', '.join(state.categories) or '(none known)'}, "
                        f"got {category!r}", field="category")
                allowed &= in_category
            blocked = np.flatnonzero(~allowed)
            state.masks[category] = blocked  # lives as long as this state, no longer
        return blocked

    # -- recommendations -----------------------------------------------------------------

    def recommend(self, user_ids: Sequence[str], *, n: int, exclude_seen: bool = True,
                  category: str | None = None) -> tuple[ServingModel, list[UserRecommendations],
                                                       list[str]]:
        """Top ``n`` items for each user; also the model served and the degraded deps.

        During a rollout each user is served by the version the rollout routes them to
        (``UserRecommendations.model``; the model returned is the one that served the
        first user); otherwise by the production model.
        """
        production = self.current()
        router = self.rollout
        if router is None or router.rollout is None or router.candidate is None:
            return self._serve(production, user_ids, n, exclude_seen, category)
        return self._rollout(router, production, user_ids, n, exclude_seen, category)

    def _rollout(self, router: RolloutRouter[ServingModel], production: ServingModel,
                 user_ids: Sequence[str], n: int, exclude_seen: bool, category: str | None
                 ) -> tuple[ServingModel, list[UserRecommendations], list[str]]:
        """``recommend`` while a rollout runs: split the users by version, serve each
        group, measure each version; mirror the request to a shadow candidate."""
        candidate = router.candidate
        assert candidate is not None
        doc = router.rollout
        assert doc is not None
        cand = candidate[1]
        attributes = self._attributes(production, user_ids) if doc.spec.segment else None
        routes = router.route(user_ids, production_version=production.version.version,
                              attributes=attributes)
        groups = {id(production): (production, [i for i, r in enumerate(routes) if not r]),
                  id(cand): (cand, [i for i, r in enumerate(routes) if r])}
        results: list[UserRecommendations | None] = [None] * len(user_ids)
        degraded: list[str] = []
        served_first: ServingModel | None = None
        for serving, idx in groups.values():
            if not idx:
                continue
            ids = [user_ids[i] for i in idx]
            started = time.perf_counter()
            try:
                _, part, deg = self._serve(serving, ids, n, exclude_seen, category)
            except BadRequest:
                raise
            except Exception:
                if serving is production:
                    self._record(router, serving, len(ids), started, error=True)
                    raise
                # The candidate failed: counted against it; production answers instead.
                log.exception("candidate %s failed; production serves %d users",
                              serving.version.label, len(ids))
                self._record(router, serving, len(ids), started, error=True)
                serving = production
                started = time.perf_counter()
                _, part, deg = self._serve(production, ids, n, exclude_seen, category)
            self._record(router, serving, len(ids), started)
            for i, r in zip(idx, part, strict=True):
                results[i] = r
            degraded.extend(d for d in deg if d not in degraded)
            if 0 in idx:
                served_first = serving
        if doc.spec.strategy == "shadow" and not any(routes):
            mirrored = [u for u in user_ids if router.mirrored(u)]
            if mirrored:
                shown = {r.user_id: r for r in results if r is not None}
                router.shadow(lambda: self._shadow(router, cand, mirrored, shown, n,
                                                   exclude_seen, category))
        return served_first or production, results, degraded  # type: ignore[return-value]

    def _record(self, router: RolloutRouter[ServingModel], serving: ServingModel, units: int,
                started: float, *, error: bool = False, role: str = "live") -> None:
        v = serving.version
        router.recorder.request(v.name, v.version, time.perf_counter() - started,
                                error=error, role=role, n=units)

    def _shadow(self, router: RolloutRouter[ServingModel], cand: ServingModel,
                user_ids: list[str], shown: dict[str, UserRecommendations], n: int,
                exclude_seen: bool, category: str | None) -> None:
        """Off the response path: the shadow candidate scores the same users; its lists
        are compared with what production returned (overlap@n and rank correlation),
        logged and recorded as the ``agreement`` and ``rank_corr`` guards."""
        started = time.perf_counter()
        v = cand.version
        try:
            _, lists, _ = self._serve(cand, user_ids, n, exclude_seen, category, count=False)
        except Exception as exc:  # noqa: BLE001 - counted against the shadow, never raised
            self._record(router, cand, len(user_ids), started, error=True, role="shadow")
            log.warning("shadow %s failed on %d users: %s", v.label, len(user_ids), exc)
            return
        self._record(router, cand, len(user_ids), started, role="shadow")
        agreement, corr = [], []
        for r in lists:
            prod = shown.get(r.user_id)
            if prod is None:
                continue
            a, c = compare_lists([i["item_id"] for i in prod.items],
                                 [i["item_id"] for i in r.items])
            agreement.append(a)
            if c is not None:
                corr.append(c)
        if agreement:
            router.recorder.observe(v.name, v.version, "agreement", sum(agreement),
                                    len(agreement), role="shadow")
        if corr:
            router.recorder.observe(v.name, v.version, "rank_corr", sum(corr), len(corr),
                                    role="shadow")
        log.debug("shadow %s on %d users: agreement %.3f", v.label, len(lists),
                  sum(agreement) / max(len(agreement), 1))

    def _attributes(self, serving: ServingModel, user_ids: Sequence[str]
                    ) -> list[dict[str, str]]:
        """What a rollout segment can match a user on: ``segment`` (the model's, for the
        users it knows) and ``user_id``."""
        b = serving.bundle
        out = []
        for u in user_ids:
            row = b.users.lookup(u)
            code = int(b.user_segment[row]) if row is not None and b.segments else -1
            attrs = {"user_id": u}
            if code >= 0:
                attrs["segment"] = b.segments[code]
            out.append(attrs)
        return out

    def _serve(self, serving: ServingModel, user_ids: Sequence[str], n: int,
               exclude_seen: bool, category: str | None, count: bool = True
               ) -> tuple[ServingModel, list[UserRecommendations], list[str]]:
        if len(user_ids) == 1:
            return self._recommend_one(serving, user_ids[0], n=n, exclude_seen=exclude_seen,
                                       category=category, count=count)
        return self._serve_many(serving, user_ids, n=n, exclude_seen=exclude_seen,
                                category=category, count=count)

    def _serve_many(self, serving: ServingModel, user_ids: Sequence[str], *, n: int,
                    exclude_seen: bool, category: str | None, count: bool = True
                    ) -> tuple[ServingModel, list[UserRecommendations], list[str]]:
        b, state = serving.bundle, serving.items
        blocked = self._blocked(state, category)
        degraded = ["feast"] if state.degraded else []

        live = self._live_weights(serving, user_ids, degraded)
        lookup = b.users.lookup
        rows = np.fromiter((-1 if (r := lookup(u)) is None else r for u in user_ids),
                           np.int64, len(user_ids))
        histories = b.histories(rows, live)
        warm = np.diff(histories.indptr) > 0
        if self.experiment is None:
            variants = [b.variants[0]] * len(user_ids)
        else:
            assign = self._assign if count else self.experiment.variant_of
            variant_for = b.variant_for
            variants = [variant_for(assign(u)) for u in user_ids]
        segment = self._segments(b, user_ids, rows, warm, variants, degraded)

        results: list[UserRecommendations | None] = [None] * len(user_ids)
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(variants):
            groups.setdefault(v if warm[i] else COLD, []).append(i)
        for group, idx in groups.items():
            cold = group == COLD
            sub = histories if len(idx) == len(user_ids) else histories[idx]
            model = serving.popularity if cold or group == "popularity" else b.models[group]
            scores = model.scores(sub, segment[idx])
            if len(blocked):
                scores[:, blocked] = -np.inf
            if exclude_seen and not cold:
                exclude(scores, sub)
            ids, best = top_n(scores, n)
            for j, i in enumerate(idx):
                strategy = group if not cold else (
                    "segment_popularity" if segment[i] >= 0 else "global_popularity")
                items = self._items(b, ids[j], best[j])
                results[i] = UserRecommendations(user_ids[i], items, variants[i], strategy,
                                                 fallback=cold, model=serving.version.label)
                if count:
                    self._count(variants[i], strategy, items)
        if count:
            self._count_degraded(degraded)
        return serving, results, degraded  # type: ignore[return-value]

    def _recommend_one(self, serving: ServingModel, user_id: str, *, n: int,
                       exclude_seen: bool, category: str | None, count: bool = True
                       ) -> tuple[ServingModel, list[UserRecommendations], list[str]]:
        """``recommend`` for one user (the per-request path): same answers, no sparse matrices."""
        b, state = serving.bundle, serving.items
        blocked = self._blocked(state, category)
        degraded = ["feast"] if state.degraded else []
        live = self._live_weights(serving, [user_id], degraded)
        row = b.users.lookup(user_id)
        row = -1 if row is None else row
        items, weights = b.history_of(row, live[0] if live else None)
        warm = len(items) > 0
        if self.experiment is None:
            variant = b.variants[0]
        else:
            variant = b.variant_for(self._assign(user_id) if count
                                    else self.experiment.variant_of(user_id))
        if row >= 0 or (warm and variant != "popularity") or not b.segments:
            segment = int(b.user_segment[row]) if row >= 0 and b.segments else -1
        else:  # a user the model does not know, on the fallback or popularity path
            segment = int(self._segments(b, [user_id], np.array([row]), np.array([warm]),
                                         [variant], degraded)[0])
        model = b.models[variant] if warm and variant != "popularity" else serving.popularity
        scores = model.score_one(items, weights, segment)
        if len(blocked):
            scores[blocked] = -np.inf
        if exclude_seen and warm:
            scores[items] = -np.inf
        ids, best = top_n(scores[None, :], n)
        strategy = variant if warm else (
            "segment_popularity" if segment >= 0 else "global_popularity")
        result = UserRecommendations(user_id, self._items(b, ids[0], best[0]), variant,
                                     strategy, fallback=not warm, model=serving.version.label)
        if count:
            self._count(variant, strategy, result.items)
            self._count_degraded(degraded)
        return serving, [result], degraded

    def _segments(self, b: ModelBundle, user_ids: Sequence[str], rows: np.ndarray,
                  warm: np.ndarray, variants: list[str], degraded: list[str]) -> np.ndarray:
        """Segment code per user: the model's for users it knows, Feast's (cached) for the
        others where needed (cold start, or the popularity variant); -1 unknown."""
        segment = np.full(len(user_ids), -1, np.int64)
        if not b.segments:
            return segment
        known = rows >= 0
        segment[known] = b.user_segment[rows[known]]
        need = [u for i, u in enumerate(user_ids)
                if not known[i] and (not warm[i] or variants[i] == "popularity")]
        if need:
            found, ok = self.segments.segments(need)
            if not ok and "feast" not in degraded:
                degraded.append("feast")
            for i, u in enumerate(user_ids):
                if u in found:
                    segment[i] = b.segment_code(found[u])
        return segment

    def _count(self, variant: str, strategy: str, items: list[dict[str, Any]]) -> None:
        children = self._children.get((variant, strategy))
        if children is None:
            children = (RECOMMENDATIONS.labels(variant, strategy), TOP_SCORE.labels(strategy))
            self._children[(variant, strategy)] = children
        children[0].inc()
        if items:
            children[1].observe(items[0]["score"])

    def _assign(self, user_id: str) -> str:
        """``experiment.assign``: the variant (cached per user) and one exposure counted."""
        variant = self._assigned.get(user_id)
        if variant is None:
            assert self.experiment is not None
            variant = self.experiment.variant_of(user_id)
            if len(self._assigned) >= MAX_ASSIGNED:
                self._assigned.clear()  # bounded; refilled at one hash per user
            self._assigned[user_id] = variant
        child = self._exposures.get(variant)
        if child is None:
            assert self.experiment is not None
            child = self._exposures[variant] = EXPOSURES.labels(self.experiment.name, variant)
        child.inc()
        return variant

    def _count_degraded(self, degraded: list[str]) -> None:
        for dep in degraded:
            child = self._degraded_children.get(dep)
            if child is None:
                child = self._degraded_children[dep] = DEGRADED.labels(dep)
            child.inc()

    def _live_weights(self, serving: ServingModel, user_ids: Sequence[str],
                      degraded: list[str]) -> list[dict[int, float]] | None:
        """Per user: item index -> summed weight of live events newer than the model."""
        if self.history is None:
            return None
        try:
            raws = self.history.read_raw(user_ids)
        except redis.RedisError as exc:
            log.warning("live history unavailable, serving training history only: %s", exc)
            degraded.append("redis")
            return None
        return [parse_events(raw, serving) if raw else {} for raw in raws]

    @staticmethod
    def _items(b: ModelBundle, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        keep = ids >= 0
        ext = b.items.externals(ids[keep])
        return [{"item_id": item, "score": s}
                for item, s in zip(ext, np.round(scores[keep].astype(np.float64), 6).tolist(),
                                   strict=True)]

    # -- similar items -------------------------------------------------------------------

    def similar(self, item_id: str, *, n: int, category: str | None = None
                ) -> tuple[ServingModel, SimilarItems, list[str]]:
        serving = self.current()
        b, state = serving.bundle, serving.items
        blocked = self._blocked(state, category)
        degraded = ["feast"] if state.degraded else []
        idx = b.items.lookup(item_id)
        # Similar items come from the item vectors of the first factor model in the bundle.
        variant = next((v for v in ("als", "bpr") if v in b.models), None)
        scores = b.models[variant].similar(idx) if variant and idx is not None else None
        if scores is not None:
            strategy, fallback = str(variant), False
        else:
            # Unknown or unplaceable item: popular items of its category, else of everyone.
            scores = serving.popularity.ranking().copy()
            strategy, fallback = "global_popularity", True
            own = int(state.category[idx]) if idx is not None else -1
            if own >= 0 and category is None:
                scores[state.category != own] = -np.inf
                strategy = "category_popularity"
            if idx is not None:
                scores[idx] = -np.inf
        scores = scores[None, :].copy()
        if len(blocked):
            scores[:, blocked] = -np.inf
        ids, best = top_n(scores, n)
        self._count_degraded(degraded)
        return serving, SimilarItems(item_id, self._items(b, ids[0], best[0]), strategy,
                                     fallback), degraded

    # -- events --------------------------------------------------------------------------

    def record(self, events: Sequence[Event], *, request_id: str = "") -> list[str]:
        """Store events in the live history and the durable stream; their stream ids."""
        if self.history is None:
            raise Unavailable("redis is not configured: set MLSUITE_REDIS_URL", dependency="redis")
        ids = self.history.append(events, request_id=request_id)
        for e in events:
            EVENTS.labels(e.event_type).inc()
        return ids

    def update(self, kind: str, entity_id: str, fields: dict[str, Any], *,
               request_id: str = "") -> str:
        """Queue a validated item or user update for the worker's Feast push; its stream id."""
        if self.updates is None:
            raise Unavailable("redis is not configured: set MLSUITE_REDIS_URL", dependency="redis")
        return self.updates.put(kind, entity_id, fields, request_id=request_id)

    # -- description ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        serving = self.current()
        v, b = serving.version, serving.bundle
        return {
            "model": v.label,
            "name": v.name,
            "version": v.version,
            "alias": self.live.alias,
            "created_at": v.metadata.get("created_at"),
            "variants": b.variants,
            "experiment": None if self.experiment is None else {
                "name": self.experiment.name, "salt": self.experiment.salt,
                "weights": dict(self.experiment.variants)},
            "metrics": v.metadata.get("metrics", b.metrics),
            "params": v.metadata.get("params", {}),
            "data_fingerprint": v.metadata.get("data_fingerprint"),
            "catalogue_size": len(b.items),
            "known_users": len(b.users),
            "data_cutoff": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.cutoff)),
            **self.state.describe(serving),
            "rollout": self._describe_rollout(),
        }

    def _describe_rollout(self) -> dict[str, Any] | None:
        doc = self.rollout.rollout if self.rollout is not None else None
        if doc is None:
            return None
        cand = self.rollout.candidate if self.rollout is not None else None
        return {"state": doc.state, "strategy": doc.spec.strategy, "version": doc.version,
                "step": doc.step, "share": doc.share, "mirror": doc.mirror,
                "candidate_loaded": cand is not None}
