"""``mlsuite pipeline run fraud`` end to end: the small simulated payments, production
trained on the older 80%, and the newer 20% labelled the way chargebacks arrive (every
fraud, a fifth of the rest) and archived in a real lake with the feature vectors logged at
decision time; the CLI runs through click's CliRunner on a real registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from fraud.config import FraudConfig
from fraud.models import Artifact
from fraud.training import load_dataset, train
from mlplatform.cli import cli
from mlplatform.lake import Lake
from mlplatform.registry import ModelRegistry

STREAM = "fraud:labels"
MODEL = FraudConfig().model_name


def label_entry(seq: int, tid: str, ts: float, fraud: bool, features: dict[str, float]
                ) -> tuple[str, dict[str, str]]:
    """One label-stream entry as the service appends it: the label and its decision record."""
    labelled = ts + 3600.0
    record = {"transaction_id": tid, "timestamp": ts, "score": 0.1, "decision": "approve",
              "reasons": [], "model_version": f"{MODEL}:v1", "model_labels": 0,
              "review_threshold": 0.5, "scored_at": ts + 0.01, "features": features}
    return (f"{int(labelled * 1000)}-{seq}", {
        "transaction_id": tid, "is_fraud": "1" if fraud else "0",
        "labelled_at": repr(labelled), "decision": json.dumps(record)})


@pytest.fixture(scope="session")
def pipeline_template(tmp_path_factory: pytest.TempPathFactory, payments_dir: Path) -> Path:
    """A data folder: the older 80% of the payments as the file with production trained on
    it; labels for the newer 20% in the lake."""
    data_dir = tmp_path_factory.mktemp("fraud-pipeline")
    shutil.copytree(payments_dir, data_dir / "payments")
    path = data_dir / "payments" / "transactions.parquet"
    full = load_dataset(path)
    n = int(len(full) * 0.8)
    full.frame.iloc[:n].drop(columns=["ts", "labelled_ts"], errors="ignore").to_parquet(
        path, index=False)
    rng = np.random.default_rng(5)
    entries = [label_entry(i, str(full.frame["transaction_id"].iloc[i]),
                           float(full.timestamps[i]), bool(full.labels[i]), full.vectors[i])
               for i in range(n, len(full)) if full.labels[i] or rng.random() < 0.2]
    entries.sort(key=lambda e: int(e[0].split("-")[0]))
    Lake(data_dir / "lake").write(STREAM, [(f"{e[0].split('-')[0]}-{k}", e[1])
                                           for k, e in enumerate(entries)])
    train(load_dataset(path), ModelRegistry(data_dir / "models"), FraudConfig(), promote=True,
          batch=False)
    return data_dir


@pytest.fixture
def data_dir(pipeline_data_dir: Path) -> Path:
    """A private copy of this module's ``pipeline_template`` (tests/conftest.py)."""
    return pipeline_data_dir


def run() -> tuple[Result, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["pipeline", "run", "fraud", "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, json.loads(result.stdout)


def test_registers_a_candidate_on_new_plausible_labels(data_dir: Path) -> None:
    result, report = run()
    assert result.exit_code == 0, report["reason"]
    assert report["registered"] == f"{MODEL}:v2"
    cand, prod = report["metrics"]["candidate"], report["metrics"]["production"]
    assert 0.5 < prod["roc_auc"] <= 1 and cand["roc_auc"] >= prod["roc_auc"] - 0.01
    held_out = report["steps"][3]["held_out"]
    assert held_out["frauds"] > 0 and held_out["rows"] >= 50
    registry = ModelRegistry(data_dir / "models")
    assert registry.aliases(MODEL) == {"production": 1, "candidate": 2}
    version = registry.get(MODEL, 2)
    artifact = Artifact.load(version.path)  # servable like any registry version
    assert artifact.model.kind == "hybrid-gbm" and artifact.thresholds.review < 1
    lineage = version.metadata["lineage"]
    parts = [e for e in lineage["inputs"] if e["kind"] == "lake"]
    assert parts and sum(e["rows"] for e in parts) == report["steps"][0]["sources"][
        f"lake {STREAM}"]
    assert version.model_card is not None and "roc_auc (primary)" in version.model_card

    shown = CliRunner().invoke(cli, ["models", "show", MODEL, "2"])
    assert shown.exit_code == 0
    assert "fraud.labels/date=" in shown.output and "## Intended use" in shown.output


@pytest.mark.parametrize("how, check", [
    ("null-ids", "null_transaction_id_rate"),
    ("broken-decisions", "invalid_decision_rate"),
], ids=["null-transaction-ids", "unparseable-decision-records"])
def test_refuses_a_corrupted_partition(data_dir: Path, how: str, check: str) -> None:
    lake = Lake(data_dir / "lake")
    entries = []
    for k, row in enumerate(lake.read(STREAM).tail(200).itertuples(index=False)):
        fields = {"transaction_id": row.transaction_id, "is_fraud": row.is_fraud,
                  "labelled_at": row.labelled_at, "decision": row.decision}
        if k % 2 == 0:
            if how == "null-ids":
                del fields["transaction_id"]
            else:
                fields["decision"] = fields["decision"][:40]  # truncated JSON
        entries.append((f"{row.stream_id.split('-')[0]}-{10**6 + k}", fields))
    lake.write(STREAM, entries)

    result, report = run()
    assert result.exit_code == 3
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == [check], failed
    assert report["reason"].startswith(f"data-quality checks failed: {check} (lake {STREAM}): ")
    registry = ModelRegistry(data_dir / "models")
    assert [v.version for v in registry.versions(MODEL)] == [1]
    assert "candidate" not in registry.aliases(MODEL)


def test_docstring_examples() -> None:
    import doctest

    import fraud.pipeline

    result = doctest.testmod(fraud.pipeline)
    assert result.attempted > 0 and result.failed == 0
