"""The experiment report: per variant counts, lift against the control, SRM, guardrails.

``build_report`` is pure (a definition and the counts in, a dataclass out);
``ExperimentReport.to_json`` is the shape other tools read (``mlsuite experiments report
--json``, ``GET /v1/experiments/<name>``, the console)::

    {"experiment": NAME, "control": VARIANT,
     "variants": {VARIANT: {"users", "exposures", "conversions", "conversion_rate",
                            "revenue_per_user", "lift", "lift_ci95": [low, high],
                            "p_value", ...}},
     "srm": {"p_value", "mismatch", ...}, ...}

``conversions`` are units with at least one attributed cart or purchase and ``lift``
is the relative lift of the conversion rate; ``revenue_lift`` (and its interval and
p-value) that of revenue per user. The control's lifts are null. Keys may be added,
never renamed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlplatform.experiments.definition import ExperimentDefinition
from mlplatform.experiments.guardrails import GuardrailResult, LatencyCounts, check_guardrails
from mlplatform.experiments.lift import LiftResult, mean_stats, proportion, relative_lift
from mlplatform.experiments.srm import SRMResult, srm_test
from mlplatform.experiments.store import Aggregates, VariantCounts

__all__ = ["ExperimentReport", "VariantReport", "build_report", "format_report"]


@dataclass(frozen=True)
class VariantReport:
    """One variant's line of the report."""

    name: str
    weight: float
    counts: VariantCounts
    conversion: LiftResult | None  # None for the control
    revenue: LiftResult | None
    guardrails: GuardrailResult

    @property
    def conversion_rate(self) -> float:
        c = self.counts
        return c.converted / c.users if c.users else 0.0

    @property
    def revenue_per_user(self) -> float:
        c = self.counts
        return c.revenue / c.users if c.users else 0.0


@dataclass(frozen=True)
class ExperimentReport:
    """The whole report of one experiment."""

    definition: ExperimentDefinition
    variants: dict[str, VariantReport]
    srm: SRMResult
    generated_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        d = self.definition
        return {
            "experiment": d.name,
            "control": d.control,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.generated_at)),
            "attribution_window_seconds": d.window_seconds,
            "metric": "conversion: units with an attributed add_to_cart or purchase",
            "variants": {name: _variant_json(v) for name, v in self.variants.items()},
            "srm": {"p_value": _sig(self.srm.p_value), "mismatch": self.srm.mismatch,
                    "chi2": _num(self.srm.chi2), "dof": self.srm.dof,
                    "threshold": self.srm.threshold,
                    "expected_users": {k: round(v, 2) for k, v in self.srm.expected.items()}},
            "guardrails": {"max_error_rate": d.max_error_rate, "max_p99_ms": d.max_p99_ms,
                           "ok": all(v.guardrails.ok for v in self.variants.values())},
        }


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def _sig(x: float | None) -> float | None:
    """Four significant digits: a p-value of 3e-12 stays 3e-12, not 0."""
    return None if x is None else float(f"{x:.4g}")


def _p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.4f}" if p >= 1e-4 else f"{p:.0e}"


def _lift_json(prefix: str, r: LiftResult | None) -> dict[str, Any]:
    if r is None:
        return {f"{prefix}lift": None, f"{prefix}lift_ci95": None, f"{prefix}p_value": None}
    ci = None if r.ci95 is None else [_num(r.ci95[0]), _num(r.ci95[1])]
    out: dict[str, Any] = {f"{prefix}lift": _num(r.lift), f"{prefix}lift_ci95": ci,
                           f"{prefix}p_value": _sig(r.p_value)}
    if r.error:
        out[f"{prefix}lift_error"] = r.error
    return out


def _variant_json(v: VariantReport) -> dict[str, Any]:
    c, g = v.counts, v.guardrails
    return {
        "weight": v.weight,
        "users": c.users,
        "exposures": c.exposures,
        "conversions": c.converted,
        "conversion_rate": _num(v.conversion_rate),
        "conversion_events": c.conversion_events,
        "purchases": c.purchases,
        "revenue": _num(c.revenue, 2),
        "revenue_per_user": _num(v.revenue_per_user),
        **_lift_json("", v.conversion),
        **_lift_json("revenue_", v.revenue),
        "guardrails": {"ok": g.ok, "requests": g.requests, "errors": g.errors,
                       "error_rate": g.error_rate, "latency_mean_ms": g.latency_mean_ms,
                       "latency_p99_ms": g.latency_p99_ms, "reasons": g.reasons},
        "versions": {ver: {k: (int(x) if float(x).is_integer() else round(x, 2))
                           for k, x in m.items()} for ver, m in sorted(c.versions.items())},
    }


