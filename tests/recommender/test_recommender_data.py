"""Loading interactions: formats, id kinds, weights, validation, the time split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.data import IdMap, load_interactions, time_split, user_item_matrix

WEIGHTS = {"view": 1.0, "add_to_cart": 4.0, "purchase": 8.0}


def write(tmp_path: Path, df: pd.DataFrame, fmt: str) -> Path:
    path = tmp_path / f"interactions.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("user_ids", "kind"),
    [pytest.param(["u1", "u2", "u1"], "str", id="string-ids"),
     pytest.param([7, 30, 7], "int", id="integer-ids")],
)
def test_loads_both_formats_and_id_kinds(tmp_path: Path, fmt: str, user_ids: list,
                                         kind: str) -> None:
    df = pd.DataFrame({"user_id": user_ids, "item_id": [1, 2, 2],
                       "timestamp": ["2025-01-02T00:00:00Z", "2025-01-01T00:00:00Z",
                                     "2025-01-03T00:00:00Z"],
                       "event_type": ["view", "purchase", "add_to_cart"]})
    loaded = load_interactions(write(tmp_path, df, fmt))
    assert loaded["timestamp"].is_monotonic_increasing
    assert str(loaded["timestamp"].dt.tz) == "UTC"
    users = IdMap.from_ids(loaded["user_id"])
    assert users.kind == kind
    # both ways: external -> index -> the same external id, in its own type
    for ext in user_ids:
        assert users.external(users.lookup(str(ext))) == ext


def test_weight_column_and_event_weights_sum_per_pair(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i1", "i1"],
                       "timestamp": [1_700_000_000, 1_700_000_001, 1_700_000_002],
                       "event_type": ["view", "purchase", "view"]})
    loaded = load_interactions(write(tmp_path, df, "csv"))
    users, items = IdMap.from_ids(loaded["user_id"]), IdMap.from_ids(loaded["item_id"])
    matrix = user_item_matrix(loaded, users, items, WEIGHTS).toarray()
    assert matrix.tolist() == [[9.0], [1.0]]
    plain = df.drop(columns="event_type").assign(weight=2.5)
    weighted = load_interactions(write(tmp_path, plain, "csv"))
    assert user_item_matrix(weighted, users, items, WEIGHTS).toarray().tolist() == [[5.0], [2.5]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"drop": "item_id"}, "missing column.*item_id", id="missing-column"),
        pytest.param({"event_type": "like"}, "event_type must be one of", id="unknown-event-type"),
        pytest.param({"timestamp": "yesterday"}, "timestamp must be", id="bad-timestamp"),
        pytest.param({"weight": -1}, "weight must be a number > 0", id="negative-weight"),
    ],
)
def test_bad_files_name_the_column(tmp_path: Path, change: dict, message: str) -> None:
    df = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["2025-01-01"],
                       "event_type": ["view"]})
    if "drop" in change:
        df = df.drop(columns=change["drop"])
    else:
        df = df.assign(**change)
    with pytest.raises(ValueError, match=message):
        load_interactions(write(tmp_path, df, "csv"))


def test_time_split_never_trains_on_the_future() -> None:
    ts = pd.date_range("2025-01-01", periods=100, freq="h", tz="UTC")
    df = pd.DataFrame({"user_id": np.arange(100) % 7, "item_id": np.arange(100) % 5,
                       "timestamp": ts})
    train, test = time_split(df, 0.2)
    assert len(train) == 80 and len(test) == 20
    assert train["timestamp"].max() < test["timestamp"].min()


def test_unknown_ids_map_to_minus_one() -> None:
    ids = IdMap.from_ids(["i1", "i2"])
    assert ids.indices(["i2", "nope", "i1"]).tolist() == [1, -1, 0]
    assert ids.lookup("nope") is None
    assert IdMap.from_ids([1, 2]).lookup("x") is None
