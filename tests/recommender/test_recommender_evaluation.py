"""Offline metrics: hand-checked values, and `evaluate` giving the same figures twice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from recommender.cli import cli
from recommender.evaluation import ranking_metrics


def metrics(recommended: list[list[int]], relevant: list[list[int]], k: int, n_items: int = 6
            ) -> dict[str, float]:
    rel = sp.csr_matrix(np.array(relevant, dtype=np.float32))
    return ranking_metrics(np.array(recommended), rel, k=k, n_items=n_items)


@pytest.mark.parametrize(
    ("recommended", "relevant", "k", "expected"),
    [
        pytest.param([[0, 1, 2]], [[1, 0, 0, 0, 0, 0]], 3,
                     {"precision@3": 1 / 3, "recall@3": 1.0, "ndcg@3": 1.0, "map@3": 1.0},
                     id="single-hit-at-rank-1"),
        pytest.param([[2, 0, 1]], [[1, 0, 0, 0, 0, 0]], 3,
                     {"precision@3": 1 / 3, "recall@3": 1.0, "ndcg@3": 1 / math.log2(3),
                      "map@3": 0.5},
                     id="single-hit-at-rank-2"),
        pytest.param([[3, 4, 5]], [[1, 1, 0, 0, 0, 0]], 3,
                     {"precision@3": 0.0, "recall@3": 0.0, "ndcg@3": 0.0, "map@3": 0.0},
                     id="no-hit"),
        pytest.param([[0, 5, 1]], [[1, 1, 1, 1, 0, 0]], 3,
                     {"precision@3": 2 / 3, "recall@3": 0.5,
                      "ndcg@3": (1 + 1 / 2) / (1 + 1 / math.log2(3) + 1 / 2),
                      "map@3": (1 + 2 / 3) / 3},
                     id="more-relevant-than-k"),
        pytest.param([[0, -1, -1]], [[1, 0, 0, 0, 0, 0]], 3,
                     {"precision@3": 1 / 3, "recall@3": 1.0, "ndcg@3": 1.0, "map@3": 1.0},
                     id="short-list-padded"),
    ],
)
def test_ranking_metrics(recommended: list[list[int]], relevant: list[list[int]], k: int,
                         expected: dict[str, float]) -> None:
    got = metrics(recommended, relevant, k)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_coverage_is_the_share_of_the_catalogue_shown() -> None:
    got = metrics([[0, 1], [1, 2]], [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], 2, n_items=6)
    assert got["coverage"] == pytest.approx(3 / 6)


def run_evaluate(*args: str) -> dict[str, dict[str, float]]:
    result = CliRunner().invoke(cli, ["evaluate", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_evaluate_is_deterministic_and_als_beats_popularity(shop_dir: Path) -> None:
    first = run_evaluate("--train", str(shop_dir / "interactions.parquet"), "--seed", "7")
    second = run_evaluate("--train", str(shop_dir / "interactions.parquet"), "--seed", "7")
    assert first == second
    assert set(first) == {"als", "bpr", "popularity", "popularity_segment"}
    assert set(first["als"]) >= {"precision@10", "recall@10", "ndcg@10", "map@10", "coverage"}
    assert first["als"]["ndcg@10"] > first["popularity"]["ndcg@10"]


def test_evaluate_with_a_test_file(shop_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(shop_dir / "interactions.parquet")
    cut = len(df) * 3 // 4
    df.iloc[:cut].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[cut:].to_parquet(tmp_path / "test.parquet")
    out = run_evaluate("--train", str(tmp_path / "train.csv"), "--test",
                       str(tmp_path / "test.parquet"), "--k", "5", "--model", "als")
    assert set(out) == {"als", "popularity"}
    assert 0 < out["als"]["ndcg@5"] <= 1
