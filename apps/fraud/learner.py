"""The online learner: the one writer of the fraud model, run by ``mlsuite worker fraud``.

However many fraud workers run, one holds the learner's ``Lease`` (renewed every round,
well within its TTL) and learns; the others stand by and take over when the holder stops
renewing. The holder reads the label stream through the consumer group
``fraud-learner``, applies each label in stream order to the river model on the feature
vector logged at decision time, updates the drift monitor, and then, in the same MULTI
as the consumer's XACK, writes a signed checkpoint (model + monitor + offset). So an
entry is acknowledged exactly when a checkpoint containing it is durable:

- a worker killed mid-batch leaves its entries pending and the checkpoint before them;
  the next holder loads that checkpoint and replays, in stream order, everything the
  group has handed out since (the pending entries), then takes the pending entries over
  (XAUTOCLAIM) and acknowledges them; an entry at or before the checkpoint's offset is
  never applied twice;
- the MULTI watches the lease key: a holder that paused past its lease (a "zombie")
  cannot acknowledge or checkpoint anything, and a batch that does not follow the
  learner's offset (entries handed to someone else) resets it to its checkpoint;
- a label that cannot be decoded, or makes learning throw, goes to the dead letters
  with the reason and the offset moves on (never an endless retry, never a frozen model).

After each change the learner publishes the serving state as a plain-data snapshot
(``fraud.serving_state`` decodes it in request workers). When the registry alias moves,
it rebuilds from the new version (its checkpoint, else the label stream still held).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from fraud import metrics
from fraud.config import FraudConfig
from fraud.drift import DriftMonitor
from fraud.keys import LEARNER_GROUP, Keys
from fraud.labels import LabelEntry, decode_label
from fraud.models import Artifact, clone
from fraud.thresholds import Recalibrator, Thresholds
from mlplatform.config import Settings
from mlplatform.errors import Unavailable
from mlplatform.lease import Lease
from mlplatform.metrics import set_model_info
from mlplatform.redisdb import is_cluster
from mlplatform.registry import LiveModel, ModelRegistry, ModelVersion
from mlplatform.retention import id_before
from mlplatform.snapshots import (
    SignatureError,
    SnapshotStore,
    dumps_signed,
    loads_signed,
    pack_arrays,
    secret_key,
)
from mlplatform.streams import Consumer, Entry, consumer_name, ensure_group

__all__ = ["Learner", "LearnerState", "LearnerReset", "thresholds_of"]

log = logging.getLogger(__name__)
_REPLAY_CHUNK = 1000
# The checkpoint write of a learner on a cluster, fenced by its lease in the same script.
# KEYS: lease, checkpoint. ARGV: lease token, blob, offset, labels, at.
_FENCED_CHECKPOINT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('learner: lost the lease ' .. KEYS[1] .. '; checkpoint not written')
end
redis.call('HSET', KEYS[2], 'blob', ARGV[2], 'offset', ARGV[3], 'labels', ARGV[4], 'at', ARGV[5])
return 1
"""


class LearnerReset(redis.RedisError):
    """The learner's in-memory state may differ from its checkpoint: reload it.

    A Redis error on purpose: the platform consumer then acknowledges nothing and sends
    nothing to the dead letters (the entries are not at fault)."""


@dataclass
class LearnerState:
    """The model being learned: only the lease holder's learner thread touches it."""

    version: ModelVersion
    artifact: Artifact
    model: Any | None  # the online model (a clone); None for a batch base model
    monitor: DriftMonitor
    offset: str  # last label-stream entry handled (applied or dead-lettered)
    labels: int  # labels applied since the base version
    calibration: Recalibrator  # recent legitimate scores: keeps the realised FPR on target


def thresholds_of(trained: Thresholds, config: FraudConfig) -> Thresholds:
    """The thresholds served: the model's, unless the configuration fixes them."""
    review = trained.review if config.review_threshold is None else config.review_threshold
    decline = trained.decline if config.decline_threshold is None else config.decline_threshold
    return Thresholds(review=review, decline=max(decline, review),
                      review_fpr=trained.review_fpr, decline_fpr=trained.decline_fpr)


