"""The six steps, each a function from one typed result to the next.

``extract -> check -> train -> evaluate -> gate -> register``: each takes the run's
context and the previous step's result and returns its own, so each can be tested on
its own. A step whose input is missing or failed returns a *skipped* result naming why,
so every run reports all six steps and the gate always states the decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from mlplatform.errors import MLSuiteError, NotFound
from mlplatform.pipeline.checks import CheckResult, label_checks, row_checks, volume_checks
from mlplatform.pipeline.lineage import lineage_fingerprint, render_model_card
from mlplatform.pipeline.plugin import (
    Candidate,
    Comparison,
    RunContext,
    ServicePipeline,
    Source,
    Split,
)
from mlplatform.registry import ModelVersion

__all__ = ["Checked", "Evaluated", "Extracted", "Gated", "Registered", "StepResult", "Trained",
           "check", "evaluate", "extract", "gate", "register", "train"]

Status = Literal["ok", "failed", "skipped"]


@dataclass(kw_only=True)
class StepResult:
    """What one step did: its status, how long it took, why it failed or was skipped."""

    step: ClassVar[str] = ""
    status: Status = "ok"
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def details(self) -> dict[str, Any]:
        """The step's own figures for the report (subclasses add theirs)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "status": self.status,
                               "seconds": round(self.seconds, 3)}
        if self.reason:
            out["reason"] = self.reason
        return {**out, **self.details()}


@dataclass(kw_only=True)
class Extracted(StepResult):
    step: ClassVar[str] = "extract"
    sources: list[Source] = field(default_factory=list)

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return [entry for s in self.sources for entry in s.lineage]

    def details(self) -> dict[str, Any]:
        return {"sources": {s.name: len(s.frame) for s in self.sources},
                "inputs": len(self.lineage)}


@dataclass(kw_only=True)
class Checked(StepResult):
    step: ClassVar[str] = "check"
    extracted: Extracted
    checks: list[CheckResult] = field(default_factory=list)
    clean: dict[str, pd.DataFrame] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    label_rates: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def details(self) -> dict[str, Any]:
        return {"checks": [c.to_dict() for c in self.checks], "passed": len(self.checks) - len(
            self.failed), "failed": len(self.failed), "dropped_rows": self.dropped}


@dataclass(kw_only=True)
class Trained(StepResult):
    step: ClassVar[str] = "train"
    checked: Checked
    production: ModelVersion | None = None
    split: Split | None = None
    candidate: Candidate | None = None

    def details(self) -> dict[str, Any]:
        return {"production": self.production.label if self.production else None,
                **({"split": self.split.to_dict()} if self.split else {})}


@dataclass(kw_only=True)
class Evaluated(StepResult):
    step: ClassVar[str] = "evaluate"
    trained: Trained
    comparison: Comparison | None = None

    def details(self) -> dict[str, Any]:
        if self.comparison is None:
            return {}
        return {"held_out": self.comparison.held_out,
                "candidate": self.comparison.candidate,
                "production": self.comparison.production}


@dataclass(kw_only=True)
class Gated(StepResult):
    step: ClassVar[str] = "gate"
    evaluated: Evaluated
    metric: str = ""
    candidate_value: float | None = None
    production_value: float | None = None
    tolerance: float = 0.0

    def details(self) -> dict[str, Any]:
        return {"metric": self.metric, "candidate": self.candidate_value,
                "production": self.production_value, "tolerance": self.tolerance}


@dataclass(kw_only=True)
class Registered(StepResult):
    step: ClassVar[str] = "register"
    gated: Gated
    version: ModelVersion | None = None

    def details(self) -> dict[str, Any]:
        if self.version is None:
            return {}
        return {"version": self.version.label, "alias": "candidate",
                "path": str(self.version.path)}


def _timed(fn: Callable[[], StepResult]) -> Any:
    started = time.perf_counter()
    result = fn()
    result.seconds = time.perf_counter() - started
    return result


# -- the steps ---------------------------------------------------------------------------


