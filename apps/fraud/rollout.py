"""Fraud model rollouts: which cards the candidate scores, its metrics and its shadow.

``FraudService`` holds one ``FraudRollout`` (built and started with the service). Per
request it asks ``route(card_ids, production_version=...)``: per transaction, the
candidate's version number when the rollout serves that card with the candidate (a
canary's hash-chosen share of cards, optionally only a segment such as
``country=DE``; every card once a blue-green rollout switched), else None. The
candidate (``candidate()``: its registry version, ``Predictor`` and ``Thresholds``) is
loaded by a background thread as soon as a rollout names it, never on a request.

After scoring, ``record(version, latency_s, decisions)`` counts the version's requests,
latency and decisions (the ``decline_rate`` and ``review_rate`` guards) for the
controller; ``mirror(...)`` hands a shadow candidate the same feature vectors, to score
off the response path and compare with production's answer (``agreement`` of the
decisions, ``score_corr``, latency), never returned. Labels arrive later on the label
stream with the decision record (and its ``model_version``): ``label_consumer`` counts,
per version, ``precision`` (frauds among flagged transactions) and ``recall`` (flagged
among frauds), exactly once per label (its own consumer group, effects in the ack's
transaction).

All of it lives in ``mlplatform.rollouts``; this module adds what fraud scoring knows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from fraud.config import FraudConfig
from fraud.keys import Keys
from fraud.learner import thresholds_of
from fraud.models import Artifact
from fraud.predictors import Predictor
from fraud.thresholds import Thresholds
from mlplatform.config import Settings
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.rollouts.measure import count_guard
from mlplatform.rollouts.routing import RolloutRouter
from mlplatform.streams import Consumer, Entry

__all__ = ["Candidate", "FraudRollout", "label_consumer", "quality_handler", "version_number",
           "compare_scores"]

log = logging.getLogger(__name__)

QUALITY_GROUP = "rollout-quality"
FLAGGED = ("review", "decline")


@dataclass(frozen=True)
class Candidate:
    """A rollout's candidate, loaded: what scoring needs from it."""

    version: ModelVersion
    predictor: Predictor
    thresholds: Thresholds

    @property
    def label(self) -> str:
        """What decisions record as ``model_version`` (``fraud-online:v3``)."""
        return self.version.label

    def decide(self, scores: Sequence[float] | np.ndarray) -> list[str]:
        review, decline = self.thresholds.review, self.thresholds.decline
        return ["decline" if s >= decline else "review" if s >= review else "approve"
                for s in scores]


def version_number(label: str) -> int | None:
    """``fraud-online:v3`` -> 3 (None if it is not a version label).

    >>> version_number("fraud-online:v3"), version_number("fraud-online:v3+12"), version_number("x")
    (3, 3, None)
    """
    _, sep, tail = label.rpartition(":v")
    digits = tail.split("+", 1)[0]
    return int(digits) if sep and digits.isdigit() else None


