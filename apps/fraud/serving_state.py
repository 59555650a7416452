"""What request workers score with: the registry's base version plus the worker's snapshot.

Request workers never learn. They hold two things, both swapped in by background
threads and read by requests without locks or Redis calls:

- the base version the registry alias points at (``LiveModel``, loaded by ``create_app``
  before the server accepts traffic, reloaded when the alias moves);
- the fraud worker's latest model snapshot (a ``Follower`` polling its sequence number
  every ``follow_seconds``): the online predictor's arrays, the label offset it
  reflects, the labels learned and the live quality / drift state.

``ModelView.state()`` combines them into one immutable ``ServingState``: the snapshot's
predictor when its base version is the one the registry serves, else the base version's
own predictor (just promoted: the worker has not rebuilt on it yet). A batch base model
gets metadata only; its predictor is always the registry's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from fraud.config import FraudConfig
from fraud.drift import DriftMonitor
from fraud.keys import Keys
from fraud.labels import LabelStream
from fraud.learner import thresholds_of
from fraud.models import Artifact
from fraud.predictors import Predictor
from fraud.thresholds import Thresholds
from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.metrics import set_model_info
from mlplatform.registry import LiveModel, ModelRegistry, ModelVersion
from mlplatform.retention import id_before
from mlplatform.snapshots import Follower, Snapshot, SnapshotStore, unpack_arrays

__all__ = ["ServingState", "OnlineSnapshot", "ModelView", "decode_snapshot"]

log = logging.getLogger(__name__)
_NO_LABELS = DriftMonitor().snapshot()


@dataclass(frozen=True)
class ServingState:
    """What requests score with: swapped as one reference, never mutated."""

    version: ModelVersion
    predictor: Predictor
    thresholds: Thresholds
    online: bool
    offset: str  # last label-stream entry the worker had handled
    labels: int  # labels learned since the base version
    quality: dict[str, Any]  # DriftMonitor.snapshot()

    @property
    def label(self) -> str:
        return self.version.label


@dataclass(frozen=True)
class OnlineSnapshot:
    """One decoded worker snapshot: its base version, the online layer's arrays, meta."""

    base_version: int
    arrays: dict[str, Any]
    meta: dict[str, Any]


def decode_snapshot(snapshot: Snapshot) -> OnlineSnapshot:
    """The plain-data body the learner publishes (never unpickled)."""
    arrays, meta = unpack_arrays(snapshot.body)
    return OnlineSnapshot(int(meta["base_version"]), dict(arrays), meta)


class ModelView:
    """The served model of one request worker: base version + followed snapshot."""

    def __init__(self, settings: Settings, config: FraudConfig, client: redis.Redis,
                 labels: LabelStream) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix, config.model_name)
        self.live: LiveModel[Artifact] = ModelRegistry(settings.data_dir / "models").live(
            config.model_name, config.model_alias, lambda v: Artifact.load(v.path),
            poll_seconds=settings.model_poll_seconds)
        self.follower: Follower[OnlineSnapshot] = Follower(
            SnapshotStore(client, self.keys.model_snapshot), decode_snapshot,
            poll_seconds=config.follow_seconds, name="fraud-model")
        self._labels = labels
        self._cached: tuple[Any, Any, ServingState] | None = None

    def load(self) -> ServingState:
        """Load the base version and the current snapshot now (before serving); the
        background threads follow both from here. ``Unavailable`` if there is no model."""
        self.follower.start()
        return self.state()

    def state(self) -> ServingState:
        """The current state (no Redis call: two attribute reads and a comparison)."""
        base = self.live.get()
        online = self.follower.get()
        cached = self._cached
        if cached is not None and cached[0] is base and cached[1] is online:
            return cached[2]
        state = self._combine(base, online)
        if cached is None or cached[2].version.version != state.version.version:
            set_model_info("fraud", state.version.name, f"v{state.version.version}")
        self._cached = (base, online, state)
        return state

    def _combine(self, base: tuple[ModelVersion, Artifact], online: OnlineSnapshot | None
                 ) -> ServingState:
        version, artifact = base
        thresholds = thresholds_of(artifact.thresholds, self.config)
        is_online = bool(getattr(artifact.model, "online", False))
        if online is None or online.base_version != version.version:
            return ServingState(version, artifact.model.predictor(), thresholds, is_online,
                                "0-0", 0, _NO_LABELS)
        meta = online.meta
        predictor: Predictor = artifact.model.predictor(online.arrays) \
            if is_online and online.arrays else artifact.model.predictor()
        if "thresholds" in meta:  # recalibrated by the learner on recent legitimate scores
            thresholds = thresholds_of(Thresholds.from_dict(meta["thresholds"]), self.config)
        return ServingState(version, predictor, thresholds, is_online, str(meta["offset"]),
                            int(meta["labels"]), meta["quality"])

    def sync(self, timeout: float = 5.0) -> ServingState:
        """Wait until the served state reflects every label appended so far."""
        target = self._labels.last_offset()
        deadline = time.monotonic() + timeout
        while True:
            self.follower.refresh()
            state = self.state()
            if not id_before(state.offset, target):
                return state
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"model {state.label} has learned labels up to {state.offset}, the label "
                    f"stream is at {target}: is the fraud worker (`mlsuite worker fraud`) "
                    "running?", dependency="model")
            time.sleep(0.01)

    def stop(self) -> None:
        self.live.stop()
        self.follower.stop()
