"""Fraud rollouts with real small models and a real Redis: canary routing per card,
an inverted candidate rolled back by the controller under simulated payments, labels
turned into precision and recall per version, a shadow that never decides, blue-green.

``score`` below is how ``FraudService`` uses ``FraudRollout`` per request: route the
cards, score each group with its version, record each group, mirror to a shadow.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from fraud.config import FraudConfig
from fraud.models import Artifact
from fraud.rollout import Candidate, FraudRollout, label_consumer
from fraud.training import Dataset
from mlplatform.assignment import in_rollout
from mlplatform.config import Settings
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts import RolloutController, RolloutStore
from mlplatform.rollouts.machine import parse_guard
from mlplatform.rollouts.measure import read_measurements
from mlplatform.worker import Worker

NAME = FraudConfig().model_name
CONFIG = FraudConfig().with_(follow_seconds=0.05)


@pytest.fixture
def data_dir(tmp_path: Path, fraud_data_dir: Path) -> Path:
    """A private registry: production v1 from the session's training, plus v(n+1) the
    same artifact again (healthy) and v(n+2) the same model with its score inverted."""
    data = tmp_path / "rollout-data"
    shutil.copytree(fraud_data_dir / "models", data / "models")
    # Registry artifacts are signed with the deployment's key: it moves with them.
    shutil.copy(fraud_data_dir / "secret.key", data / "secret.key")
    registry = ModelRegistry(data / "models")
    production = registry.resolve(NAME, "production")
    artifact = Artifact.load(production.path)
    registry.register(NAME, writer=artifact.save, params={"copy_of": production.version},
                      metrics={}, data_fingerprint="copy")
    inverted = invert(artifact.model)
    registry.register(NAME, writer=Artifact(inverted, artifact.thresholds).save,
                      params={"inverted": production.version}, metrics={},
                      data_fingerprint="inverted")
    return data


def invert(model: Any) -> Any:
    """A copy of ``model`` scoring 1 - p: its logistic layer negated (sigmoid(-z)).

    The online model's layer is river's ``LogisticRegression`` (``Hybrid.layer``, or the
    ``lr`` step of ``OnlineLinear``'s pipeline); river keeps its live weights in
    ``_weights`` (``weights`` is a copy)."""
    inverted = copy.deepcopy(model)
    layer = getattr(inverted, "layer", None) or inverted.pipeline["lr"]
    for feature in list(layer._weights):
        layer._weights[feature] = -layer._weights[feature]
    layer.intercept = -layer.intercept
    x = {name: 1.0 for name in model.predictor().feature_names}
    p, q = model.predictor(), inverted.predictor()
    assert abs(p.predict(p.matrix([x]))[0] + q.predict(q.matrix([x]))[0] - 1) < 1e-6
    return inverted


@pytest.fixture
def rollout_settings(settings: Settings, data_dir: Path) -> Settings:
    return settings.with_(data_dir=data_dir)


@pytest.fixture
def registry(data_dir: Path) -> ModelRegistry:
    return ModelRegistry(data_dir / "models")


@pytest.fixture
def versions(registry: ModelRegistry) -> dict[str, int]:
    production = registry.aliases(NAME)["production"]
    latest = registry.versions(NAME)[-1].version
    return {"production": production, "copy": latest - 1, "inverted": latest}


@pytest.fixture
def store(redis_client: redis.Redis, registry: ModelRegistry) -> RolloutStore:
    return RolloutStore(redis_client, registry)


@pytest.fixture
def rollout(rollout_settings: Settings, redis_client: redis.Redis) -> Iterator[FraudRollout]:
    fr = FraudRollout(rollout_settings, CONFIG, redis_client)
    fr.start()
    yield fr
    fr.stop()


@pytest.fixture
def production(rollout: FraudRollout, registry: ModelRegistry) -> Candidate:
    """Production, loaded as the service holds it (predictor and thresholds)."""
    return rollout._load(registry.resolve(NAME, "production"))


@pytest.fixture
def traffic(payments_data: Dataset) -> tuple[list[str], list[dict[str, float]], np.ndarray]:
    """The simulated payments: card per transaction, feature vectors, fraud labels."""
    cards = payments_data.frame["card_id"].astype(str).tolist()
    return cards, payments_data.vectors, payments_data.labels


def score(rollout: FraudRollout, production: Candidate, cards: Sequence[str],
          xs: Sequence[dict[str, float]], tx_ids: Sequence[str] | None = None
          ) -> list[dict[str, Any]]:
    """What ``FraudService.score`` does per request with the rollout (see the module)."""
    routes = rollout.route(cards, production_version=production.version.version)
    cand = rollout.candidate()
    out: list[dict[str, Any]] = [{} for _ in cards]
    for model, idx in ((production, [i for i, v in enumerate(routes) if v is None]),
                       (cand, [i for i, v in enumerate(routes) if v is not None])):
        if not idx or model is None:
            continue
        started = time.perf_counter()
        scores = model.predictor.predict(model.predictor.matrix([xs[i] for i in idx]))
        decisions = model.decide(scores)
        rollout.record(model.version.version, time.perf_counter() - started, decisions)
        for i, s, d in zip(idx, scores.tolist(), decisions, strict=True):
            out[i] = {"transaction_id": tx_ids[i] if tx_ids else str(i), "score": s,
                      "decision": d, "model_version": model.label, "features": xs[i]}
        if model is production:
            mirrored = [i for i in idx if rollout.mirrored(cards[i])]
            if mirrored:
                rollout.mirror([xs[i] for i in mirrored], [out[i]["score"] for i in mirrored],
                               production.thresholds)
    return out


def loaded(rollout: FraudRollout, version: int) -> Callable[[], bool]:
    return lambda: (c := rollout.candidate()) is not None and c.version.version == version


def test_canary_routes_a_stable_share_of_cards_and_splits_batches(wait_for: Callable[..., Any],
        rollout: FraudRollout, production: Candidate, store: RolloutStore,
        versions: dict[str, int], traffic: Any) -> None:
    cards = sorted(set(traffic[0]))[:300]
    store.start(NAME, versions["copy"], "canary", steps=(20.0, 100.0))
    wait_for("the candidate to load", loaded(rollout, versions["copy"]))
    expected = [versions["copy"] if in_rollout(NAME, c, 0.2) else None for c in cards]
    assert 30 < sum(v is not None for v in expected) < 90
    assert rollout.route(cards, production_version=versions["production"]) == expected
    # One at a time, a card gets what it gets in a batch.
    assert [rollout.route([c], production_version=versions["production"])[0]
            for c in cards] == expected
    batch = score(rollout, production, cards, [traffic[1][0]] * len(cards))
    assert [r["model_version"].endswith(f":v{versions['copy']}") for r in batch] == \
        [v is not None for v in expected]


def test_canary_segment_matches_transaction_attributes(wait_for: Callable[..., Any],
        rollout: FraudRollout, store: RolloutStore, versions: dict[str, int]) -> None:
    store.start(NAME, versions["copy"], "canary", steps=(100.0,), segment={"country": "DE"})
    wait_for("the candidate to load", loaded(rollout, versions["copy"]))
    attrs = [{"country": "DE"}, {"country": "FR"}, {}]
    assert rollout.route(["c1", "c2", "c3"], production_version=versions["production"],
                         attributes=attrs) == [versions["copy"], None, None]


def test_an_inverted_candidate_is_rolled_back_under_simulated_payments(wait_for: Callable[..., Any],
        rollout: FraudRollout, production: Candidate, store: RolloutStore,
        rollout_settings: Settings, redis_client: redis.Redis, versions: dict[str, int],
        registry: ModelRegistry, traffic: Any) -> None:
    cards, xs, labels = traffic
    # (The first transactions of the simulation have no history yet: start later.)
    baseline = score(rollout, production, cards[10_000:12_000], xs[10_000:12_000])
    decline_rate = sum(r["decision"] == "decline" for r in baseline) / len(baseline)
    limit = round(2 * decline_rate + 0.02, 4)
    worker = Worker("fraud", rollout_settings, redis_client)
    worker.start()
    try:
        store.start(NAME, versions["inverted"], "canary", steps=(20.0, 50.0, 100.0),
                    interval_seconds=1.0, failures=2, min_samples=50,
                    guards=(parse_guard(f"decline_rate<={limit}"),))
        wait_for("the candidate to load", loaded(rollout, versions["inverted"]))
        deadline = time.monotonic() + 20
        i = 12_000
        while store.require(NAME).state == "running" and time.monotonic() < deadline:
            score(rollout, production, cards[i:i + 100], xs[i:i + 100])
            i = 10_000 + (i + 100) % 8_000
    finally:
        worker.stop()
    done = store.require(NAME)
    assert done.state == "rolled_back", done.history
    assert [h["event"] for h in done.history] == ["start", "fail", "rollback"]
    measured = done.history[-1]["measured"]
    assert measured["decline_rate"] > limit >= decline_rate
    assert f"breaks decline_rate<={limit:g}" in done.history[-1]["reason"]
    assert registry.aliases(NAME)["production"] == versions["production"]
    assert registry.rollout(NAME)[1] == 0.0
    wait_for("cards back on production", lambda: rollout.route(
        cards[:500], production_version=versions["production"]) == [None] * 500, timeout=5)


def test_labels_give_precision_and_recall_per_version(
        rollout: FraudRollout, redis_client: redis.Redis) -> None:
    """(decision, is_fraud) per version; precision = frauds among flagged, recall =
    flagged among frauds; a poison entry goes to the dead letters."""
    stream = f"{CONFIG.key_prefix}labels"
    cases = {2: [("decline", True), ("review", False), ("approve", True), ("approve", False)],
             3: [("decline", True), ("decline", True), ("review", True)]}
    since = time.time() - 1
    for version, rows in cases.items():
        for k, (decision, fraud) in enumerate(rows):
            record = {"transaction_id": f"t{version}-{k}", "decision": decision,
                      "model_version": f"{NAME}:v{version}", "score": 0.5,
                      "features": {"amount": 1.0}, "review_threshold": 0.5}
            redis_client.xadd(stream, {"transaction_id": record["transaction_id"],
                                       "is_fraud": "1" if fraud else "0",
                                       "labelled_at": repr(time.time()),
                                       "decision": json.dumps(record)})
    redis_client.xadd(stream, {"transaction_id": "poison", "is_fraud": "1"})
    consumer = label_consumer(redis_client, CONFIG, block_ms=10)
    assert consumer.poll() == 8
    v2 = read_measurements(redis_client, NAME, 2, since, time.time() + 1)
    v3 = read_measurements(redis_client, NAME, 3, since, time.time() + 1)
    assert v2.values == {"precision": 0.5, "recall": 0.5}
    assert v3.values == {"precision": 1.0, "recall": 1.0}
    assert redis_client.xlen(f"{CONFIG.key_prefix}dead-letters") == 1


def test_shadow_never_decides_and_its_comparison_is_recorded(wait_for: Callable[..., Any],
        rollout: FraudRollout, production: Candidate, store: RolloutStore,
        redis_client: redis.Redis, versions: dict[str, int], traffic: Any) -> None:
    cards, xs, _ = traffic
    before = score(rollout, production, cards[10_000:10_300], xs[10_000:10_300])
    r = store.start(NAME, versions["inverted"], "shadow", steps=(100.0,), interval_seconds=60)
    wait_for("the shadow to load", loaded(rollout, versions["inverted"]))
    after = score(rollout, production, cards[10_000:10_300], xs[10_000:10_300])
    assert after == before  # production decides, unchanged
    assert rollout.router.shadows.join(10)
    rollout.recorder.flush()
    shadow = read_measurements(redis_client, NAME, versions["inverted"], r.started_at,
                               time.time() + 1, role="shadow")
    assert shadow.requests == 300 and shadow.errors == 0 and shadow.p99_ms is not None
    assert shadow.values["score_corr"] < -0.99  # exactly inverted scores
    assert shadow.values["agreement"] < 0.9
    assert "decline_rate" in shadow.values
    live = read_measurements(redis_client, NAME, versions["inverted"], r.started_at,
                             time.time() + 1)
    assert live.requests == 0


def test_blue_green_switches_every_card_after_the_smoke_check(wait_for: Callable[..., Any],
        rollout: FraudRollout, production: Candidate, store: RolloutStore,
        registry: ModelRegistry, redis_client: redis.Redis, versions: dict[str, int],
        traffic: Any) -> None:
    cards, xs, _ = traffic
    ctl = RolloutController(redis_client, registry, "fraud")
    r = store.start(NAME, versions["copy"], "blue-green", interval_seconds=1.0, min_samples=20)
    wait_for("the smoke check", lambda: store.smoke(NAME, versions["copy"]) == "ok")
    assert rollout.route(cards[:50], production_version=versions["production"]) == [None] * 50
    assert "smoke-checked" in ctl.tick(now=r.started_at + 0.1)
    wait_for("replicas to switch", lambda: rollout.route(
        cards[:50], production_version=versions["production"]) == [versions["copy"]] * 50)
    out = score(rollout, production, cards[:100], xs[:100])
    assert {o["model_version"] for o in out} == {f"{NAME}:v{versions['copy']}"}
    rollout.recorder.flush()
    assert "promoted" in ctl.tick(now=r.started_at + 1.5)
    assert registry.aliases(NAME)["production"] == versions["copy"]
