"""The run log: one JSON line per pipeline run, the baseline of the next run's checks.

``<data_dir>/pipeline/<service>/runs.jsonl`` holds each run's decision, row counts and
label rates per source. Volume and label-rate checks compare with the last run whose
checks passed, so one corrupted batch never becomes the yardstick for the next.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RunLog"]


class RunLog:
    """Append-only log of one service's pipeline runs."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "runs.jsonl"

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run, oldest first (a torn last line, from a crash, is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def last_passed(self) -> dict[str, Any] | None:
        """The newest run whose data-quality checks all passed."""
        return next((r for r in reversed(self.runs()) if r.get("checks_passed")), None)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
