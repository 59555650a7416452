"""The pipeline's generic machinery: checks, thresholds, held-out slice, gate, run log,
``mlsuite models show`` and the CLI's usage errors. Services' end-to-end runs are tested
in tests/recommender/test_recommender_pipeline.py and tests/fraud/test_fraud_pipeline.py."""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from mlplatform.cli import cli
from mlplatform.config import get_settings
from mlplatform.errors import ConfigError
from mlplatform.pipeline import CheckResult, ColumnRule, Comparison, PipelineConfig, time_holdout
from mlplatform.pipeline.checks import label_checks, row_checks, volume_checks
from mlplatform.pipeline.runs import RunLog
from mlplatform.pipeline.steps import Checked, Evaluated, Extracted, Trained, gate
from mlplatform.registry import ModelRegistry

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RULES = (ColumnRule("user_id", "id"), ColumnRule("event_type", "category", ("view", "buy")),
         ColumnRule("timestamp", "timestamp"))


def _events(n: int = 100, **overrides: list[Any]) -> pd.DataFrame:
    """``n`` valid rows; each override replaces the first values of its column."""
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "event_type": ["view"] * n,
        "timestamp": pd.Series([NOW - timedelta(hours=i) for i in range(n)]).astype(
            "datetime64[ns, UTC]"),
    })
    for column, values in overrides.items():
        for i, value in enumerate(values):
            frame.at[i, column] = value
    return frame


def _failed(results: list[CheckResult]) -> dict[str, float | None]:
    return {r.name: r.value for r in results if not r.passed}


@pytest.mark.parametrize("overrides, expected, dropped", [
    ({}, {}, 0),
    ({"user_id": [None] * 31}, {"null_user_id_rate": 0.31}, 31),
    ({"user_id": [None]}, {}, 1),  # 1% is tolerated (max_null_rate 0.01), the row dropped
    ({"user_id": ["has space", "x" * 200, "ü-nicode"]}, {"invalid_user_id_rate": 0.03}, 3),
    ({"event_type": ["click", "click"]}, {"invalid_event_type_rate": 0.02}, 2),
    ({"timestamp": [NOW + timedelta(days=1)]}, {"future_timestamp_rate": 0.01}, 1),
    ({"timestamp": [NOW + timedelta(seconds=60)]}, {}, 0),  # within the clock skew
    ({"timestamp": [datetime(1970, 1, 2, tzinfo=UTC)]}, {"old_timestamp_rate": 0.01}, 1),
    ({"timestamp": [pd.NaT] * 5}, {"null_timestamp_rate": 0.05}, 5),
], ids=["clean", "null-ids", "null-ids-tolerated", "malformed-ids", "unknown-event-type",
        "future-timestamp", "skew-tolerated", "absurdly-old", "null-timestamps"])
def test_row_checks(overrides: dict[str, list[Any]], expected: dict[str, float],
                    dropped: int) -> None:
    results, bad = row_checks(_events(**overrides), RULES, PipelineConfig(), source="t", now=NOW)
    assert _failed(results) == pytest.approx(expected)
    assert len(bad) == dropped


def test_a_failed_check_names_itself_and_the_numbers() -> None:
    results, _ = row_checks(_events(user_id=[None] * 31), RULES, PipelineConfig(),
                            source="lake s", now=NOW)
    [failed] = [r for r in results if not r.passed]
    assert failed.message == "null_user_id_rate (lake s): 0.31 > max 0.01"


@pytest.mark.parametrize("frame, problem", [
    (_events().drop(columns=["event_type"]), "event_type"),
    (_events().assign(timestamp=lambda f: f["timestamp"].astype(str)), "timestamp"),
], ids=["missing-column", "wrong-dtype"])
def test_schema_problems_fail_the_schema_check(frame: pd.DataFrame, problem: str) -> None:
    results, bad = row_checks(frame, RULES, PipelineConfig(), source="t", now=NOW)
    assert results[0].name == "schema" and not results[0].passed
    assert problem in results[0].message
    assert len(bad) == len(frame)  # nothing of a malformed table trains