def extract(ctx: RunContext, service: ServicePipeline) -> Extracted:
    """Read the service's inputs (original training data and lake) into typed tables."""
    def run() -> Extracted:
        try:
            sources = service.extract(ctx)
        except (OSError, ValueError, MLSuiteError) as exc:  # missing or unreadable input
            return Extracted(status="failed", reason=f"cannot read the inputs: {exc}")
        ctx.progress(f"extract: {', '.join(f'{s.name} {len(s.frame)} rows' for s in sources)}")
        return Extracted(sources=sources)

    return _timed(run)


def check(ctx: RunContext, extracted: Extracted, previous: dict[str, Any] | None) -> Checked:
    """Row checks (pandera) per source, volume and label rate against ``previous`` run."""
    def run() -> Checked:
        if not extracted.ok:
            return Checked(extracted=extracted, status="skipped", reason="nothing extracted")
        results: list[CheckResult] = []
        clean, dropped, rates = {}, {}, {}
        prev_rates = (previous or {}).get("label_rates", {})
        for source in extracted.sources:
            found, bad = row_checks(source.frame, source.rules, ctx.config, source=source.name,
                                    now=ctx.now)
            results += found
            clean[source.name] = source.frame.drop(index=list(bad))
            dropped[source.name] = len(bad)
            if source.label_column is not None and source.label_column in source.frame:
                labels = pd.to_numeric(source.frame[source.label_column], errors="coerce")
                found = label_checks(source.name, labels, prev_rates.get(source.name),
                                     ctx.config)
                results += found
                if labels.notna().any():
                    rates[source.name] = float(labels.dropna().mean())
        rows = {s.name: len(s.frame) for s in extracted.sources}
        results += volume_checks(rows, (previous or {}).get("rows"), ctx.config)
        failed = [c for c in results if not c.passed]
        ctx.progress(f"check: {len(results) - len(failed)}/{len(results)} checks passed"
                     + (f"; failed: {'; '.join(c.message for c in failed)}" if failed else ""))
        return Checked(extracted=extracted, checks=results, clean=clean, dropped=dropped,
                       label_rates=rates, status="failed" if failed else "ok",
                       reason="; ".join(c.message for c in failed))

    return _timed(run)


def train(ctx: RunContext, service: ServicePipeline, checked: Checked) -> Trained:
    """Cut a fair held-out slice against production's data cutoff, fit the candidate."""
    def run() -> Trained:
        if not checked.ok:
            return Trained(checked=checked, status="skipped", reason="data-quality checks "
                           "failed" if checked.status == "failed" else checked.reason)
        try:
            production = ctx.registry.resolve(service.model_name, "production")
        except NotFound:
            return Trained(checked=checked, status="skipped", reason=(
                f"no production version of {service.model_name} to compare a candidate with: "
                f"train and promote one first (mlsuite {service.name} train)"))
        same = _unchanged_candidate(ctx, service, checked, production)
        if same is not None:
            return Trained(checked=checked, production=production, status="skipped", reason=(
                f"nothing new: candidate {same.label} was trained on exactly these inputs "
                f"(data fingerprint {same.metadata.get('data_fingerprint')}) against "
                f"production {production.label}"))
        split = service.split(ctx, checked.clean, production)
        if split.reason:
            return Trained(checked=checked, production=production, split=split,
                           status="skipped", reason=split.reason)
        ctx.progress(f"train: {len(split.train)} rows up to {split.data_cutoff}; "
                     f"{len(split.held_out)} held out")
        try:
            candidate = service.train(ctx, split)
        except ValueError as exc:  # e.g. no positive label in the training rows
            return Trained(checked=checked, production=production, split=split,
                           status="failed", reason=f"training failed: {exc}")
        return Trained(checked=checked, production=production, split=split,
                       candidate=candidate)

    return _timed(run)


def _unchanged_candidate(ctx: RunContext, service: ServicePipeline, checked: Checked,
                         production: ModelVersion) -> ModelVersion | None:
    """The current candidate if it came from these very inputs against this production:
    a scheduled run with nothing new then refuses instead of registering a twin."""
    number = ctx.registry.aliases(service.model_name).get("candidate")
    if number is None:
        return None
    current = ctx.registry.get(service.model_name, number)
    lineage = current.metadata.get("lineage") or {}
    same_data = current.metadata.get("data_fingerprint") == lineage_fingerprint(
        checked.extracted.lineage)
    return current if same_data and lineage.get("production") == production.label else None


