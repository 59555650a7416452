"""A/B experiment analysis: attribution counts in Redis, statistics, the report.

One module per method, each pure (counts and sums in, a dataclass out) and doctested,
as GrowthBook's gbstats does:

- ``lift``: relative lift with a 95% interval and p-value (Welch t, delta method);
- ``srm``: sample-ratio mismatch, chi-square against the configured weights;
- ``guardrails``: error rate and p99 latency of a variant against limits;

and around them:

- ``definition``: an experiment's analysis settings (control, attribution window, limits)
  from ``config/experiments.toml``;
- ``store``: the Redis layout services and workers write (touches, counters) and the
  report reads;
- ``report``: ``build_report`` -> ``ExperimentReport.to_json()``, the shape the CLI,
  the recommender's ``GET /v1/experiments/<name>`` and the console share;
- ``cli``: ``mlsuite experiments report|list|reset``.
"""

from __future__ import annotations

from mlplatform.experiments.definition import ExperimentDefinition, load_definitions
from mlplatform.experiments.guardrails import GuardrailResult, LatencyCounts, check_guardrails
from mlplatform.experiments.lift import (
    LiftResult,
    SampleStats,
    mean_stats,
    proportion,
    relative_lift,
)
from mlplatform.experiments.report import ExperimentReport, build_report, format_report
from mlplatform.experiments.srm import SRM_THRESHOLD, SRMResult, srm_test
from mlplatform.experiments.store import Aggregates, ExperimentStore, Touch, VariantCounts

__all__ = [
    "SRM_THRESHOLD",
    "Aggregates",
    "ExperimentDefinition",
    "ExperimentReport",
    "ExperimentStore",
    "GuardrailResult",
    "LatencyCounts",
    "LiftResult",
    "SRMResult",
    "SampleStats",
    "Touch",
    "VariantCounts",
    "build_report",
    "check_guardrails",
    "format_report",
    "load_definitions",
    "mean_stats",
    "proportion",
    "relative_lift",
    "report_for",
    "srm_test",
]


def report_for(store: ExperimentStore, definition: ExperimentDefinition) -> ExperimentReport:
    """The report of ``definition``'s experiment from the counts in ``store``."""
    return build_report(definition, store.read(definition.name))
