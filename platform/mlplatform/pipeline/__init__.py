"""The batch side of the model lifecycle: ETL, data-quality checks, training, a fair
comparison with production, a gate, and registration of a ``candidate`` with lineage.

``run_pipeline(settings, service)`` runs one service's pipeline (``mlsuite pipeline run``
and the worker's schedule both call it) and returns a ``PipelineReport``. The generic
machinery lives here; each app supplies its ETL, training and evaluation as a
``ServicePipeline`` through the ``mlsuite.pipelines`` entry points.

Public names: ``run_pipeline``, ``PipelineReport``, ``PipelineConfig``, ``ServicePipeline``
and the values it exchanges (``RunContext``, ``Source``, ``Split``, ``Candidate``,
``Comparison``), ``ColumnRule``, ``CheckResult``, ``time_holdout``, ``read_lake``,
``file_lineage``, ``production_cutoff``, ``service_names``.
"""

from __future__ import annotations

from mlplatform.pipeline.checks import CheckResult, ColumnRule
from mlplatform.pipeline.config import PipelineConfig
from mlplatform.pipeline.holdout import time_holdout
from mlplatform.pipeline.lineage import file_lineage, production_cutoff, read_lake
from mlplatform.pipeline.plugin import (
    Candidate,
    Comparison,
    RunContext,
    ServicePipeline,
    Source,
    Split,
    service_names,
)
from mlplatform.pipeline.run import PipelineReport, run_pipeline

__all__ = ["Candidate", "CheckResult", "ColumnRule", "Comparison", "PipelineConfig",
           "PipelineReport", "RunContext", "ServicePipeline", "Source", "Split",
           "file_lineage", "production_cutoff", "read_lake", "run_pipeline", "service_names",
           "time_holdout"]
