"""Drift reports on the fraud service: the session's trained model and its reference, the
real app scoring on the real Redis, the report through ``mlsuite monitor drift --json``.

Traffic "like the training data" is the training file itself replayed in time order
through the service: the velocity state builds as the offline replay built it, so the
live features are the training features and nothing may be flagged. The shifted run
replays it with every amount times five: the amount and the features computed from it
must be flagged, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from prometheus_client import REGISTRY

from fraud.keys import Keys
from fraud.training import Dataset
from mlplatform.config import Settings, get_settings
from mlplatform.lake import Lake
from mlplatform.monitoring.cli import monitor
from mlplatform.monitoring.driftreport import MIN_ROWS, drift_job, drift_report, latest, publish
from mlplatform.retention import Archiver
from mlplatform.streams import stream_keys

pytestmark = pytest.mark.slow

# Features computed from the amount alone (card_amount_vs_usual is a ratio to the card's
# own history, which the shift scales too, so it may stay put).
AMOUNT_FEATURES = {"amount", "amount_vs_card_avg", "card_amount_1m", "card_amount_1h",
                   "card_amount_24h", "card_amount_vs_usual"}
MUST_FLAG = {"amount", "amount_vs_card_avg", "card_amount_1h", "card_amount_24h"}


def _replay(app: Flask, bodies: list[dict[str, Any]], batch: int = 1000) -> None:
    client = app.test_client()
    for start in range(0, len(bodies), batch):
        reply = client.post("/v1/transactions/score/batch",
                            json={"transactions": bodies[start:start + batch]})
        assert reply.status_code == 200, reply.get_json()


@pytest.fixture
def bodies(payments_data: Dataset, as_bodies: Callable[[Any], list[dict[str, Any]]]
           ) -> list[dict[str, Any]]:
    """The training transactions as the payment flow would send them, oldest first."""
    return as_bodies(payments_data.frame.sort_values("ts", kind="stable"))


@pytest.fixture
def cli(fraud_settings: Settings, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[Callable[..., Any]]:
    """Run ``mlsuite monitor drift ...`` on the test's data folder and Redis; its JSON."""
    monkeypatch.setenv("MLSUITE_DATA_DIR", str(fraud_settings.data_dir))
    monkeypatch.setenv("MLSUITE_REDIS_URL", fraud_settings.redis_url or "")
    get_settings.cache_clear()

    def run(*args: str, as_json: bool = True) -> Any:
        result = CliRunner().invoke(monitor, ["drift", "fraud", *args]
                                    + (["--json"] if as_json else []))
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output)) if as_json else result.output

    yield run
    get_settings.cache_clear()


def test_the_table_marks_drifted_features_and_bad_input_is_refused(
        app: Flask, bodies: list[dict[str, Any]], cli: Callable[..., Any]) -> None:
    _replay(app, [{**b, "amount": b["amount"] * 5} for b in bodies[:500]])
    table = cli(as_json=False).splitlines()
    assert table[0].startswith("fraud-online:v1 (reference fraud-online:v1): 500 live rows")
    assert table[1].split() == ["feature", "kind", "statistic", "value", "threshold", "psi"]
    marked = [line.split()[1] for line in table[2:] if line.startswith("!")]
    assert "amount" in marked and "channel_online" not in marked
    refused = CliRunner().invoke(monitor, ["drift", "fraud", "--window", "soon"])
    assert refused.exit_code == 2 and "15m, 1h or 1d" in refused.output
    refused = CliRunner().invoke(monitor, ["drift", "payments"])
    assert refused.exit_code == 2 and "recommender" in refused.output


def _flagged(report: dict[str, Any]) -> set[str]:
    return {name for name, r in report["features"].items() if r["drifted"]}


def test_traffic_like_the_training_data_flags_nothing(
        app: Flask, bodies: list[dict[str, Any]], cli: Callable[..., Any]) -> None:
    _replay(app, bodies)
    report = cli()
    assert report["model"] == "fraud-online:v1" and report["reference"] == "fraud-online:v1"
    assert report["window"] == "1h" and report["window_seconds"] == 3600
    assert report["rows"] == len(bodies) and report["enough_data"] is True
    assert _flagged(report) == set(), {n: r["value"] for n, r in report["features"].items()}
    assert report["drift_share"] == 0.0 and report["dataset_drift"] is False
    # Every input feature is compared, numeric and categorical, with Evidently's choice
    # for a reference of ~20k rows.
    features = report["features"]
    assert features["amount"]["kind"] == "numeric"
    assert features["amount"]["statistic"] == "wasserstein"
    assert features["amount"]["threshold"] == 0.1 and "psi" in features["amount"]
    assert features["merchant_category"]["kind"] == "categorical"
    assert features["merchant_category"]["statistic"] == "jensenshannon"
    assert {"card_count_24h", "channel_online", "merchant_risk_score"} <= set(features)


def test_shifted_amounts_flag_the_amount_features(
        app: Flask, bodies: list[dict[str, Any]], cli: Callable[..., Any]) -> None:
    _replay(app, [{**b, "amount": round(b["amount"] * 5, 2)} for b in bodies])
    report = cli("--window", "15m")
    flagged = _flagged(report)
    assert MUST_FLAG <= flagged, f"flagged only {sorted(flagged)}"
    assert flagged <= AMOUNT_FEATURES, f"flagged unrelated {sorted(flagged - AMOUNT_FEATURES)}"
    amount = report["features"]["amount"]
    assert amount["value"] > amount["threshold"] and amount["psi"] > 0.1
    assert amount["live_mean"] == pytest.approx(5 * amount["reference_mean"], rel=0.01)
    assert report["window"] == "15m"
    judged = [n for n, r in report["features"].items() if "not_judged" not in r]
    assert report["drift_share"] == round(len(flagged) / len(judged), 4)


