"""``mlsuite worker fraud``: every piece of the fraud service's background state upkeep.

``build(settings, worker)`` (entry point group "mlsuite.workers") adds:

- ``fraud-learner``: the online learner (``fraud.learner``), one writer per model among
  any number of workers (a lease); label stream -> model -> signed checkpoints and the
  plain-data snapshots request workers follow;
- ``feast-push``: queued card / merchant profile updates -> Feast, batched, and the
  profile overrides request workers' caches apply (``fraud.profile_push``);
- ``business-metrics``: labels -> loss prevented, loss and false declines per model version,
  and the label lag (``fraud.business``);
- retention of the decision, label, profile-update and dead-letter streams (archive to
  the lake, then trim; never what a consumer group has not finished).

Request workers (``fraud.app``) do none of this: they score and append.
"""

from __future__ import annotations

from dataclasses import dataclass

from fraud.business import business_consumer
from fraud.config import FraudConfig
from fraud.keys import Keys
from fraud.learner import Learner
from fraud.profile_push import ProfilePusher
from fraud.rollout import label_consumer
from mlplatform.config import Settings
from mlplatform.streams import partition_count
from mlplatform.worker import Worker

__all__ = ["build", "FraudJobs"]


@dataclass(frozen=True)
class FraudJobs:
    """The jobs ``build`` added (for tests and operators to inspect)."""

    worker: Worker
    learner: Learner
    pusher: ProfilePusher


def build(settings: Settings, worker: Worker, config: FraudConfig | None = None
          ) -> FraudJobs:
    """Add the fraud jobs to ``worker`` (``config``: the fraud settings, from the
    environment when not given)."""
    config = config or FraudConfig.from_env()
    learner = Learner(worker.client, settings, config)
    pusher = ProfilePusher(worker.client, settings, config)
    # Open Feast before the worker says it runs: importing it takes seconds of CPU,
    # which must not land on the request workers' first seconds of traffic.
    pusher.open()
    worker.loop("fraud-learner", learner.run)
    worker.loop("feast-push", pusher.run)
    # Labels -> precision and recall per model version: a rollout's business guards.
    worker.consume(label_consumer(worker.client, config))
    # Labels -> business outcomes per model version (metrics in the service's folder).
    worker.consume(business_consumer(worker.client, config))
    keys = Keys(config.key_prefix, config.model_name)
    # The decision stream is partitioned on a cluster (fraud.decisions); the others are
    # one stream each.
    worker.retain(keys.decisions, partitions=partition_count(worker.client))
    worker.retain(*(s for s in keys.streams if s != keys.decisions))
    return FraudJobs(worker, learner, pusher)
