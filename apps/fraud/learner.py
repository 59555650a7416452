"""The online learner: one thread per process applying the label stream to its own model.

Every replica and worker process runs one ``Learner``. It is the only code that touches
the (not thread-safe) river model: it reads the label stream in order from its last
offset, calls ``learn_one`` on the features logged at decision time, and publishes an
immutable ``ServingState`` (a numpy predictor + thresholds + the offset it reflects)
that request threads read without locks. Since every process applies the same stream
in the same order to the same base version, all hold the same model.

Checkpoints: every ``snapshot_every_labels`` labels (or ``snapshot_every_seconds``), the
model, its drift monitor and the stream offset are pickled into one Redis hash per base
version. A (re)starting process loads that snapshot and replays only the tail. When the
registry alias moves to a new version, the learner rebuilds from that version (its
snapshot if any, else the whole stream) and swaps.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from fraud import metrics
from fraud.config import FraudConfig
from fraud.drift import DriftMonitor
from fraud.labels import LabelEntry, LabelStream
from fraud.models import Artifact, clone
from fraud.predictors import Predictor
from fraud.thresholds import Thresholds
from mlplatform.errors import Unavailable
from mlplatform.metrics import set_model_info
from mlplatform.registry import LiveModel, ModelVersion

__all__ = ["Learner", "ServingState"]

log = logging.getLogger(__name__)
_READ_COUNT = 1000


@dataclass(frozen=True)
class ServingState:
    """What requests score with: swapped as one reference, never mutated."""

    version: ModelVersion
    predictor: Predictor
    thresholds: Thresholds
    online: bool
    offset: str  # last label-stream entry applied
    labels: int  # labels applied since the base version
    quality: dict[str, Any]  # DriftMonitor.snapshot()

    @property
    def label(self) -> str:
        return self.version.label


class Learner:
    """Owns this process's model; applies labels; publishes ``ServingState``."""

    def __init__(self, live: LiveModel[Artifact], stream: LabelStream, client: redis.Redis,
                 config: FraudConfig) -> None:
        self._live = live
        self._stream = stream
        self._redis = client
        self._config = config
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._state: ServingState | None = None
        # Owned by the learner thread once started:
        self._base: ModelVersion | None = None
        self._artifact: Artifact | None = None
        self._model: Any = None
        self._monitor = DriftMonitor()
        self._offset = "0-0"
        self._labels = 0
        self._snapshot_at = (0, time.monotonic())
        # How the last (re)build started: {"source", "snapshot_labels", "replayed"}.
        self.last_rebuild: dict[str, Any] = {}

    # -- requests ------------------------------------------------------------------

    def state(self) -> ServingState:
        """The current state; loads and catches up on first use in this process."""
        state = self._state
        if state is None or self._pid != os.getpid():
            state = self.start()
        return state

    def start(self) -> ServingState:
        """Load the served version, replay the label stream tail, start the thread."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread is gone
                self._thread, self._state, self._base = None, None, None
                self._stop = threading.Event()
                self._pid = os.getpid()
            if self._state is None:
                version, artifact = self._live.get()
                self._rebuild(version, artifact)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fraud-learner",
                                                daemon=True)
                self._thread.start()
            assert self._state is not None
            return self._state

    def stop(self) -> None:
        self._stop.set()
        self._live.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sync(self, timeout: float = 5.0) -> ServingState:
        """Wait until every label appended so far is applied (tests, ``/v1/model?sync``)."""
        target = self._stream.last_offset()
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if _offset_key(state.offset) >= _offset_key(target):
                return state
            if time.monotonic() > deadline:
                raise Unavailable(f"learner is behind the label stream ({state.offset} < "
                                  f"{target})", dependency="model")
            time.sleep(0.01)

    # -- learner thread ------------------------------------------------------------

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                version, artifact = self._live.get()
                if self._base is None or version.version != self._base.version:
                    self._rebuild(version, artifact)
                entries = self._stream.read(self._offset, _READ_COUNT,
                                            self._config.learner_block_ms)
                if entries:
                    self._apply(entries)
                    self._publish()
                self._maybe_snapshot()
                if failing:
                    log.info("fraud learner: label stream reachable again")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("fraud learner: redis unavailable (%s); retrying", exc)
                failing = True
                self._stop.wait(0.5)
            except Exception:
                log.exception("fraud learner: unexpected error; retrying in 1s")
                self._stop.wait(1.0)

    def _rebuild(self, version: ModelVersion, artifact: Artifact) -> None:
        """Start from ``version``: its snapshot if one exists, then the stream tail."""
        started = time.perf_counter()
        key = self._snapshot_key(version)
        saved: Any = self._redis.hget(key, "blob")
        if saved is not None:
            self._model, self._monitor, self._offset, self._labels = pickle.loads(saved)
            source = "snapshot"
        else:
            self._model = clone(artifact.model)
            self._monitor, self._offset, self._labels = DriftMonitor(), "0-0", 0
            source = "registry"
        from_snapshot = self._labels
        self._monitor.on_drift = self._on_drift
        self._base, self._artifact = version, artifact
        self._snapshot_at = (self._labels, time.monotonic())
        replayed = 0
        while True:
            entries = self._stream.read(self._offset, _READ_COUNT, None)
            if not entries:
                break
            self._apply(entries)
            replayed += len(entries)
        self._publish()
        self.last_rebuild = {"source": source, "snapshot_labels": from_snapshot,
                             "replayed": replayed}
        set_model_info("fraud", version.name, f"v{version.version}")
        log.info("fraud learner: %s from the %s (%d labels) + %d replayed from the stream "
                 "in %.2fs", version.label, source, from_snapshot, replayed,
                 time.perf_counter() - started)

    def _apply(self, entries: list[LabelEntry]) -> None:
        learn = self._model.learn_one
        online = self._model.online
        monitor = self._monitor
        for e in entries:
            if online:
                learn(e.features, e.label.is_fraud)
            monitor.update(e.label.is_fraud, e.score, e.review_threshold, at=e.label.labelled_at)
            self._offset = e.offset
            self._labels += 1

    def _publish(self) -> None:
        assert self._base is not None and self._artifact is not None
        quality = self._monitor.snapshot()
        self._state = ServingState(
            version=self._base,
            predictor=self._model.predictor(),
            thresholds=self._thresholds(self._artifact.thresholds),
            online=bool(self._model.online),
            offset=self._offset,
            labels=self._labels,
            quality=quality,
        )
        metrics.MODEL_LABELS.set(self._labels)
        for name in ("precision", "recall", "roc_auc"):
            if quality[name] is not None:
                metrics.ONLINE_QUALITY.labels(name).set(quality[name])
        metrics.DRIFT_ACTIVE.set(1 if quality["drift"]["active"] else 0)

    def _thresholds(self, trained: Thresholds) -> Thresholds:
        c = self._config
        review = trained.review if c.review_threshold is None else c.review_threshold
        decline = trained.decline if c.decline_threshold is None else c.decline_threshold
        return Thresholds(review=review, decline=max(decline, review),
                          review_fpr=trained.review_fpr, decline_fpr=trained.decline_fpr)

    def _maybe_snapshot(self) -> None:
        last_labels, last_time = self._snapshot_at
        if self._labels == last_labels:
            return
        due = (self._labels - last_labels >= self._config.snapshot_every_labels
               or time.monotonic() - last_time >= self._config.snapshot_every_seconds)
        if due:
            self.snapshot()

    def snapshot(self) -> None:
        """Checkpoint model + monitor + offset (one HSET: never a blob without its offset)."""
        assert self._base is not None
        blob = pickle.dumps((self._model, self._monitor, self._offset, self._labels),
                            protocol=pickle.HIGHEST_PROTOCOL)
        self._redis.hset(self._snapshot_key(self._base), mapping={
            "blob": blob, "offset": self._offset, "labels": self._labels,
            "pid": os.getpid(), "at": time.time(),
        })
        self._snapshot_at = (self._labels, time.monotonic())
        metrics.SNAPSHOTS.inc()

    def _snapshot_key(self, version: ModelVersion) -> str:
        return f"{self._config.key_prefix}snapshot:{version.name}:v{version.version}"

    def _on_drift(self, stream: str, detail: dict[str, Any]) -> None:
        log.warning("fraud drift detected on the %s stream after %d labels (estimate %.4f)",
                    stream, detail["label_index"], detail["estimate"])
        metrics.DRIFT_DETECTIONS.labels(stream).set(self._monitor.detections)
        metrics.DRIFT_ACTIVE.set(1)


def _offset_key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)
