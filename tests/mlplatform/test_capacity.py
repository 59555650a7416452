"""The capacity measurement on small simulated data: real services, workers, Redis, Feast."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlplatform.bench.capacity import CapacityOptions, Load, items_per_core, plan, run_capacity
from mlplatform.config import Settings

ENDPOINTS = ("recommender.recommendations", "recommender.batch", "recommender.similar",
             "recommender.events", "fraud.score", "fraud.batch")
# Similar items come from the model in memory: with keys off, it may not touch Redis.
READS_OR_WRITES_REDIS = tuple(e for e in ENDPOINTS if e != "recommender.similar")


@pytest.mark.slow
def test_capacity_measures_redis_work_and_memory(settings: Settings, sim_data_dir: Path) -> None:
    shutil.copytree(sim_data_dir, settings.data_dir)
    opts = CapacityOptions(requests=40, batches=3, batch_size=20, idle_seconds=1.0,
                           entity_sample=50, history_events=30, history_users=2)
    report = run_capacity(settings, opts, say=lambda _: None)
    json.dumps(report)  # the report is JSON as it stands

    assert set(report["requests"]) == set(ENDPOINTS)
    for name, figures in report["requests"].items():
        per = figures["per_request"]
        assert min(per["redis_ops"], per["bytes_in"], per["bytes_out"]) >= 0, figures
        if name in READS_OR_WRITES_REDIS:
            assert per["redis_ops"] > 0, f"{name}: no Redis work measured: {figures}"
            assert per["bytes_in"] > 0 and per["bytes_out"] > 0, f"{name}: {figures}"
    score = report["requests"]["fraud.score"]["per_request"]
    # Velocity state (one script call) and the decision log (a stream) at the least.
    assert score["redis_ops"] >= 2, score
    assert any(c.startswith(("eval", "evalsha")) for c in score["commands"]), score
    batch = report["requests"]["fraud.batch"]
    assert batch["items"] == 3 * 20
    # A batch shares round trips between its transactions: fewer operations per item.
    assert batch["per_item"]["redis_ops"] < score["redis_ops"], report["requests"]

    entities = report["memory"]["entities"]
    for name in ("user", "item", "card", "merchant"):
        assert entities[name]["with_state"] > 0 and entities[name]["bytes"] > 0, entities[name]
    capped = entities["user_at_history_cap"]
    assert capped["with_state"] == 2
    assert capped["bytes"] > entities["user"]["bytes"], entities
    assert any(g["type"] == "stream" and g["elements"] > 0 for g in report["memory"]["groups"])

    bench = {"machine": {"cpus": 2}, "endpoints": [
        {"name": "recommender.recommendations", "saturation": {"items_per_s": 1000.0}},
        {"name": "fraud.score", "saturation": {"items_per_s": 500.0}}]}
    per_item = {k: v["per_item"] for k, v in report["requests"].items()}
    result = plan(per_item, items_per_core(bench), Load(10_000, 1_000))
    assert result["cores"] == {"recommender.recommendations": 20.0, "fraud.score": 4.0}
    assert result["redis_ops_per_s"] > 0 and result["redis_shards"] >= 1


def test_capacity_module_runs_as_a_script() -> None:
    done = subprocess.run([sys.executable, "-m", "mlplatform.bench.capacity", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--bench-json" in done.stdout and "Redis operations" in done.stdout


def test_doctests() -> None:
    import doctest

    from mlplatform.bench import capacity

    result = doctest.testmod(capacity)
    assert result.attempted > 0 and result.failed == 0, result