def compare_scores(production: Sequence[float], candidate: Sequence[float],
                   thresholds: tuple[Thresholds, Thresholds]) -> tuple[float, float | None]:
    """Shadow comparison: share of equal decisions, and the scores' correlation (None
    when either side is constant).

    >>> t = Thresholds(review=0.5, decline=0.9)
    >>> compare_scores([0.1, 0.6, 0.95], [0.9, 0.4, 0.05], (t, t))
    (0.0, -1.0)
    """
    prod_t, cand_t = thresholds
    same = [prod_t.decide(p) == cand_t.decide(c) for p, c in zip(production, candidate,
                                                                 strict=True)]
    agreement = sum(same) / max(len(same), 1)
    a, b = np.asarray(production, float), np.asarray(candidate, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return agreement, None
    return agreement, round(float(np.corrcoef(a, b)[0, 1]), 6)


class FraudRollout:
    """The request side of fraud rollouts for one service process (see the module)."""

    def __init__(self, settings: Settings, config: FraudConfig, client: redis.Redis) -> None:
        self.config = config
        self.name = config.model_name
        self.router: RolloutRouter[Candidate] = RolloutRouter(
            client, ModelRegistry(settings.data_dir / "models"), config.model_name,
            self._load, smoke=self._smoke, poll_seconds=config.follow_seconds)
        self.recorder = self.router.recorder

    def start(self) -> None:
        """Follow the rollout document (call with the service's start, before traffic)."""
        self.router.start()

    def stop(self) -> None:
        self.router.stop()

    # -- per request ---------------------------------------------------------------------

    def route(self, card_ids: Sequence[str], *, production_version: int,
              attributes: Sequence[Mapping[str, str]] | None = None) -> list[int | None]:
        """Per transaction: the candidate's version if it scores this card, else None.

        ``attributes`` (per transaction, e.g. ``{"country": "DE", "channel": "online"}``)
        are what a rollout's segment is matched against; without them a segmented
        canary serves no one.
        """
        cand = self.router.candidate
        if cand is None:
            return [None] * len(card_ids)
        routes = self.router.route(card_ids, production_version=production_version,
                                   attributes=attributes)
        version = cand[0].version
        return [version if r else None for r in routes]

    def candidate(self) -> Candidate | None:
        """The loaded candidate (None while none is loaded or no rollout runs)."""
        cand = self.router.candidate
        return None if cand is None else cand[1]

    def active(self) -> bool:
        """Whether a rollout document is followed (metrics are worth recording)."""
        doc = self.router.rollout
        return doc is not None and not doc.finished

    def record(self, version: int, latency_s: float, decisions: Sequence[str], *,
               error: bool = False, role: str = "live") -> None:
        """Count one scored group: its transactions, latency, decline and review rates."""
        n = len(decisions)
        if n == 0:
            return
        rec = self.recorder
        rec.request(self.name, version, latency_s, error=error, role=role, n=n)
        if not error:
            rec.observe(self.name, version, "decline_rate", decisions.count("decline"), n,
                        role=role)
            rec.observe(self.name, version, "review_rate", decisions.count("review"), n,
                        role=role)

    def mirrored(self, card_id: str) -> bool:
        """Whether a shadow candidate also scores this card's transaction."""
        return self.router.mirrored(card_id)

    def mirror(self, xs: Sequence[Mapping[str, float]], production_scores: Sequence[float],
               production_thresholds: Thresholds) -> bool:
        """Shadow: score ``xs`` with the candidate off the response path, compare with
        production's scores, record both. False if no shadow runs or the queue is full."""
        cand = self.candidate()
        if cand is None or not xs:
            return False
        xs, prod = list(xs), [float(s) for s in production_scores]
        return self.router.shadow(lambda: self._shadow(cand, xs, prod, production_thresholds))

    def _shadow(self, cand: Candidate, xs: list[Mapping[str, float]], production: list[float],
                production_thresholds: Thresholds) -> None:
        version = cand.version.version
        started = time.perf_counter()
        try:
            scores = cand.predictor.predict(cand.predictor.matrix(xs))
        except Exception as exc:  # noqa: BLE001 - counted against the shadow, never raised
            self.recorder.request(self.name, version, time.perf_counter() - started,
                                  error=True, role="shadow", n=len(xs))
            log.warning("shadow %s failed on %d transactions: %s", cand.label, len(xs), exc)
            return
        self.record(version, time.perf_counter() - started, cand.decide(scores), role="shadow")
        agreement, corr = compare_scores(production, scores.tolist(),
                                         (production_thresholds, cand.thresholds))
        self.recorder.observe(self.name, version, "agreement", agreement * len(xs), len(xs),
                              role="shadow")
        if corr is not None:
            self.recorder.observe(self.name, version, "score_corr", corr, 1, role="shadow")
        log.debug("shadow %s on %d transactions: agreement %.3f, correlation %s",
                  cand.label, len(xs), agreement, corr)

    # -- background ------------------------------------------------------------------------

    def _load(self, version: ModelVersion) -> Candidate:
        artifact = Artifact.load(version.path)
        predictor = artifact.model.predictor()
        return Candidate(version, predictor, thresholds_of(artifact.thresholds, self.config))

    @staticmethod
    def _smoke(cand: Candidate) -> str:
        """Blue-green's smoke check: the candidate scores a sample with valid probabilities."""
        names = cand.predictor.feature_names
        sample = [{n: 0.0 for n in names}, {n: 1.0 for n in names}]
        scores = cand.predictor.predict(cand.predictor.matrix(sample))
        if scores.shape != (2,) or not np.all((scores >= 0) & (scores <= 1)):
            raise ValueError(f"scored a sample with {scores!r}, not two probabilities")
        return f"scored a sample: {', '.join(f'{s:.3f}' for s in scores)}"


def quality_handler(name: str) -> Any:
    """The label stream handler counting precision and recall per model version.

    Its counts go into the consumer's transaction with the ack: exactly once per label.
    """

    def handle(entries: Sequence[Entry], tx: redis.client.Pipeline) -> dict[str, str]:
        rejected: dict[str, str] = {}
        for entry in entries:
            try:
                record = json.loads(entry.fields[b"decision"])
                is_fraud = entry.fields[b"is_fraud"] == b"1"
                version = version_number(str(record["model_version"]))
                flagged = record["decision"] in FLAGGED
            except (KeyError, ValueError, TypeError) as exc:
                rejected[entry.id] = f"not a labelled decision: {exc}"
                continue
            if version is None:
                continue  # decided by no registry version: nothing to measure
            if flagged:  # precision: frauds among flagged
                count_guard(tx, name, version, "precision", float(is_fraud))
            if is_fraud:  # recall: flagged among frauds
                count_guard(tx, name, version, "recall", float(flagged))
        return rejected

    return handle


def label_consumer(client: redis.Redis, config: FraudConfig, **options: Any) -> Consumer:
    """The consumer the fraud worker runs (``worker.consume(label_consumer(...))``) so
    labels feed the precision and recall guards of rollouts."""
    keys = Keys(config.key_prefix, config.model_name)
    return Consumer(client, keys.labels, QUALITY_GROUP, quality_handler(config.model_name),
                    keys.dead_letters, **options)