class Learner:
    """Holds the lease, applies labels, checkpoints with the ack, publishes snapshots."""

    def __init__(self, client: redis.Redis, settings: Settings, config: FraudConfig, *,
                 name: str | None = None, claim_idle_ms: int | None = None) -> None:
        self.client = client
        self.config = config
        self._cluster = is_cluster(client)
        self.keys = Keys(config.key_prefix, config.model_name, cluster=self._cluster)
        self.lease = Lease(client, self.keys.learner_lease,
                           ttl_seconds=config.learner_lease_seconds)
        self.live: LiveModel[Artifact] = ModelRegistry(settings.data_dir / "models").live(
            config.model_name, config.model_alias, lambda v: Artifact.load(v.path),
            poll_seconds=settings.model_poll_seconds)
        self.store = SnapshotStore(client, self.keys.model_snapshot)
        lease_ms = int(config.learner_lease_seconds * 1000)
        # Only the lease holder consumes, so an entry pending longer than a lease belongs
        # to a holder that is gone.
        self.consumer = Consumer(client, self.keys.labels, LEARNER_GROUP, self.handle,
                                 self.keys.dead_letters, name=name or consumer_name("learner"),
                                 block_ms=config.learner_block_ms,
                                 claim_idle_ms=lease_ms if claim_idle_ms is None else claim_idle_ms,
                                 claim_every_seconds=1.0)
        self.state: LearnerState | None = None
        self.applied = 0  # labels applied by this learner since it started (incl. replays)
        self.last_rebuild: dict[str, Any] = {}
        self._key = secret_key(settings)
        self._published: tuple[int, str] | None = None

    # -- the loop ------------------------------------------------------------------------

    def step(self) -> int:
        """One round: hold the lease (else stand by), rebuild if needed, apply what the
        label stream holds for us, publish a new state. Returns the entries handled."""
        was_held = self.lease.held
        if not self.lease.acquire():
            self.state = None
            return 0
        if not was_held:  # another holder may have moved the checkpoint on
            log.info("fraud learner: lease %s taken by %s", self.lease.key, self.consumer.name)
            self.state = None
        version, artifact = self.live.get()
        if self.state is None or self.state.version.version != version.version:
            self.rebuild(version, artifact)
        handled = self.consumer.poll(wait=True)
        self.publish()
        return handled

    def run(self, stop: Any) -> None:
        """``step`` until ``stop`` is set (the worker's loop); then hand the lease over."""
        problem = ""
        standby = min(1.0, max(0.05, self.config.learner_lease_seconds / 4))
        try:
            while not stop.is_set():
                try:
                    self.step()
                    problem = ""
                    if not self.lease.held:
                        stop.wait(standby)
                except Exception as exc:  # noqa: BLE001 - the learner must keep going
                    self.state = None  # whatever was not checkpointed is reloaded
                    if str(exc) != problem:
                        expected = isinstance(exc, redis.RedisError | Unavailable)
                        (log.warning if expected else log.exception)(
                            "fraud learner: %s; retrying", exc)
                    problem = str(exc)
                    stop.wait(0.5)
        finally:
            self.live.stop()
            try:
                self.lease.release()
            except redis.RedisError:
                pass

    # -- the consumer's handler ------------------------------------------------------------

    def handle(self, entries: list[Entry], tx: Any) -> dict[str, str]:
        """Apply ``entries`` after the offset, checkpoint into ``tx`` (the consumer adds
        the acks to it). Entries at or before the offset are only acknowledged."""
        state = self.state
        if state is None:
            raise LearnerReset("no model state loaded")
        try:
            # On a cluster the consumer's pipeline is a plain one (mlplatform.streams).
            plain = self._cluster
            self._fence(tx, plain)
            fresh = [e for e in entries if id_before(state.offset, e.id)]
            if not fresh:
                return {}
            self._check_follows(state.offset, fresh[0].id)
            rejected: dict[str, str] = {}
            for entry in fresh:
                try:
                    self._apply(state, decode_label(entry.id, entry.fields))
                except Exception as exc:  # noqa: BLE001 - the entry's reason as a dead letter
                    rejected[entry.id] = f"{type(exc).__name__}: {exc}"
                state.offset = entry.id
            self._checkpoint(state, tx, plain)
            return rejected
        except BaseException:
            # The model may hold effects that will not be committed: reload the checkpoint.
            self.state = None
            tx.reset()
            raise

    def _fence(self, tx: Any, plain: bool = False) -> None:
        """Watch the lease: the MULTI fails if another worker took it meanwhile.

        A ``plain`` pipeline (the consumer's, on a cluster) has no WATCH: the lease is
        checked now, and the checkpoint itself is written by a script that checks it again
        (``_FENCED_CHECKPOINT``, one slot with the lease and the stream)."""
        if plain:
            holder: Any = self.client.get(self.lease.key)
            if holder is None or holder.decode() != self.lease.token:
                self.lease.held = False
                raise LearnerReset(f"lost the learner lease {self.lease.key}")
            return
        tx.watch(self.lease.key)
        holder = tx.get(self.lease.key)
        if holder is None or holder.decode() != self.lease.token:
            self.lease.held = False
            raise LearnerReset(f"lost the learner lease {self.lease.key}")
        tx.multi()

    def _check_follows(self, offset: str, first: str) -> None:
        """The first new entry must be the one right after the offset: otherwise some were
        handed to another consumer (a holder that lost its lease) and must be replayed."""
        after: Any = self.client.xrange(self.keys.labels, f"({offset}", "+", count=1)
        expected = after[0][0].decode() if after else first
        if expected != first:
            raise LearnerReset(f"label {expected} after offset {offset} went to another "
                               f"consumer; rebuilding from the checkpoint")

    def _apply(self, state: LearnerState, entry: LabelEntry) -> None:
        if state.model is not None:
            if not entry.label.is_fraud:  # scored before learning it: a prequential sample
                state.calibration.update(state.model.predict_proba_one(entry.features))
            state.model.learn_one(entry.features, entry.label.is_fraud)
        state.monitor.update(entry.label.is_fraud, entry.score, entry.review_threshold,
                             at=entry.label.labelled_at)
        state.labels += 1
        self.applied += 1

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, state: LearnerState, tx: Any, plain: bool = False) -> None:
        """What labels changed (the online model's state, not the trees the registry
        holds) + monitor + offset as one signed pickle, in one HSET (never one without
        the other). Batch base models are not copied: the registry holds them."""
        online = None if state.model is None else state.model.online_state()
        blob = dumps_signed((online, state.monitor, state.offset, state.labels,
                             state.calibration), self._key)
        key = self.keys.checkpoint(state.version.version)
        at = f"{time.time():.3f}"
        if plain:  # no WATCH (``_fence``): the script checks the lease as it writes.
            # A holder that lost its lease writes nothing; its acks may still commit, and
            # that is safe: the next holder replays from its own checkpoint up to the
            # group's last delivered entry (``_replay``), acked or not.
            tx.execute_command("EVAL", _FENCED_CHECKPOINT, 2, self.lease.key, key,
                               self.lease.token, blob, state.offset, state.labels, at)
            return
        tx.hset(key, mapping={"blob": blob, "offset": state.offset, "labels": state.labels,
                              "at": at})

    def load_checkpoint(self, version: int
                        ) -> tuple[Any, DriftMonitor, str, int, Recalibrator] | None:
        """The checkpoint of base ``version``, or None; ``SignatureError`` if tampered."""
        blob: Any = self.client.hget(self.keys.checkpoint(version), "blob")
        return None if blob is None else loads_signed(blob, self._key)  # type: ignore[no-any-return]

    def rebuild(self, version: ModelVersion, artifact: Artifact) -> None:
        """Start from ``version``: its checkpoint if any (else the registry's model), then
        replay what the group has already handed out; checkpoint and publish."""
        started = time.perf_counter()
        source = "checkpoint"
        try:
            saved = self.load_checkpoint(version.version)
        except SignatureError as exc:
            log.error("fraud learner: refusing checkpoint %s (%s); rebuilding %s from the "
                      "registry and the label stream", self.keys.checkpoint(version.version),
                      exc, version.label)
            saved, source = None, "registry (checkpoint refused)"
        if saved is None:
            source = "registry" if source == "checkpoint" else source
            saved = (None, DriftMonitor(), "0-0", 0, Recalibrator())
        online_state, monitor, offset, labels, calibration = saved
        model = None
        if getattr(artifact.model, "online", False):
            model = clone(artifact.model) if online_state is None \
                else artifact.model.with_online_state(online_state)
        monitor.on_drift = lambda stream, detail: _on_drift(monitor, stream, detail)
        state = LearnerState(version, artifact, model, monitor, offset, labels, calibration)
        replayed = self._replay(state)
        tx = self.client.pipeline(transaction=True)
        try:
            self._fence(tx)
            self._checkpoint(state, tx)
            tx.execute()
        finally:
            tx.reset()  # hand the watching connection back to the pool
        self.state = state
        self.publish()
        set_model_info("fraud", version.name, f"v{version.version}")
        self.last_rebuild = {"source": source, "checkpoint_labels": labels, "replayed": replayed}
        log.info("fraud learner: %s from the %s (%d labels) + %d replayed in %.2fs",
                 version.label, source, labels, replayed, time.perf_counter() - started)

    def _replay(self, state: LearnerState) -> int:
        """Apply the entries after the offset up to the last one the group handed out
        (whoever took them: a crashed holder's pending entries come back here, in order)."""
        ensure_group(self.client, self.keys.labels, LEARNER_GROUP)
        groups: Any = self.client.xinfo_groups(self.keys.labels)
        until = next(_text(g["last-delivered-id"]) for g in groups
                     if _text(g["name"]) == LEARNER_GROUP)
        replayed = 0
        while id_before(state.offset, until):
            batch: Any = self.client.xrange(self.keys.labels, f"({state.offset}", until,
                                            count=_REPLAY_CHUNK)
            if not batch:
                break
            for raw_id, fields in batch:
                try:
                    self._apply(state, decode_label(_text(raw_id), fields))
                except Exception:  # noqa: BLE001, S110 - dead-lettered when first handled
                    pass
                state.offset = _text(raw_id)
                replayed += 1
            if not self.lease.acquire():  # a long replay keeps its lease
                raise LearnerReset("lost the learner lease during a replay")
        return replayed

    # -- publishing ------------------------------------------------------------------------

    def publish(self, force: bool = False) -> int | None:
        """Publish the serving state if it changed: the predictor's arrays (online base
        models) and the metadata; its snapshot sequence number, or None."""
        state = self.state
        if state is None:
            return None
        mark = (state.version.version, state.offset)
        if mark == self._published and not force:
            return None
        quality = state.monitor.snapshot()
        thresholds = thresholds_of(state.calibration.thresholds(state.artifact.thresholds),
                                   self.config)
        meta: dict[str, Any] = {
            "model": state.version.name, "base_version": state.version.version,
            "base": state.version.label, "offset": state.offset, "labels": state.labels,
            "online": state.model is not None, "thresholds": thresholds.to_dict(),
            "quality": quality, "at": round(time.time(), 3),
        }
        arrays: dict[str, np.ndarray] = {}
        if state.model is not None:
            arrays = state.model.layer_arrays()
        seq = self.store.publish(pack_arrays(arrays, meta), meta)
        self._published = mark
        metrics.SNAPSHOTS.inc()
        metrics.MODEL_LABELS.set(state.labels)
        for name in ("precision", "recall", "roc_auc"):
            if quality[name] is not None:
                metrics.ONLINE_QUALITY.labels(name).set(quality[name])
        metrics.DRIFT_ACTIVE.set(1 if quality["drift"]["active"] else 0)
        return seq


def _on_drift(monitor: DriftMonitor, stream: str, detail: dict[str, Any]) -> None:
    log.warning("fraud drift detected on the %s stream after %d labels (estimate %.4f)",
                stream, detail["label_index"], detail["estimate"])
    metrics.DRIFT_DETECTIONS.labels(stream).set(monitor.detections)
    metrics.DRIFT_ACTIVE.set(1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
