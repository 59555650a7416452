"""``mlsuite pipeline run recommender`` end to end: the small simulated shop, its newest
fifth archived in a real lake as the service's events, production trained on the rest in a
real registry; the CLI is run through click's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from mlplatform.cli import cli
from mlplatform.config import Settings
from mlplatform.lake import Lake
from mlplatform.registry import ModelRegistry
from recommender.pipeline import EVENTS_STREAM

NEW_FRACTION = 0.2


def event_entries(rows: pd.DataFrame, first_seq: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Interactions as the service appends them to the event stream (id = append time)."""
    out = []
    for seq, row in enumerate(rows.itertuples(index=False), start=first_seq):
        seconds = row.timestamp.timestamp()
        out.append((f"{int(seconds * 1000)}-{seq}", {
            "user_id": row.user_id, "item_id": row.item_id, "event_type": row.event_type,
            "ts": "%.3f" % seconds, "request_id": f"req-{seq}"}))
    return out


@pytest.fixture(scope="session")
def pipeline_template(tmp_path_factory: pytest.TempPathFactory, shop_dir: Path) -> Path:
    """A data folder: the older 80% of the shop as the file, production trained on it,
    the newest 20% in the lake as archived events."""
    from recommender.cli import train_and_register

    data_dir = tmp_path_factory.mktemp("recommender-pipeline")
    shutil.copytree(shop_dir, data_dir / "shop")
    path = data_dir / "shop" / "interactions.parquet"
    df = pd.read_parquet(path).sort_values("timestamp", kind="stable")
    n = int(len(df) * (1 - NEW_FRACTION))
    df.iloc[:n].to_parquet(path, index=False)
    Lake(data_dir / "lake").write(EVENTS_STREAM, event_entries(df.iloc[n:]))
    train_and_register(Settings.from_env({}).with_(data_dir=data_dir), alias="production",
                       progress=False)
    return data_dir


@pytest.fixture
def data_dir(pipeline_data_dir: Path) -> Path:
    """A private copy of this module's ``pipeline_template`` (tests/conftest.py)."""
    return pipeline_data_dir


def run(*args: str) -> tuple[Result, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["pipeline", "run", "recommender", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, json.loads(result.stdout)


def test_registers_a_candidate_on_new_plausible_events(data_dir: Path) -> None:
    registry = ModelRegistry(data_dir / "models")
    result, report = run("--tolerance", "0.05")  # tiny data: ndcg is noisy
    assert result.exit_code == 0, report["reason"]
    assert report["decision"] == "registered" and report["registered"] == "recommender:v2"
    assert [s["step"] for s in report["steps"]] == ["extract", "check", "train", "evaluate",
                                                     "gate", "register"]
    assert all(s["status"] == "ok" for s in report["steps"])
    assert all(c["passed"] for c in report["checks"])
    cand, prod = report["metrics"]["candidate"], report["metrics"]["production"]
    assert 0 < prod["ndcg@10"] < 1 and cand["ndcg@10"] >= prod["ndcg@10"] - 0.05
    assert registry.aliases("recommender") == {"production": 1, "candidate": 2}

    lineage = registry.get("recommender", 2).metadata["lineage"]
    kinds = {e["kind"] for e in lineage["inputs"]}
    assert kinds == {"file", "lake"} and all(e["fingerprint"] and e["rows"] > 0
                                             for e in lineage["inputs"])
    split = report["steps"][2]["split"]
    # Fair: the held-out slice starts after production's cutoff and after every training row.
    assert split["held_out_from"] > split["production_cutoff"]
    assert lineage["data_cutoff"] < split["held_out_from"]

    shown = CliRunner().invoke(cli, ["models", "show", "recommender", "candidate"])
    assert shown.exit_code == 0
    assert "lineage: run " in shown.output and "mlsuite.rec.events/date=" in shown.output
    assert "# Model card: recommender" in shown.output and "## Known limits" in shown.output

    again, report = run("--tolerance", "0.05")  # nothing new since: no twin version
    assert again.exit_code == 3 and "nothing new: candidate recommender:v2" in report["reason"]


def _corrupt(rows: pd.DataFrame, how: str) -> list[tuple[str, dict[str, Any]]]:
    entries = event_entries(rows, first_seq=10**6)
    for k, (_, fields) in enumerate(entries):
        if k % 3:  # a third of the partition stays plausible
            continue
        if how == "null-user":
            del fields["user_id"]
        elif how == "invalid-item":
            fields["item_id"] = "item with spaces"
        elif how == "future":
            fields["ts"] = "%.3f" % (pd.Timestamp.now(tz="UTC").timestamp() + 86400 * 30)
        elif how == "unknown-event":
            fields["event_type"] = "wishlist"
    return entries


@pytest.mark.parametrize("how, check", [
    ("null-user", "null_user_id_rate"),
    ("invalid-item", "invalid_item_id_rate"),
    ("future", "future_timestamp_rate"),
    ("unknown-event", "invalid_event_type_rate"),
], ids=["null-user-ids", "invalid-item-ids", "future-timestamps", "unknown-event-type"])
def test_refuses_a_corrupted_partition(data_dir: Path, how: str, check: str) -> None:
    lake = Lake(data_dir / "lake")
    latest = lake.read(EVENTS_STREAM).tail(300)
    rows = pd.DataFrame({"user_id": latest["user_id"], "item_id": latest["item_id"],
                         "event_type": latest["event_type"],
                         "timestamp": pd.to_datetime(latest["ts"].astype(float), unit="s",
                                                     utc=True)})
    lake.write(EVENTS_STREAM, _corrupt(rows, how))

    result, report = run()
    assert result.exit_code == 3
    assert report["decision"] == "refused" and report["registered"] is None
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == [check], failed
    assert failed[0]["source"] == f"lake {EVENTS_STREAM}" and failed[0]["value"] > 0.01
    assert check in report["reason"] and f"> max {failed[0]['limit']:g}" in report["reason"]
    assert [s["status"] for s in report["steps"]] == ["ok", "failed", "skipped", "skipped",
                                                       "failed", "skipped"]
    registry = ModelRegistry(data_dir / "models")
    assert [v.version for v in registry.versions("recommender")] == [1]
    assert registry.aliases("recommender") == {"production": 1}


def test_no_data_after_productions_cutoff_is_refused_not_a_fake_win(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "lake")
    result = CliRunner().invoke(cli, ["pipeline", "run", "recommender"])
    assert result.exit_code == 3
    assert "decision: refused: no data newer than production's data cutoff" in result.stdout
    assert ModelRegistry(data_dir / "models").aliases("recommender") == {"production": 1}


def test_the_worker_runs_the_pipeline_on_its_schedule(
        data_dir: Path, redis_client: Any, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from mlplatform.worker import Worker, heartbeats

    monkeypatch.setenv("MLSUITE_PIPELINE_TOLERANCE", "0.05")  # ndcg is noisy on a tiny shop
    settings = Settings.from_env({}).with_(data_dir=data_dir, redis_url=redis_url,
                                           retrain_interval=0.2)
    worker = Worker("recommender", settings, redis_client)  # the platform's jobs only
    worker.start()
    try:
        registry = ModelRegistry(data_dir / "models")
        deadline = time.monotonic() + 60
        while "candidate" not in registry.aliases("recommender"):
            assert time.monotonic() < deadline, "no candidate registered by the schedule"
            time.sleep(0.1)
        assert registry.aliases("recommender")["production"] == 1  # never moved
        [beat] = heartbeats(redis_client, "recommender")
        assert "pipeline" in beat["jobs"]
    finally:
        worker.stop()
