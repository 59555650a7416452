"""A/B assignment: deterministic everywhere, split by the weights, canaries that only grow."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mlplatform.assignment import EXPOSURES, Experiment, bucket, in_rollout, load_experiments
from mlplatform.errors import ConfigError

IDS = [f"u{i:06d}" for i in range(100_000)]


@pytest.mark.parametrize("weights", [
    {"als": 0.5, "bpr": 0.5},
    {"als": 0.8, "bpr": 0.1, "popularity": 0.1},
    {"control": 90, "treatment": 10},
], ids=["50-50", "80-10-10", "90-10-unnormalised"])
def test_split_over_100k_ids_is_within_1pct_of_weights(weights: dict[str, float]) -> None:
    exp = Experiment("split", "salt-2026", weights)
    counts = Counter(exp.variant_of(u) for u in IDS)
    total = sum(weights.values())
    for variant, weight in weights.items():
        assert abs(counts[variant] / len(IDS) - weight / total) < 0.01, (variant, counts)


def test_same_answer_in_another_process() -> None:
    exp = Experiment("x", "s1", {"a": 1, "b": 1, "c": 1})
    here = [exp.variant_of(u) for u in IDS[:200]]
    code = ("from mlplatform.assignment import Experiment;"
            "e=Experiment('x','s1',{'a':1,'b':1,'c':1});"
            "print(','.join(e.variant_of(f'u{i:06d}') for i in range(200)))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123"}).stdout.strip().split(",")
    assert here == there


def test_salt_changes_the_split() -> None:
    a = [bucket("salt-a", u) for u in IDS[:1000]]
    b = [bucket("salt-b", u) for u in IDS[:1000]]
    assert sum(x == y for x, y in zip(a, b)) < 50


def test_assign_counts_exposures() -> None:
    exp = Experiment("exposure-test", "s", {"only": 1.0})
    before = EXPOSURES.labels("exposure-test", "only")._value.get()
    for u in IDS[:5]:
        exp.assign(u)
    assert EXPOSURES.labels("exposure-test", "only")._value.get() == before + 5


def test_canary_users_stay_in_as_the_fraction_grows() -> None:
    in_10 = {u for u in IDS[:20_000] if in_rollout("canary", u, 0.10)}
    in_20 = {u for u in IDS[:20_000] if in_rollout("canary", u, 0.20)}
    assert in_10 < in_20
    assert abs(len(in_10) / 20_000 - 0.10) < 0.01


def test_experiments_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('[rec]\nsalt = "r1"\nvariants = { als = 0.7, popularity = 0.3 }\n')
    exps = load_experiments(path)
    assert exps["rec"].salt == "r1" and exps["rec"].variants == {"als": 0.7, "popularity": 0.3}


@pytest.mark.parametrize(("text", "message"), [
    ('[rec]\nsalt = "r"\n', "must have a 'variants' table"),
    ('[rec]\nvariants = { a = -1 }\n', "weights must be numbers >= 0"),
    ('[rec\n', "is not valid TOML"),
], ids=["no-variants", "negative-weight", "bad-toml"])
def test_bad_experiments_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiments(path)
