"""Progressive delivery: canary, blue-green and shadow rollouts with automatic rollback.

- ``machine``: the states, the transition table and the pure ``step`` (Flagger's canary
  analysis: check every guard at each interval with enough samples; advance, promote at
  100%, roll back after ``failures`` failed checks);
- ``store``: the rollout documents in Redis, and the registry alias moves a transition makes;
- ``measure``: per-model-version requests, errors, latency and business guards, counted
  in-process and flushed to Redis for the controller;
- ``controller``: the loop in a service's worker (one holder per rollout, by lease);
- ``routing``: the request side: follow the document, keep the candidate loaded, route
  units (canary share, segment, blue-green switch), mirror requests to a shadow;
- ``cli``: ``mlsuite rollout start|status|promote|abort``.

Public names: ``Rollout``, ``Spec``, ``Guard``, ``Measurements``, ``step``, ``start``,
``RolloutStore``, ``RolloutController``, ``RolloutRouter``, ``MetricsRecorder``,
``read_measurements``, ``STATES``, ``STRATEGIES``, ``TRANSITIONS``.
"""

from __future__ import annotations

from mlplatform.rollouts.controller import RolloutController
from mlplatform.rollouts.machine import (
    STATES,
    STRATEGIES,
    TRANSITIONS,
    Guard,
    Measurements,
    Rollout,
    Spec,
    start,
    step,
)
from mlplatform.rollouts.measure import MetricsRecorder, read_measurements
from mlplatform.rollouts.routing import RolloutRouter
from mlplatform.rollouts.store import RolloutStore

__all__ = [
    "STATES",
    "STRATEGIES",
    "TRANSITIONS",
    "Guard",
    "Measurements",
    "Rollout",
    "Spec",
    "start",
    "step",
    "MetricsRecorder",
    "read_measurements",
    "RolloutController",
    "RolloutRouter",
    "RolloutStore",
]
