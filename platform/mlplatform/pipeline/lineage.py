"""Lineage and model cards: what a version was trained on, and what it is for.

Each input file and each lake partition a run read is recorded with its fingerprint
(``mlplatform.registry.fingerprint``: a content hash) and row count, so anyone can later
tell whether the data behind a version is still what it was, and the version's data
fingerprint is the fingerprint of those fingerprints. The model card is a short Markdown
page (intended use, data, metrics, known limits) stored next to the artifacts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.lake import Lake
from mlplatform.registry import ModelVersion, fingerprint

__all__ = ["file_lineage", "lineage_fingerprint", "production_cutoff", "read_lake",
           "render_model_card"]


def file_lineage(path: Path, rows: int) -> dict[str, Any]:
    """The lineage entry of one input file."""
    return {"kind": "file", "path": str(path), "fingerprint": fingerprint(path), "rows": rows}


def read_lake(lake: Lake, stream: str, columns: Sequence[str] | None = None,
              attempts: int = 3) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The archived entries of ``stream`` and the lineage of the partitions they came from.

    The archiver may add a part file while we read; the partition list is taken before
    and after the read and the read repeated until both agree, so the lineage lists
    exactly the files behind the rows.
    """
    for _ in range(attempts):
        before = lake.partitions(stream)
        frame = lake.read(stream, columns=columns)
        after = lake.partitions(stream)
        if [p.path for p in before] == [p.path for p in after]:
            break
    entries = [{"kind": "lake", "stream": stream, "date": p.date,
                "path": str(p.path.relative_to(lake.root)), "fingerprint": fingerprint(p.path),
                "rows": p.rows} for p in after]
    return frame, entries


def lineage_fingerprint(entries: Iterable[Mapping[str, Any]]) -> str:
    """One fingerprint over every input's fingerprint (the version's data fingerprint)."""
    return fingerprint(*(f"{e.get('path')}={e['fingerprint']}".encode()
                         for e in sorted(entries, key=lambda e: str(e.get("path")))))


def production_cutoff(version: ModelVersion) -> datetime | None:
    """The data cutoff a pipeline recorded in ``version``'s lineage (None if it has none)."""
    text = (version.metadata.get("lineage") or {}).get("data_cutoff")
    return datetime.fromisoformat(text) if text else None


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_model_card(*, title: str, intended_use: str, known_limits: str,
                      lineage: Mapping[str, Any], metrics: Mapping[str, Any],
                      production_metrics: Mapping[str, Any], production_label: str,
                      primary_metric: str, checks_passed: int) -> str:
    """The model card of a pipeline-trained version, as Markdown."""
    inputs = lineage.get("inputs", [])
    files = [e for e in inputs if e["kind"] == "file"]
    parts = [e for e in inputs if e["kind"] == "lake"]
    streams = sorted({e["stream"] for e in parts})
    held = lineage.get("held_out", {})
    lines = [
        f"# Model card: {title}", "",
        "## Intended use", "", intended_use.strip(), "",
        "## Data", "",
        f"- Trained on {lineage.get('train_rows', 'n/a')} rows up to "
        f"{lineage.get('data_cutoff') or 'n/a'} (pipeline run {lineage.get('run_id')}).",
    ]
    for e in files:
        lines.append(f"- File `{e['path']}`: {e['rows']} rows, fingerprint {e['fingerprint']}.")
    for stream in streams:
        mine = [e for e in parts if e["stream"] == stream]
        days = sorted({e["date"] for e in mine})
        lines.append(f"- Lake stream `{stream}`: {len(mine)} partitions "
                     f"({days[0]} .. {days[-1]}), {sum(e['rows'] for e in mine)} rows.")
    lines += [f"- Held out: {held.get('held_out_rows', 'n/a')} rows from "
              f"{held.get('held_out_from', 'n/a')} to {held.get('held_out_until', 'n/a')}, "
              f"newer than production's data cutoff {held.get('production_cutoff', 'n/a')}: "
              "data neither model trained on.",
              f"- {checks_passed} data-quality checks passed.", "",
              "## Metrics (held-out slice)", "",
              f"| metric | this version | {production_label} (production) |",
              "| --- | --- | --- |"]
    for key in sorted(set(metrics) | set(production_metrics)):
        mark = " (primary)" if key == primary_metric else ""
        lines.append(f"| {key}{mark} | {_fmt(metrics.get(key))} | "
                     f"{_fmt(production_metrics.get(key))} |")
    lines += ["", "## Known limits", "", known_limits.strip(), ""]
    return "\n".join(lines)
