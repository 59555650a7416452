"""`mlsuite recommender ...`: help everywhere, train registers, ensure_model is idempotent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mlplatform.config import Settings, get_settings
from mlplatform.registry import ModelRegistry
from mlplatform.security.pii import tokeniser
from recommender.bundle import ModelBundle
from recommender.cli import cli, ensure_model


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MLSUITE_DATA_DIR for the commands, with the settings cache cleared around the test."""
    monkeypatch.setenv("MLSUITE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


@pytest.mark.parametrize("args", [[], ["train"], ["evaluate"], ["bench"]],
                         ids=lambda a: " ".join(a) or "group")
def test_every_command_has_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_train_registers_a_version_with_metrics(data_dir: Path, shop_dir: Path) -> None:
    path = str(shop_dir / "interactions.parquet")
    result = CliRunner().invoke(cli, ["train", "--interactions", path, "--model", "als"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "registered recommender:v1" in result.output
    registry = ModelRegistry(data_dir / "models")
    version = registry.get("recommender", 1)
    assert version.metadata["metrics"]["als.ndcg@10"] > 0
    assert registry.aliases("recommender") == {}, "train must not promote without --promote"
    assert ModelBundle.load(version.path).variants == ["als", "popularity"]


def test_train_from_a_csv_with_integer_ids_and_weights(data_dir: Path, tmp_path: Path,
                                                       shop_dir: Path) -> None:
    df = pd.read_parquet(shop_dir / "interactions.parquet")
    csv = pd.DataFrame({"user_id": df["user_id"].str[1:].astype(int),
                        "item_id": df["item_id"].str[1:].astype(int),
                        "timestamp": df["timestamp"].astype("int64") // 10**6,
                        "weight": df["event_type"].map({"view": 1, "add_to_cart": 3,
                                                        "purchase": 5})})
    path = tmp_path / "plain.csv"
    csv.to_csv(path, index=False)
    result = CliRunner().invoke(cli, ["train", "--interactions", str(path), "--promote"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    bundle = ModelBundle.load(ModelRegistry(data_dir / "models").resolve("recommender",
                                                                         "production").path)
    # Item ids keep their type; user ids are tokens (recommender.pii), whatever came in.
    assert bundle.items.kind == "int" and bundle.users.kind == "str"
    assert bundle.items.external(0) == int(csv["item_id"].min())
    tokens = tokeniser(get_settings())  # the command's: MLSUITE_DATA_DIR's key
    first = int(csv["user_id"].iloc[0])
    assert bundle.users.lookup(tokens.token("user", str(first))) is not None
    assert bundle.users.lookup(first) is None


def test_bad_interactions_file_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user,item\nu1,i1\n")
    result = CliRunner().invoke(cli, ["train", "--interactions", str(path)])
    assert result.exit_code != 0
    assert "missing column(s) user_id, item_id, timestamp" in result.output


def test_ensure_model_trains_once(tmp_path: Path, shop_dir: Path) -> None:
    settings = Settings.from_env({}).with_(data_dir=tmp_path)
    shutil.copytree(shop_dir, tmp_path / "shop")
    ensure_model(settings)
    ensure_model(settings)
    registry = ModelRegistry(tmp_path / "models")
    assert [v.version for v in registry.versions("recommender")] == [1]
    assert registry.aliases("recommender") == {"production": 1}


def test_add_items_folds_new_items_in_without_retraining(
        data_dir: Path, tmp_path: Path, shop_dir: Path) -> None:
    """A new item bought by the buyers of i00001 lands next to it; one nobody bought never shows."""
    shutil.copytree(shop_dir, data_dir / "shop")
    ensure_model(Settings.from_env({}).with_(data_dir=data_dir))
    df = pd.read_parquet(shop_dir / "interactions.parquet")
    anchor = df["item_id"].value_counts().index[0]
    buyers = df.loc[df["item_id"] == anchor, "user_id"].unique()[:40]
    new = pd.DataFrame({"user_id": [*buyers, "someone-new"],
                        "item_id": ["i90001"] * len(buyers) + ["i90002"],
                        "event_type": "purchase", "timestamp": pd.Timestamp.now(tz="UTC")})
    new.to_parquet(tmp_path / "new.parquet")
    pd.DataFrame({"item_id": ["i90001", "i90002"], "category": ["books", "toys"]}).to_csv(
        tmp_path / "items.csv", index=False)
    result = CliRunner().invoke(cli, ["add-items", "--interactions", str(tmp_path / "new.parquet"),
                                      "--items", str(tmp_path / "items.csv")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "registered recommender:v2: recommender:v1 + 2 new items" in result.output
    bundle = ModelBundle.load(ModelRegistry(data_dir / "models").get("recommender", 2).path)
    als = bundle.models["als"]
    placed, unplaced = bundle.items.lookup("i90001"), bundle.items.lookup("i90002")
    assert placed is not None and unplaced is not None
    assert als.similar(placed) is not None
    sims = als.similar(bundle.items.lookup(anchor))
    assert sims is not None
    assert sims[placed] > sorted(sims)[len(sims) // 2], "not placed near its buyers"
    assert sims[unplaced] == float("-inf")
    assert als.similar(unplaced) is None, "an item without a vector has no neighbours"
    scores = bundle.models["bpr"].scores(bundle.histories([0]))
    assert scores[0, placed] == float("-inf"), "BPR cannot place new items until retrained"
    assert bundle.categories[bundle.item_category[placed]] == "books"


def test_bench_in_process_reports_percentiles(served_settings: Settings) -> None:
    from recommender.bench import format_report, run_bench

    report = run_bench(served_settings, n_requests=100, batch_size=50, http=False,
                       progress=False)
    engine = report["in_process"]["engine"]
    assert 0 < engine["p50_ms"] <= engine["p99_ms"]
    assert report["in_process"]["batch"]["users_per_s"] > 0
    assert report["item_features"] == "feast"
    assert "in-process engine" in format_report(report)