def test_the_time_of_day_is_judged_on_a_day_not_on_an_hour(
        app: Flask, bodies: list[dict[str, Any]], cli: Callable[..., Any]) -> None:
    """Live traffic of one hour holds one hour of the day: against the all-day reference
    the hour features would drift every hour. Under an hour's window they are shown,
    not flagged, and say why; under a day's window they are judged, and here flagged."""
    from fraud.features import CLOCK_FEATURES

    hour = 14 * 3600.0  # every transaction made between 14:00 and 15:00 (UTC)
    _replay(app, [{**b, "timestamp": b["timestamp"] - b["timestamp"] % 86400 + hour
                   + b["timestamp"] % 3600} for b in bodies[:3000]])
    report = cli()
    for name in CLOCK_FEATURES:
        feature = report["features"][name]
        assert feature["drifted"] is False and feature["value"] > feature["threshold"], name
        assert "1h window" in feature["not_judged"], feature
    judged = [n for n, r in report["features"].items() if "not_judged" not in r]
    assert len(judged) == len(report["features"]) - len(CLOCK_FEATURES)
    assert report["drift_share"] == round(len(_flagged(report)) / len(judged), 4)
    table = cli(as_json=False).splitlines()
    assert "~ not judged: follows the time of day" in table[0], table[0]
    assert {line.split()[1] for line in table if line.startswith("~")} == set(CLOCK_FEATURES)
    day = cli("--window", "1d")
    assert {"hour_of_day", "hour_sin"} <= _flagged(day), day["features"]["hour_of_day"]
    assert not any("not_judged" in r for r in day["features"].values())


def test_a_handful_of_transactions_flags_nothing(
        app: Flask, bodies: list[dict[str, Any]], cli: Callable[..., Any]) -> None:
    _replay(app, [{**b, "amount": b["amount"] * 50} for b in bodies[:20]])
    report = cli()
    assert report["rows"] == 20 < MIN_ROWS
    assert report["enough_data"] is False
    assert _flagged(report) == set() and report["drift_share"] == 0.0
    # The statistics are still shown: the amounts are plainly off.
    assert report["features"]["amount"]["value"] > 0.1


def test_the_window_reads_the_lake_for_what_was_trimmed(
        app: Flask, bodies: list[dict[str, Any]], fraud_settings: Settings,
        redis_client: Any, tmp_path: Path) -> None:
    settings = fraud_settings.with_(lake_dir=tmp_path / "lake")  # not the shared folder's
    _replay(app, bodies[:3000])
    # On a cluster the decisions are partitioned: each partition is archived on its own
    # (1000 entries kept in all), and the report reads every partition and its lake folder.
    keys = stream_keys(redis_client, Keys("fraud:", "fraud-online").decisions)
    results = [Archiver(redis_client, Lake.from_settings(settings), key,
                        retention_seconds=3600, maxlen=1000 // len(keys)).run_once()
               for key in keys]
    assert sum(r.trimmed for r in results) == 2000
    assert sum(int(redis_client.xlen(k)) for k in keys) == 1000
    report = drift_report(settings, "fraud", redis_client=redis_client)
    assert report["rows"] == 3000


def test_the_worker_job_publishes_the_report_and_the_gauges(
        app: Flask, bodies: list[dict[str, Any]], fraud_settings: Settings,
        redis_client: Any) -> None:
    assert latest(redis_client, "fraud") is None
    _replay(app, [{**b, "amount": b["amount"] * 5} for b in bodies[:2000]])
    said = drift_job(fraud_settings, "fraud", redis_client)()
    assert "fraud-online:v1" in said and "amount" in said
    report = latest(redis_client, "fraud")
    assert report is not None and report["rows"] == 2000
    assert report["features"]["amount"]["drifted"] is True

    def gauge(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"service": "fraud", **labels})

    assert gauge("mlsuite_feature_drifted", feature="amount") == 1.0
    assert gauge("mlsuite_feature_drifted", feature="merchant_category") == 0.0
    assert gauge("mlsuite_feature_drift_value", feature="amount") == pytest.approx(
        report["features"]["amount"]["value"])
    assert gauge("mlsuite_feature_drift_share") == report["drift_share"] > 0
    # A feature the next report no longer has leaves the gauges (multi-process mode
    # cannot remove a series: there it reads 0).
    publish(redis_client, "fraud", {**report, "features": {
        k: v for k, v in report["features"].items() if k != "amount"}})
    assert not gauge("mlsuite_feature_drifted", feature="amount")


def test_the_fraud_worker_runs_the_drift_job(
        app: Flask, bodies: list[dict[str, Any]], start_worker: Callable[..., Any],
        redis_client: Any, wait_for: Callable[..., Any]) -> None:
    _replay(app, [{**b, "amount": b["amount"] * 5} for b in bodies[:1000]])
    start_worker()  # its first drift report comes a few seconds after the start
    report = wait_for("the worker's drift report", lambda: latest(redis_client, "fraud"),
                      timeout=60)
    assert report["rows"] == 1000 and report["features"]["amount"]["drifted"] is True
