"""Redis keys and stream names of the fraud service, derived from one prefix.

Request workers and the fraud worker must agree on every name; they all come from here.

>>> k = Keys("fraud:", "fraud-online")
>>> k.labels, k.dead_letters, k.model_snapshot
('fraud:labels', 'fraud:dead-letters', 'fraud:model:fraud-online')
>>> k.checkpoint(3)
'fraud:checkpoint:fraud-online:v3'
>>> Keys("fraud:", "fraud-online", cluster=True).checkpoint(3)
'{fraud:labels}:checkpoint:fraud-online:v3'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "LEARNER_GROUP", "FEAST_PUSH_GROUP"]

# Consumer groups of the fraud worker (one per job, on one stream each).
LEARNER_GROUP = "fraud-learner"
FEAST_PUSH_GROUP = "feast-push"


@dataclass(frozen=True)
class Keys:
    """Every key of one fraud deployment (``prefix``) and its served model (``model``)."""

    prefix: str
    model: str
    # On a Redis Cluster the learner's lease and checkpoints share the label stream's slot
    # (a key tagged ``{<prefix>labels}`` hashes like the stream itself), so its fenced
    # checkpoint and the label acks stay one MULTI; the stream keeps its name.
    cluster: bool = False

    def _learner_tag(self) -> str:
        return f"{{{self.labels}}}:" if self.cluster else self.prefix

    @property
    def decisions(self) -> str:
        return f"{self.prefix}decisions"

    @property
    def labels(self) -> str:
        return f"{self.prefix}labels"

    @property
    def profile_updates(self) -> str:
        return f"{self.prefix}profile-updates"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def model_snapshot(self) -> str:
        """The serving state of the model (plain data, followed by request workers)."""
        return f"{self.prefix}model:{self.model}"

    @property
    def learner_lease(self) -> str:
        return f"{self._learner_tag()}learner-lease:{self.model}"

    @property
    def profile_overrides(self) -> str:
        """Recent profile changes, followed by request workers' profile caches."""
        return f"{self.prefix}profile-overrides"

    def checkpoint(self, version: int) -> str:
        """The learner's signed checkpoint of the model built on registry ``version``."""
        return f"{self._learner_tag()}checkpoint:{self.model}:v{version}"

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams the worker keeps bounded (archive to the lake, then trim)."""
        return (self.decisions, self.labels, self.profile_updates, self.dead_letters)
