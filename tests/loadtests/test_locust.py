"""A short headless Locust run of the mixed scenario against both real services: no failure.

``mlsuite loadtest`` starts the recommender and the fraud scorer on free ports (granian,
real Redis from the session fixture, small simulated data, Feast materialized, models
trained by the apps' ``ensure_model`` hooks), runs Locust in its own process for a few
seconds, and writes Locust's reports. Locust is never imported here: it monkey-patches
the process it runs in.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN_SECONDS = 15
# Every endpoint the scenario calls, as Locust names them.
ENDPOINTS = {
    "/v1/users/[user_id]/recommendations",
    "/v1/items/[item_id]/similar",
    "/v1/events",
    "/v1/recommendations/batch",
    "/v1/transactions/score",
    "/v1/transactions/score/batch",
    "/v1/labels",
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_mixed_scenario_runs_without_a_failure(tmp_path: Path, sim_data_dir: Path,
                                               redis_url: str) -> None:
    data_dir = tmp_path / "data"
    for part in ("shop", "payments"):  # a copy: models and Feast files are written next to it
        shutil.copytree(sim_data_dir / part, data_dir / part)
    out = tmp_path / "reports"
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data_dir), "MLSUITE_REDIS_URL": redis_url,
           "MLSUITE_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlplatform", "loadtest", "--scenario", "mixed",
         "--duration", f"{RUN_SECONDS}s", "--users", "12", "--spawn-rate", "12",
         "--workers", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    reports = out / "mixed"
    failures = _rows(reports / "locust_failures.csv") if (reports / "locust_failures.csv").exists() else []
    assert proc.returncode == 0, f"failures: {failures}\n{log}"
    assert failures == []
    assert _rows(reports / "locust_exceptions.csv") == [], log

    stats = {(r["Type"], r["Name"]): r for r in _rows(reports / "locust_stats.csv")}
    called = {key for key, r in stats.items() if key[1] != "Aggregated" and int(r["Request Count"])}
    # The jobs run every few seconds and labels come due after a few: all appear in 15 s.
    missing = ENDPOINTS - {name.split("?")[0] for _, name in called}
    assert not missing, f"never called: {missing}"
    total = stats[("", "Aggregated")]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0
    assert (reports / "report.html").stat().st_size > 1000
    # Everything the run started is gone: the services' Redis is the session's, untouched.
    assert not (data_dir / "run" / "loadtest").exists()