def evaluate(ctx: RunContext, service: ServicePipeline, trained: Trained) -> Evaluated:
    """Score the candidate and production on the same held-out slice."""
    def run() -> Evaluated:
        if trained.candidate is None or trained.split is None or trained.production is None:
            return Evaluated(trained=trained, status="skipped", reason="no candidate trained")
        comparison = service.evaluate(ctx, trained.split, trained.candidate, trained.production)
        metric = service.primary_metric
        ctx.progress(f"evaluate: {metric} candidate {comparison.candidate.get(metric)}, "
                     f"production {comparison.production.get(metric)}")
        return Evaluated(trained=trained, comparison=comparison)

    return _timed(run)


def gate(ctx: RunContext, service: ServicePipeline, evaluated: Evaluated) -> Gated:
    """Pass only when every check held and the candidate's primary metric is no worse than
    production's by more than the tolerance; the reason says which way and by how much."""
    def run() -> Gated:
        trained, checked = evaluated.trained, evaluated.trained.checked
        metric, tolerance = service.primary_metric, ctx.config.tolerance
        comparison = evaluated.comparison
        cand = comparison.candidate.get(metric) if comparison else None
        prod = comparison.production.get(metric) if comparison else None

        def decide(reason: str, passed: bool = False) -> Gated:
            return Gated(evaluated=evaluated, metric=metric, tolerance=tolerance,
                         candidate_value=cand, production_value=prod,
                         status="ok" if passed else "failed", reason=reason)

        if not checked.extracted.ok:
            return decide(checked.extracted.reason)
        if not checked.ok:
            return decide(f"data-quality checks failed: {checked.reason}")
        if comparison is None:
            return decide(trained.reason or evaluated.reason)
        if cand is None or prod is None:
            who = "the candidate" if cand is None else "production" + (
                f" ({trained.production.label})" if trained.production else "")
            return decide(f"{metric} of {who} is not measurable on the held-out slice "
                          f"{comparison.held_out}")
        if cand < prod - tolerance:
            return decide(f"{metric}: candidate {cand:.4f} < production {prod:.4f} - "
                          f"tolerance {tolerance:g}")
        return decide(f"{metric}: candidate {cand:.4f} >= production {prod:.4f} - tolerance "
                      f"{tolerance:g}", passed=True)

    return _timed(run)


def register(ctx: RunContext, service: ServicePipeline, gated: Gated) -> Registered:
    """Register a passed candidate under the ``candidate`` alias, with lineage and model
    card; never moves ``production``."""
    def run() -> Registered:
        if not gated.ok:
            return Registered(gated=gated, status="skipped", reason="the gate refused")
        evaluated = gated.evaluated
        trained = evaluated.trained
        checked = trained.checked
        assert trained.candidate and trained.split and trained.production and evaluated.comparison
        inputs = checked.extracted.lineage
        split = trained.split.to_dict()
        lineage = {"run_id": ctx.run_id, "inputs": inputs, "train_rows": len(trained.split.train),
                   "data_cutoff": split["data_cutoff"], "held_out": split,
                   "production": trained.production.label,
                   "production_metrics": evaluated.comparison.production,
                   "checks": [c.to_dict() for c in checked.checks]}
        card = render_model_card(
            title=service.model_name, intended_use=service.intended_use,
            known_limits=service.known_limits, lineage=lineage,
            metrics=evaluated.comparison.candidate,
            production_metrics=evaluated.comparison.production,
            production_label=trained.production.label, primary_metric=service.primary_metric,
            checks_passed=len(checked.checks))
        version = ctx.registry.register(
            service.model_name, writer=trained.candidate.writer,
            params={**trained.candidate.params, "pipeline_run": ctx.run_id},
            metrics=dict(evaluated.comparison.candidate),
            data_fingerprint=lineage_fingerprint(inputs), alias="candidate",
            lineage=lineage, model_card=card)
        ctx.progress(f"register: {version.label} -> candidate")
        return Registered(gated=gated, version=version)

    return _timed(run)
