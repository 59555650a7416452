"""`mlsuite fraud ...` end to end, in subprocesses like a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def _run(data_dir: Path, *args: str, redis_url: str | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data_dir), "OPENBLAS_NUM_THREADS": "1"}
    if redis_url:
        env["MLSUITE_REDIS_URL"] = redis_url
    return subprocess.run([sys.executable, "-m", "mlplatform", "fraud", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_replay_json_gives_both_models_before_and_after_the_drift(
        tmp_path: Path, payments_dir: Path) -> None:
    out = _run(tmp_path, "replay", "--transactions", str(payments_dir / "transactions.parquet"),
               "--label-delay", "86400", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"served", "online", "batch"} <= set(report)
    for model in ("served", "online", "batch"):
        assert {"roc_auc", "pr_auc", "recall@2%fpr"} <= set(report[model])
        assert 0.5 < report[model]["roc_auc"] <= 1.0
        assert {"before_drift", "after_drift"} <= set(report[model]["segments"])
    assert report["replay"]["label_delay_seconds"] == 86400
    assert report["replay"]["drift_pattern"] == "bust_out"


def test_replay_is_deterministic(tmp_path: Path, payments_dir: Path) -> None:
    small = tmp_path / "small.parquet"
    pd.read_parquet(payments_dir / "transactions.parquet").iloc[:6000].to_parquet(small)
    first = _run(tmp_path, "replay", "--transactions", str(small), "--json")
    second = _run(tmp_path, "replay", "--transactions", str(small), "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_replay_ignores_undeclared_extra_columns_with_a_note(tmp_path: Path, payments_dir: Path
                                                            ) -> None:
    """Another team's file (CSV, extra columns of its own): replayed on the schema's
    columns, the rest named in a note and in the JSON, never used as features."""
    frame = pd.read_parquet(payments_dir / "transactions.parquet").iloc[:6000]
    other = frame.assign(customer_segment="gold", risk_flag=frame["is_fraud"].astype(int))
    other.to_csv(tmp_path / "other-team.csv", index=False)
    out = _run(tmp_path, "replay", "--transactions", str(tmp_path / "other-team.csv"), "--json")
    assert out.returncode == 0, out.stderr
    assert "ignoring the column(s) customer_segment, risk_flag" in out.stderr
    report = json.loads(out.stdout)
    assert report["replay"]["ignored_columns"] == ["customer_segment", "risk_flag"]
    # risk_flag is the label itself: had it leaked in as a feature, the models would be perfect.
    assert report["served"]["roc_auc"] < 0.999


def test_a_bad_transaction_file_is_a_clear_error(tmp_path: Path, payments_dir: Path) -> None:
    frame = pd.read_parquet(payments_dir / "transactions.parquet").iloc[:100]
    frame.drop(columns=["currency"]).to_csv(tmp_path / "no-currency.csv", index=False)
    frame.assign(amount=-frame["amount"]).to_parquet(tmp_path / "negative.parquet")
    for name, expected in (("no-currency.csv", "currency"), ("negative.parquet", "amount")):
        out = _run(tmp_path, "replay", "--transactions", str(tmp_path / name))
        assert out.returncode != 0
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_train_registers_both_models_with_metrics(tmp_path: Path, payments_dir: Path) -> None:
    shutil.copytree(payments_dir, tmp_path / "payments")
    out = _run(tmp_path, "train")
    assert out.returncode == 0, out.stderr
    assert "fraud-online:v1 (production)" in out.stdout and "fraud-batch:v1" in out.stdout
    meta = json.loads((tmp_path / "models" / "fraud-online" / "versions" / "1" /
                       "metadata.json").read_text())
    assert meta["params"]["kind"] == "hybrid-gbm" and meta["metrics"]["review_fpr"] <= 0.02
    assert meta["data_fingerprint"]


@pytest.mark.slow
def test_bench_measures_in_process_and_over_http(
        fraud_data_dir: Path, redis_url: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    out = _run(fraud_data_dir, "bench", "--n", "50", "--batch-size", "100", "--batches", "2",
               "--workers", "1", "--json", "-", redis_url=redis_url)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for section, names in (("inproc", ("service", "single", "batch")),
                           ("http", ("single", "single_concurrent", "batch"))):
        for name in names:
            m = report[section][name]
            assert 0 < m["p50_ms"] <= m["p99_ms"] and m["transactions_per_s"] > 0, (section, m)
    assert report["http"]["single_concurrent"]["errors"] == 0
    assert not redis_client.keys("fraudbench:*"), "the bench must clean up after itself"