def build_report(definition: ExperimentDefinition, aggregates: Aggregates,
                 now: float | None = None) -> ExperimentReport:
    """The report of ``aggregates`` under ``definition`` (its weights, control, limits).

    >>> from mlplatform.assignment import Experiment
    >>> from mlplatform.experiments.store import VariantCounts as C
    >>> d = ExperimentDefinition.of(Experiment("e", "s", {"als": 1, "popularity": 1}))
    >>> r = build_report(d, Aggregates("e", {"als": C(users=1000, converted=300),
    ...                                      "popularity": C(users=1000, converted=200)}))
    >>> j = r.to_json()
    >>> j["variants"]["als"]["lift"], j["variants"]["popularity"]["lift"], j["srm"]["mismatch"]
    (0.5, None, False)
    """
    weights = definition.weights
    names = list(weights) + sorted(set(aggregates.variants) - set(weights))
    counts = {v: aggregates.variants.get(v, VariantCounts()) for v in names}
    control = counts[definition.control]
    ctrl_conv = proportion(control.users, control.converted)
    ctrl_rev = mean_stats(control.users, control.revenue, control.revenue_sq)
    variants = {}
    for name, c in counts.items():
        is_control = name == definition.control
        latency = LatencyCounts(c.exposures + c.errors, c.errors, c.latency_ms_sum,
                                c.latency_buckets)
        variants[name] = VariantReport(
            name, float(weights.get(name, 0.0)), c,
            None if is_control else relative_lift(ctrl_conv, proportion(c.users, c.converted)),
            None if is_control else relative_lift(
                ctrl_rev, mean_stats(c.users, c.revenue, c.revenue_sq)),
            check_guardrails(latency, max_error_rate=definition.max_error_rate,
                             max_p99_ms=definition.max_p99_ms))
    srm = srm_test({v: c.users for v, c in counts.items()}, weights)
    return ExperimentReport(definition, variants, srm,
                            time.time() if now is None else now)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def format_report(report: dict[str, Any]) -> str:
    """The human table of a report's JSON (``ExperimentReport.to_json``)."""
    lines = [f"experiment {report['experiment']} (control: {report['control']}, "
             f"attribution window {report['attribution_window_seconds']:g}s)",
             f"{'variant':<14}{'users':>8}{'expos.':>9}{'conv.':>7}{'rate':>8}{'rev/user':>10}"
             f"{'lift':>9}  {'95% CI':<19}{'p':>8}  guardrails"]
    for name, v in report["variants"].items():
        ci = v["lift_ci95"]
        ci_text = "-" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"
        p = _p_text(v["p_value"])
        g = v["guardrails"]
        guard = "ok" if g["ok"] else "FAIL: " + "; ".join(g["reasons"])
        lines.append(f"{name:<14}{v['users']:>8}{v['exposures']:>9}{v['conversions']:>7}"
                     f"{v['conversion_rate'] * 100:>7.2f}%{v['revenue_per_user']:>10.2f}"
                     f"{_pct(v['lift']):>9}  {ci_text:<19}{p:>8}  {guard}")
        if v.get("revenue_lift") is not None:
            rci = v["revenue_lift_ci95"]
            lines.append(f"{'':<14}revenue per user {_pct(v['revenue_lift'])} "
                         f"[{_pct(rci[0])}, {_pct(rci[1])}] p={_p_text(v['revenue_p_value'])}")
    srm = report["srm"]
    lines.append(f"sample ratio: chi2={srm['chi2']:.3f}, p={_p_text(srm['p_value'])} -> "
                 + ("MISMATCH (p < 0.001): check assignment and logging before reading lifts"
                    if srm["mismatch"] else "ok"))
    return "\n".join(lines)