@pytest.mark.parametrize("rows, previous, failing", [
    ({"a": 100, "b": 10}, None, []),
    ({"a": 100, "b": 10}, {"a": 100, "b": 8}, []),
    ({"a": 100, "b": 2}, {"a": 100, "b": 10}, ["volume_ratio (b): 0.2 < min 0.5"]),
    ({"a": 10, "b": 10}, {"a": 100, "b": 10}, ["volume_ratio (a): 0.1 < min 0.5",
                                               "volume_ratio (all): 0.1818 < min 0.5"]),
    ({"a": 5000, "b": 10}, {"a": 100, "b": 10}, ["volume_ratio (all): 45.55 > max 20"]),
], ids=["first-run", "steady", "source-shrank", "total-shrank", "total-exploded"])
def test_volume_checks(rows: dict[str, int], previous: dict[str, int] | None,
                       failing: list[str]) -> None:
    results = volume_checks(rows, previous, PipelineConfig())
    messages = [r.message for r in results if not r.passed]
    assert len(messages) == len(failing), messages
    assert all(m.startswith(f) for m, f in zip(messages, failing)), messages


@pytest.mark.parametrize("labels, previous, failing", [
    ([1] * 5 + [0] * 95, None, []),
    ([1] * 5 + [0] * 95, 0.04, []),
    ([1] * 60 + [0] * 40, None, ["label_rate"]),
    ([0] * 100, None, ["label_rate"]),
    ([1] * 5 + [0] * 95, 0.005, ["label_rate_change"]),
    ([1] * 1 + [0] * 99, 0.05, ["label_rate_change"]),
], ids=["sane", "steady", "too-many-positives", "no-positives", "jumped", "collapsed"])
def test_label_checks(labels: list[int], previous: float | None, failing: list[str]) -> None:
    results = label_checks("s", pd.Series(labels), previous, PipelineConfig())
    assert [r.name for r in results if not r.passed] == failing


def test_config_from_env_and_flags() -> None:
    config = PipelineConfig.from_env({"MLSUITE_PIPELINE_MAX_NULL_RATE": "0.05"})
    assert config.max_null_rate == 0.05 and config.tolerance == 0.01
    assert config.with_(tolerance="0.2").tolerance == 0.2
    with pytest.raises(ConfigError, match="MLSUITE_PIPELINE_TOLERANCE must be a number in "
                                          r"\[0, 1\], got '2'"):
        PipelineConfig.from_env({"MLSUITE_PIPELINE_TOLERANCE": "2"})
    with pytest.raises(ConfigError, match="MLSUITE_PIPELINE_TOLERANSE is not a pipeline"):
        PipelineConfig.from_env({"MLSUITE_PIPELINE_TOLERANSE": "0.1"})


def test_holdout_is_the_newest_slice_after_productions_cutoff() -> None:
    ts = pd.Series(pd.date_range("2025-01-01", periods=200, freq="h", tz="UTC"))
    frame = pd.DataFrame({"timestamp": ts.astype("datetime64[ns, UTC]"), "x": range(200)})
    cutoff = ts[99].to_pydatetime()
    split = time_holdout(frame, "timestamp", cutoff, PipelineConfig(min_held_out_rows=10))
    assert len(split.held_out) == 50 and split.held_out["timestamp"].min() > ts[99]
    assert split.train["timestamp"].max() < split.held_out["timestamp"].min()
    assert split.data_cutoff == ts[149].to_pydatetime() and not split.reason
    nothing_new = time_holdout(frame, "timestamp", ts[199].to_pydatetime(), PipelineConfig())
    assert "no data newer than production's data cutoff" in nothing_new.reason
    too_little = time_holdout(frame, "timestamp", ts[190].to_pydatetime(), PipelineConfig())
    assert "under the minimum of 50" in too_little.reason


@dataclass
class _Service:
    primary_metric: str = "auc"


def _evaluated(candidate: float | None, production: float | None) -> Evaluated:
    checked = Checked(extracted=Extracted())
    return Evaluated(trained=Trained(checked=checked),
                     comparison=Comparison({"auc": candidate}, {"auc": production}))


