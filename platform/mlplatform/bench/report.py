"""The bench report: one row per endpoint, ratios to the baseline, the issue's targets.

The JSON written by ``mlsuite bench --json`` is ``build_report``'s dict; ``format_table``
prints the same figures for people.

>>> rows = [{"name": "baseline.ping", "unit": "requests", "saturation": {"requests_per_s": 1000.0}},
...         {"name": "fraud.score", "unit": "requests", "saturation": {"requests_per_s": 400.0}}]
>>> add_ratios(rows)
>>> [r["ratio_to_baseline"] for r in rows]
[1.0, 0.4]
>>> rows.append({"name": "graphql.score", "unit": "requests",
...              "saturation": {"requests_per_s": 300.0}})
>>> add_ratios(rows)
>>> rows[-1]["ratio_to_baseline"], rows[-1]["ratio_to_rest"]
(0.3, 0.75)
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "TARGETS",
    "add_ratios",
    "build_report",
    "check_targets",
    "format_row",
    "format_table",
    "write_json",
]

# The targets on the 2-core reference machine (reported, never asserted in tests).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (endpoint, figure, comparison, value)
    ("recommender.recommendations", "ratio_to_baseline", ">=", 0.30),
    ("recommender.recommendations", "half_rate.p99_ms", "<=", 10.0),
    # The fraud scorer's issue (rules, lists, reviews, reason codes on every score) set
    # 0.25 where the first wave asked 0.30.
    ("fraud.score", "ratio_to_baseline", ">=", 0.25),
    ("fraud.score", "half_rate.p99_ms", "<=", 10.0),
    ("fraud.batch", "saturation.items_per_s", ">=", 10_000.0),
    ("recommender.batch", "saturation.items_per_s", ">=", 5_000.0),
)


# Above this, the generator's own lateness (CPU starved) is part of the half-rate latencies.
GENERATOR_LATE_MS = 2.0


# A GraphQL row's REST twin: the same work asked of the service directly. Its
# ``ratio_to_rest`` is what going through GraphQL leaves of the REST throughput.
REST_TWIN = {"graphql.recommendations": "recommender.recommendations",
             "graphql.score": "fraud.score"}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``ratio_to_baseline`` (its peak requests/s over the baseline's) and,
    for a GraphQL row whose REST twin was measured, ``ratio_to_rest``."""
    base = next((r for r in rows if r["name"] == "baseline.ping"), None)
    base_rps = base["saturation"]["requests_per_s"] if base else 0.0
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        rps = r["saturation"]["requests_per_s"]
        r["ratio_to_baseline"] = round(rps / base_rps, 3) if base_rps else None
        twin = by_name.get(REST_TWIN.get(r["name"], ""))
        if twin is not None and twin["saturation"]["requests_per_s"]:
            r["ratio_to_rest"] = round(rps / twin["saturation"]["requests_per_s"], 3)


def _figure(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the measured figure and whether it is met (None: not measured)."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for name, figure, op, value in TARGETS:
        got = _figure(by_name[name], figure) if name in by_name else None
        met = None if got is None else (got >= value if op == ">=" else got <= value)
        out.append({"endpoint": name, "figure": figure, "target": f"{op} {value:g}",
                    "measured": got, "met": met})
    errors = sum(r["saturation"].get("errors", 0) + (r.get("half_rate") or {}).get("errors", 0)
                 for r in rows)
    out.append({"endpoint": "*", "figure": "errors", "target": "== 0", "measured": errors,
                "met": errors == 0})
    return out


def build_report(rows: list[dict[str, Any]], *, settings: dict[str, Any],
                 loadavg_before: tuple[float, float, float] | None) -> dict[str, Any]:
    from mlplatform import __version__

    add_ratios(rows)
    cpus = os.cpu_count() or 1
    busy = loadavg_before is not None and loadavg_before[0] > 0.5 * cpus
    return {
        "mlsuite_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": cpus, "python": sys.version.split()[0],
            "platform": platform.platform(terse=True),
            "loadavg_before": list(loadavg_before) if loadavg_before else None,
            # Figures from a machine already busy are not comparable with a quiet one.
            "busy_before": busy,
        },
        "settings": settings,
        "endpoints": rows,
        "targets": check_targets(rows),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


_HEAD = (f"{'endpoint':<30} {'peak req/s':>10} {'items/s':>9} {'vs base':>7} "
         f"{'p50':>7} {'p99':>7} {'p99.9':>7} | {'rate':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} "
         f"{'errors':>6}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def format_row(row: dict[str, Any]) -> str:
    sat = row["saturation"]
    half = row.get("half_rate") or {}
    ratio = row.get("ratio_to_baseline")
    items = f"{sat['items_per_s']:.0f}" if row["items_per_request"] > 1 else "-"
    errors = sat.get("errors", 0) + half.get("errors", 0)
    return (f"{row['name']:<30} {sat['requests_per_s']:>10.0f} {items:>9} "
            f"{'-' if ratio is None else f'{ratio:.0%}':>7} "
            f"{_ms(sat.get('p50_ms')):>7} {_ms(sat.get('p99_ms')):>7} {_ms(sat.get('p999_ms')):>7} | "
            f"{half.get('target_rate', 0):>7.0f} {_ms(half.get('p50_ms')):>7} "
            f"{_ms(half.get('p99_ms')):>7} {_ms(half.get('p999_ms')):>7} {errors:>6}")


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table (latencies in ms; left: saturation, right: half its peak)."""
    s = report["settings"]
    lines = [
        (f"mlsuite bench: {s['server']} with {s['workers']} workers "
         f"x {s.get('threads', 1)} threads per service, "
         f"{s['duration_s']:g}s per measurement, {s['connections']} connections at saturation, "
         f"{report['machine']['cpus']} CPUs"),
        f"{'':<30} {'saturation (closed loop)':^52} | {'half of peak (open loop)':^36}",
        _HEAD,
        "-" * len(_HEAD),
    ]
    lines += [format_row(r) for r in report["endpoints"]]
    lines.append("")
    cpu_rows = [r for r in report["endpoints"] if (r.get("saturation") or {}).get("cpu")]
    if cpu_rows:
        from mlplatform.bench.cpu import format_cpu

        lines.append("  CPU at saturation, per request or item (where the machine went):")
        lines += [f"    {format_cpu(r['name'], r['saturation']['cpu'])}" for r in cpu_rows]
    for r in report["endpoints"]:
        if r.get("ratio_to_rest") is not None:
            lines.append(f"  {r['name']}: {r['ratio_to_rest']:.0%} of "
                         f"{REST_TWIN[r['name']]}'s peak throughput (GraphQL's overhead)")
    for t in report["targets"]:
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        got = t["measured"]
        got_text = "-" if got is None else f"{got:.3g}" if isinstance(got, float) else str(got)
        lines.append(f"  target {t['endpoint']} {t['figure']} {t['target']}: {got_text} ({mark})")
    behind = [f"{r['name']} ({r['half_rate']['generator_late_p99_ms']:.1f} ms)"
              for r in report["endpoints"] if r.get("half_rate")
              and r["half_rate"].get("generator_late_p99_ms", 0) > GENERATOR_LATE_MS]
    if behind:
        lines.append("  warning: the load generator itself ran late (p99) at half rate on "
                     + ", ".join(behind) + ": those latencies include CPU contention")
    if report["machine"]["busy_before"]:
        lines.append(f"  warning: load average {report['machine']['loadavg_before'][0]:.1f} before "
                     "the run: other work shared the CPUs, figures are low and noisy")
    return "\n".join(lines)
