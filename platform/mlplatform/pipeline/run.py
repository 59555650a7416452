"""``run_pipeline``: one run of a service's pipeline, and the report it returns.

The CLI (``mlsuite pipeline run``) and the worker's schedule call the same function. The
report is the list of step results plus the decision; it prints as text or JSON and
gives the exit status (0: a candidate was registered, 3: the gate refused).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlplatform.config import Settings
from mlplatform.lake import Lake
from mlplatform.pipeline import steps as run_steps
from mlplatform.pipeline.config import PipelineConfig
from mlplatform.pipeline.plugin import RunContext, load_service
from mlplatform.pipeline.runs import RunLog
from mlplatform.pipeline.steps import Checked, Evaluated, Gated, StepResult
from mlplatform.registry import ModelRegistry, ModelVersion

__all__ = ["EXIT_REFUSED", "EXIT_REGISTERED", "PipelineReport", "run_pipeline"]

log = logging.getLogger("mlplatform.pipeline")

EXIT_REGISTERED = 0
EXIT_REFUSED = 3


@dataclass
class PipelineReport:
    """One run: its step results in order, the decision and its reason."""

    service: str
    model_name: str
    run_id: str
    started_at: datetime
    seconds: float
    steps: list[StepResult]
    registered: ModelVersion | None

    @property
    def decision(self) -> str:
        return "registered" if self.registered is not None else "refused"

    @property
    def reason(self) -> str:
        gate = next((s for s in self.steps if isinstance(s, Gated)), None)
        return gate.reason if gate else ""

    @property
    def exit_code(self) -> int:
        return EXIT_REGISTERED if self.registered is not None else EXIT_REFUSED

    def step(self, name: str) -> StepResult:
        """The result of step ``name`` (extract, check, train, evaluate, gate, register)."""
        for s in self.steps:
            if s.step == name:
                return s
        raise KeyError(f"no step {name!r}; steps are {[s.step for s in self.steps]}")

    def summary(self) -> str:
        """One line: the decision and its reason."""
        what = f"{self.registered.label} -> candidate" if self.registered else "nothing registered"
        return f"{self.service}: {self.decision} ({what}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        check = self.step("check").to_dict()
        evaluate = self.step("evaluate").to_dict()
        return {
            "service": self.service, "model": self.model_name, "run_id": self.run_id,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3), "decision": self.decision, "reason": self.reason,
            "registered": self.registered.label if self.registered else None,
            "checks": check.get("checks", []),
            "metrics": {"candidate": evaluate.get("candidate"),
                        "production": evaluate.get("production")},
            "steps": [s.to_dict() for s in self.steps],
        }

    def format_text(self) -> str:
        """The report for people: steps, failed checks, both models' metrics, decision."""
        lines = [f"pipeline {self.service} (model {self.model_name}, run {self.run_id}, "
                 f"{self.seconds:.1f}s)"]
        for s in self.steps:
            d = s.to_dict()
            extra = s.reason
            if s.step == "extract" and s.ok:
                extra = ", ".join(f"{k}: {v} rows" for k, v in d["sources"].items())
            elif s.step == "check" and s.status != "skipped":
                extra = f"{d['passed']} passed, {d['failed']} failed"
            elif s.step == "train" and s.ok and "split" in d:
                sp = d["split"]
                extra = (f"{sp['train_rows']} rows up to {sp['data_cutoff']}; held out "
                         f"{sp['held_out_rows']} rows from {sp.get('held_out_from')}, newer "
                         f"than production {d['production']}'s cutoff {sp['production_cutoff']}")
            elif s.step == "evaluate" and s.ok:
                extra = ", ".join(f"{k}={v}" for k, v in d["held_out"].items())
            elif s.step == "register" and s.ok:
                extra = f"{d['version']} -> candidate ({d['path']})"
            lines.append(f"  {s.step:<9} {s.status:<8} {s.seconds:7.2f}s  {extra}")
        checks = self.step("check")
        if isinstance(checks, Checked) and checks.checks:
            lines.append("checks:")
            for c in checks.checks:
                lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.message}")
        ev = self.step("evaluate")
        if isinstance(ev, Evaluated) and ev.comparison is not None:
            comp = ev.comparison
            prod = ev.trained.production.label if ev.trained.production else "production"
            lines.append("metrics on the held-out slice:")
            lines.append(f"  {'metric':<28}{'candidate':>12}{prod:>22}")
            for key in sorted(set(comp.candidate) | set(comp.production)):
                lines.append(f"  {key:<28}{_cell(comp.candidate.get(key)):>12}"
                             f"{_cell(comp.production.get(key)):>22}")
        lines.append(f"decision: {self.decision}: {self.reason}")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_pipeline(settings: Settings, service: str, *, config: PipelineConfig | None = None,
                 progress: Callable[[str], None] | None = None) -> PipelineReport:
    """Run ``service``'s pipeline once: extract, check, train, evaluate, gate, register.

    ``config`` defaults to ``PipelineConfig.from_env()``; ``progress`` receives one line
    per step (default: log lines on stderr). Registers a version under the ``candidate``
    alias only when the gate passes; never moves ``production``. Raises ValueError for
    an unknown service.
    """
    plugin = load_service(service)
    config = config or PipelineConfig.from_env()
    started = time.perf_counter()
    now = datetime.now(UTC)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    say = progress or (lambda line: log.info("pipeline %s: %s", service, line))
    ctx = RunContext(settings=settings, config=config,
                     registry=ModelRegistry(settings.data_dir / "models"),
                     lake=Lake.from_settings(settings), run_id=run_id, now=now, progress=say)
    runs = RunLog(settings.data_dir / "pipeline" / service)

    extracted = run_steps.extract(ctx, plugin)
    checked = run_steps.check(ctx, extracted, runs.last_passed())
    trained = run_steps.train(ctx, plugin, checked)
    evaluated = run_steps.evaluate(ctx, plugin, trained)
    gated = run_steps.gate(ctx, plugin, evaluated)
    registered = run_steps.register(ctx, plugin, gated)

    report = PipelineReport(service=service, model_name=plugin.model_name, run_id=run_id,
                            started_at=now, seconds=time.perf_counter() - started,
                            steps=[extracted, checked, trained, evaluated, gated, registered],
                            registered=registered.version)
    runs.append({"run_id": run_id, "at": now.isoformat(timespec="seconds"),
                 "decision": report.decision, "reason": report.reason,
                 "registered": report.registered.label if report.registered else None,
                 "checks_passed": checked.ok,
                 "rows": {s.name: len(s.frame) for s in extracted.sources},
                 "label_rates": checked.label_rates})
    say(report.summary())
    return report