@pytest.mark.parametrize("candidate, production, passed, reason", [
    (0.90, 0.85, True, "auc: candidate 0.9000 >= production 0.8500 - tolerance 0.01"),
    (0.845, 0.85, True, "auc: candidate 0.8450 >= production 0.8500 - tolerance 0.01"),
    (0.83, 0.85, False, "auc: candidate 0.8300 < production 0.8500 - tolerance 0.01"),
    (None, 0.85, False, "auc of the candidate is not measurable"),
], ids=["better", "within-tolerance", "worse", "not-measurable"])
def test_gate(candidate: float | None, production: float | None, passed: bool,
              reason: str, tmp_path: Path) -> None:
    ctx: Any = type("Ctx", (), {"config": PipelineConfig()})()
    result = gate(ctx, _Service(), _evaluated(candidate, production))  # type: ignore[arg-type]
    assert result.ok is passed
    assert result.reason.startswith(reason)


def test_gate_refuses_failed_checks_naming_them() -> None:
    failed = CheckResult("null_user_id_rate", "lake s", 0.31, "<=", 0.01, False)
    checked = Checked(extracted=Extracted(), checks=[failed], status="failed",
                      reason=failed.message)
    ctx: Any = type("Ctx", (), {"config": PipelineConfig()})()
    result = gate(ctx, _Service(), Evaluated(trained=Trained(checked=checked)))  # type: ignore[arg-type]
    assert not result.ok
    assert result.reason == "data-quality checks failed: null_user_id_rate (lake s): 0.31 > max 0.01"


def test_run_log_baseline_is_the_last_run_whose_checks_passed(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    assert log.last_passed() is None
    log.append({"run_id": "1", "checks_passed": True, "rows": {"a": 10}})
    log.append({"run_id": "2", "checks_passed": False, "rows": {"a": 1}})
    with open(log.path, "a") as handle:
        handle.write('{"run_id": "torn')  # a crash mid-line
    last = log.last_passed()
    assert last is not None and last["run_id"] == "1"


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """MLSUITE_DATA_DIR on a temporary folder, read afresh by the CLI."""
    monkeypatch.setenv("MLSUITE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_models_show_prints_lineage_and_model_card(fresh_settings: Path) -> None:
    registry = ModelRegistry(fresh_settings / "models")
    registry.register("m", writer=lambda d: (d / "x").write_text("1"), params={},
                      metrics={"auc": 0.5}, data_fingerprint="f")  # an old-style caller
    lineage = {"run_id": "r1", "train_rows": 10, "data_cutoff": "2025-01-01T00:00:00+00:00",
               "production": "m:v1", "inputs": [
                   {"kind": "lake", "stream": "s:events", "date": "2025-01-01",
                    "path": "s.events/date=2025-01-01/part-1-0--2-0.parquet",
                    "fingerprint": "abc123", "rows": 10}]}
    registry.register("m", writer=lambda d: (d / "x").write_text("2"), params={},
                      metrics={"auc": 0.6}, data_fingerprint="g", alias="candidate",
                      lineage=lineage, model_card="# Model card: m\n\n## Intended use\n\ntests\n")
    out = CliRunner().invoke(cli, ["models", "show", "m", "candidate"])
    assert out.exit_code == 0, out.output
    assert "m:v2  <- candidate" in out.output
    assert "s.events/date=2025-01-01/part-1-0--2-0.parquet  rows=10  fingerprint=abc123" \
        in out.output
    assert "## Intended use" in out.output and "auc = 0.6" in out.output
    old = CliRunner().invoke(cli, ["models", "show", "m", "1"])
    assert "lineage: none recorded" in old.output and "model card: none" in old.output
    missing = CliRunner().invoke(cli, ["models", "show", "m", "7"])
    assert missing.exit_code == 1 and "model 'm' has no version 7" in missing.output


@pytest.mark.parametrize("args, message", [
    (["pipeline", "run", "nope"], "unknown service 'nope'; expected one of fraud, recommender"),
    (["pipeline", "run", "fraud", "--tolerance", "2"], "--tolerance"),
    (["pipeline", "run"], "Missing argument 'SERVICE'"),
], ids=["unknown-service", "bad-tolerance", "no-service"])
def test_pipeline_bad_usage_exits_2(args: list[str], message: str, fresh_settings: Path) -> None:
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2, out.output
    assert message in out.output


@pytest.mark.parametrize("name", ["checks", "config", "holdout"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"mlplatform.pipeline.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
