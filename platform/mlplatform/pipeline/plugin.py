"""What an app hands the pipeline: the plug-in protocol and the values it passes around.

An app exposes one ``ServicePipeline`` per service through the ``mlsuite.pipelines``
entry-point group (``recommender = "recommender.pipeline:pipeline"``, a zero-argument
factory); the platform loads it by name and never imports the app. The app knows its data (``extract``), how to cut a
fair held-out slice (``split``, usually ``mlplatform.pipeline.holdout.time_holdout``), how
to train (``train``) and how to score both models on that slice (``evaluate``); the
platform runs the checks, the gate, registration, lineage and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from mlplatform.config import Settings
from mlplatform.lake import Lake
from mlplatform.pipeline.checks import ColumnRule
from mlplatform.pipeline.config import PipelineConfig
from mlplatform.registry import ModelRegistry, ModelVersion

__all__ = ["ENTRY_POINT_GROUP", "Candidate", "Comparison", "RunContext", "ServicePipeline",
           "Source", "Split", "load_service", "service_names"]

ENTRY_POINT_GROUP = "mlsuite.pipelines"


@dataclass(frozen=True)
class RunContext:
    """One run's settings, thresholds, stores and clock, handed to every step."""

    settings: Settings
    config: PipelineConfig
    registry: ModelRegistry
    lake: Lake
    run_id: str
    now: datetime
    progress: Callable[[str], None]


@dataclass
class Source:
    """One input table as the checks see it (typed, rows as extracted) and its lineage.

    ``frame`` keeps every row, bad ones included, so the checks can count them; the rows
    that fail a row check are dropped before ``split``. ``lineage`` lists the files (and
    lake partitions) read, with fingerprints and row counts.
    """

    name: str
    frame: pd.DataFrame
    rules: tuple[ColumnRule, ...]
    lineage: list[dict[str, Any]]
    label_column: str | None = None


@dataclass
class Split:
    """Training rows and the held-out slice neither model trained on.

    ``reason`` is set when no fair slice exists (nothing new since production's data
    cutoff, or too little of it): the gate then refuses with that reason.
    """

    train: pd.DataFrame
    held_out: pd.DataFrame
    production_cutoff: datetime | None
    data_cutoff: datetime | None  # newest training row: the candidate's own cutoff
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {"train_rows": len(self.train), "held_out_rows": len(self.held_out),
                "production_cutoff": iso(self.production_cutoff),
                "data_cutoff": iso(self.data_cutoff), **self.info,
                **({"reason": self.reason} if self.reason else {})}


@dataclass
class Candidate:
    """A trained model, how to store it (``writer`` fills a registry folder), its params."""

    model: Any
    writer: Callable[[Path], None]
    params: dict[str, Any]


@dataclass
class Comparison:
    """Both models' metrics on one held-out slice (None: not measurable there)."""

    candidate: dict[str, float | None]
    production: dict[str, float | None]
    held_out: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ServicePipeline(Protocol):
    """The service-specific half of a pipeline (see the module docstring)."""

    name: str  # the service, as typed on the command line
    model_name: str  # its registry name
    primary_metric: str  # key of Comparison.candidate the gate compares (higher is better)
    intended_use: str  # model card: what the model is for
    known_limits: str  # model card: where it should not be trusted

    def extract(self, ctx: RunContext) -> list[Source]:
        """Read the original training data and the lake into typed tables."""
        ...

    def split(self, ctx: RunContext, clean: Mapping[str, pd.DataFrame],
              production: ModelVersion) -> Split:
        """Cut the checked rows into training rows and a fair held-out slice."""
        ...

    def train(self, ctx: RunContext, split: Split) -> Candidate:
        """Fit the candidate on ``split.train``."""
        ...

    def evaluate(self, ctx: RunContext, split: Split, candidate: Candidate,
                 production: ModelVersion) -> Comparison:
        """Score the candidate and the production version on ``split.held_out``."""
        ...


def service_names() -> list[str]:
    """The services that registered a pipeline."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_service(name: str) -> ServicePipeline:
    """The pipeline plug-in of service ``name``; ValueError names the known services."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = ", ".join(service_names()) or "(none installed)"
        raise ValueError(f"unknown service {name!r}; expected one of {known}")
    plugin = found[0].load()()  # the entry point names a zero-argument factory
    if not isinstance(plugin, ServicePipeline):
        raise TypeError(f"entry point {found[0].value} is not a ServicePipeline")
    return plugin
