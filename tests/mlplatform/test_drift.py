"""Drift statistics, reference profiles and the live window, on known data (table-driven).

The statistics are pure; the registry is a real folder; the recommender-shaped live
window is read from a real Redis stream and the lake.
"""

from __future__ import annotations

import doctest
import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlplatform.config import Settings
from mlplatform.errors import NotFound
from mlplatform.lake import Lake
from mlplatform.monitoring.drift import (
    FeatureDrift,
    categorical_drift,
    chi2_pvalue,
    js_distance,
    numeric_drift,
    psi,
    wasserstein_normed,
)
from mlplatform.monitoring.driftreport import drift_report, format_window
from mlplatform.monitoring.reference import (
    REFERENCE_FILE,
    build_profile,
    featurise,
    served_reference,
    with_reference,
)
from mlplatform.registry import ModelRegistry

RNG = np.random.default_rng(11)
NORMAL = RNG.normal(100.0, 20.0, 5000)


@pytest.mark.parametrize("name", ["drift", "reference", "driftreport", "cli"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"mlplatform.monitoring.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0, f"mlplatform.monitoring.{name} has no examples"
    assert result.failed == 0


NUMERIC_CASES = [
    # id, reference, current, statistic, drifted
    ("same-distribution", NORMAL, RNG.normal(100.0, 20.0, 2000), "wasserstein", False),
    ("mean-plus-half-std", NORMAL, RNG.normal(110.0, 20.0, 2000), "wasserstein", True),
    ("times-five", NORMAL, NORMAL[:2000] * 5, "wasserstein", True),
    ("wider-spread", NORMAL, RNG.normal(100.0, 40.0, 2000), "wasserstein", True),
    ("small-reference-same", NORMAL[:800], RNG.normal(100.0, 20.0, 300), "ks", False),
    ("small-reference-shifted", NORMAL[:800], RNG.normal(110.0, 20.0, 300), "ks", True),
]


@pytest.mark.parametrize("reference,current,statistic,drifted",
                         [c[1:] for c in NUMERIC_CASES], ids=[c[0] for c in NUMERIC_CASES])
def test_numeric_drift(reference: np.ndarray, current: np.ndarray, statistic: str,
                       drifted: bool) -> None:
    result = numeric_drift(reference, current)
    assert (result.kind, result.statistic, result.drifted) == ("numeric", statistic, drifted)
    assert result.threshold == (0.1 if statistic == "wasserstein" else 0.05)
    assert result.psi is not None and (result.psi >= 0.1) is drifted


CATEGORICAL_CASES = [
    ("same-mix", {"web": 3000, "app": 1000}, {"web": 600, "app": 200}, "jensenshannon", False),
    ("flipped-mix", {"web": 3000, "app": 1000}, {"web": 200, "app": 600}, "jensenshannon", True),
    ("new-category", {"web": 3000, "app": 1000}, {"web": 300, "app": 100, "kiosk": 300},
     "jensenshannon", True),
    ("small-same", {"web": 300, "app": 100}, {"web": 150, "app": 50}, "chi2", False),
    ("small-new-category", {"web": 300, "app": 100}, {"web": 150, "app": 50, "kiosk": 2},
     "chi2", True),
]


@pytest.mark.parametrize("reference,current,statistic,drifted",
                         [c[1:] for c in CATEGORICAL_CASES],
                         ids=[c[0] for c in CATEGORICAL_CASES])
def test_categorical_drift(reference: dict[str, int], current: dict[str, int], statistic: str,
                           drifted: bool) -> None:
    result = categorical_drift(reference, current)
    assert (result.kind, result.statistic, result.drifted) == ("categorical", statistic, drifted)
    assert result.psi is None and "psi" not in result.to_dict()


@pytest.mark.parametrize("current,expected", [
    (np.arange(1000.0), 0.0),
    # Past the reference's range: counted in the end bins, not lost.
    (np.full(1000, 5000.0), 0.9 * math.log(0.1 / 1e-4) + 0.9 * math.log(1.0 / 0.1)),
], ids=["identical", "all-beyond-the-top"])
def test_psi_known_values(current: np.ndarray, expected: float) -> None:
    assert psi(np.arange(1000.0), current) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("fn,reference,current,expected", [
    (js_distance, {"a": 1, "b": 1}, {"a": 1, "b": 1}, 0.0),
    (js_distance, {"a": 1}, {"b": 1}, math.sqrt(math.log(2))),
    (chi2_pvalue, {"a": 10, "b": 10}, {}, 1.0),
    (js_distance, {"a": 10}, {}, 0.0),
], ids=["js-same", "js-disjoint", "chi2-empty", "js-empty"])
def test_category_statistics_known_values(fn: Any, reference: dict[str, int],
                                          current: dict[str, int], expected: float) -> None:
    assert fn(reference, current) == pytest.approx(expected, abs=1e-9)


def test_wasserstein_is_scaled_by_the_reference_spread() -> None:
    # One reference standard deviation of shift is 1.0, whatever the units.
    assert wasserstein_normed(NORMAL, NORMAL + 20.0) == pytest.approx(20.0 / NORMAL.std())
    assert wasserstein_normed(NORMAL * 1000, NORMAL * 1000 + 20_000.0) == pytest.approx(
        wasserstein_normed(NORMAL, NORMAL + 20.0))


def test_feature_drift_serialises_rounded() -> None:
    d = FeatureDrift("numeric", "wasserstein", 0.123456789, 0.1, True, 2.0)
    assert d.to_dict() == {"kind": "numeric", "statistic": "wasserstein", "value": 0.123457,
                           "threshold": 0.1, "drifted": True, "psi": 2.0}


@pytest.mark.parametrize("seconds,text", [(3600, "1h"), (900, "15m"), (86400, "1d"),
                                          (5400, "90m"), (45, "45s"), (2.5, "2.5s")])
def test_format_window(seconds: float, text: str) -> None:
    assert format_window(seconds) == text


# -- reference profiles ----------------------------------------------------------------

def test_profile_kinds_follow_distinct_values_and_sample_is_bounded() -> None:
    rows = [{"amount": float(i), "flag": float(i % 2), "channel": "web" if i % 4 else "app"}
            for i in range(12_000)]
    profile = build_profile(rows, source={"stream": "s"}, service="svc", sample_size=1000)
    amount, flag, channel = (profile["features"][n] for n in ("amount", "flag", "channel"))
    assert amount["kind"] == "numeric" and amount["rows"] == 12_000
    assert len(amount["sample"]) == 1000 and amount["quantiles"][-1] == 11_999.0
    assert flag == {"kind": "categorical", "rows": 12_000, "counts": {"0": 6000, "1": 6000}}
    assert channel["counts"] == {"app": 3000, "web": 9000}
    again = build_profile(rows, source={"stream": "s"}, service="svc", sample_size=1000)
    assert again["features"]["amount"]["sample"] == amount["sample"]  # seeded


def test_rolling_counts_and_lookups() -> None:
    source = {"fields": ["event_type"],
              "lookups": {"price": {"field": "item_id", "table": {"i1": 9.5}, "missing": None},
                          "category": {"field": "item_id", "table": {"i1": "toys"},
                                       "missing": "(unknown)"}},
              "counts": {"events_1h": {"by": "user_id", "time": "ts", "seconds": 3600}}}
    rows = [{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "0"},
            {"user_id": "u1", "item_id": "i2", "event_type": "purchase", "ts": "1800"},
            {"user_id": "u2", "item_id": "i1", "event_type": "view", "ts": "1900"},
            {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "3700"}]
    assert featurise(rows, source) == [
        {"event_type": "view", "price": 9.5, "category": "toys", "events_1h": 1.0},
        {"event_type": "purchase", "category": "(unknown)", "events_1h": 2.0},
        {"event_type": "view", "price": 9.5, "category": "toys", "events_1h": 1.0},
        {"event_type": "view", "price": 9.5, "category": "toys", "events_1h": 2.0},
    ]


def _register(registry: ModelRegistry, name: str, profile: dict[str, Any] | None,
              alias: str | None = "production") -> int:
    def write(folder: Path) -> None:
        (folder / "model.txt").write_text(name)

    writer = write if profile is None else with_reference(write, profile)
    return registry.register(name, writer=writer, params={}, metrics={}, data_fingerprint="x",
                             alias=alias).version


def test_served_reference_finds_the_service_model_and_falls_back(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    rows = [{"x": float(i)} for i in range(100)]
    served = build_profile(rows, source={}, service="fraud")
    _register(registry, "fraud-batch", build_profile(rows, source={}, service="fraud",
                                                     served=False))
    assert served_reference(registry, "fraud") is None
    _register(registry, "fraud-online", served)
    found = served_reference(registry, "fraud")
    assert found is not None and (found[0].label, found[1].label) == ("fraud-online:v1",) * 2
    assert json.loads((found[1].path / REFERENCE_FILE).read_text())["service"] == "fraud"
    # A version registered without a reference (the pipeline's) uses the last one's.
    _register(registry, "fraud-online", None)
    found = served_reference(registry, "fraud")
    assert found is not None and (found[0].label, found[1].label) == (
        "fraud-online:v2", "fraud-online:v1")
    assert served_reference(registry, "recommender") is None


def test_a_report_without_a_reference_names_the_fix(settings: Settings) -> None:
    with pytest.raises(NotFound, match="mlsuite recommender train"):
        drift_report(settings, "recommender")


# -- a recommender-shaped live window: stream fields, lookups, counts, the lake ---------

def test_event_stream_window_with_lookback_and_lake(settings: Settings, redis_client: Any,
                                                    ) -> None:
    stream = "test:events"
    source = {"stream": stream, "fields": ["event_type"],
              "counts": {"user_events_1h": {"by": "user_id", "time": "ts", "seconds": 3600}}}
    training = [{"user_id": f"u{i % 50}", "event_type": "purchase" if i % 10 == 0 else "view",
                 "ts": float(i)} for i in range(5000)]
    registry = ModelRegistry(settings.data_dir / "models")
    _register(registry, "shop", build_profile(featurise(training, source), source=source,
                                              service="shop"))
    now = 1_800_000_000.0
    # Two hours of a bot hammering the shop: old entries archived to the lake (the
    # worker's retention), the last hour still in Redis.
    old = [(f"{int((now - 5400 + i) * 1000)}-0",
            {"user_id": "bot", "event_type": "view", "ts": f"{now - 5400 + i}"})
           for i in range(0, 1800, 10)]
    Lake.from_settings(settings).write(stream, old)
    for i in range(0, 3600, 10):
        redis_client.xadd(stream, {"user_id": "bot", "event_type": "view", "ts": f"{now - 3600 + i}"},
                          id=f"{int((now - 3600 + i) * 1000)}-0")
    report = drift_report(settings, "shop", redis_client=redis_client, now=now)
    assert report["rows"] == 360  # the window only; the look-back fed the counts
    counts = report["features"]["user_events_1h"]
    # Every window event of the bot counts the hour before it, lake part included: 360.
    assert counts["live_mean"] > 300 and counts["drifted"] is True
    assert report["features"]["event_type"]["drifted"] is True  # views only, no purchase
    assert report["drift_share"] == 1.0 and report["dataset_drift"] is True


# -- the recommender's reference, written by its training, read off its event stream ----

@pytest.fixture(scope="module")
def recommender_dir(tmp_path_factory: pytest.TempPathFactory, shop_dir: Path) -> Path:
    """A data folder with the simulated shop and a production recommender trained on it."""
    import shutil

    from recommender.cli import train_and_register

    data_dir = tmp_path_factory.mktemp("drift-recommender")
    shutil.copytree(shop_dir, data_dir / "shop")
    train_and_register(Settings.from_env({}).with_(data_dir=data_dir), variants=("als",),
                       alias="production", progress=False)
    return data_dir


def _append(redis_client: Any, frame: Any) -> None:
    from recommender.history import Event, HistoryStore

    HistoryStore(redis_client).append([
        Event(str(r.user_id), str(r.item_id), str(r.event_type), r.timestamp.timestamp())
        for r in frame.itertuples()])


@pytest.mark.slow
def test_recommender_events_against_the_training_reference(
        recommender_dir: Path, settings: Settings, redis_client: Any) -> None:
    from recommender.data import load_interactions, load_table

    settings = settings.with_(data_dir=recommender_dir)
    interactions = load_interactions(recommender_dir / "shop" / "interactions.parquet")
    # Events drawn like the training data: the same mix of types, categories and prices.
    _append(redis_client, interactions.sample(3000, random_state=3).sort_values("timestamp"))
    report = drift_report(settings, "recommender", redis_client=redis_client)
    assert report["model"] == "recommender:v1" and report["rows"] == 3000
    features = report["features"]
    assert set(features) == {"event_type", "item_category", "item_price", "user_events_1h"}
    assert {n for n in ("event_type", "item_category", "item_price")
            if features[n]["drifted"]} == set(), features
    # A promotion: everyone buys the cheapest toys. The mix of types, categories and
    # prices all move.
    items = load_table(recommender_dir / "shop" / "items.parquet")
    toys = items[items["category"] == "toys"].nsmallest(3, "price")["item_id"].tolist()
    redis_client.delete("mlsuite:rec:events")
    promo = interactions.sample(1000, random_state=4).sort_values("timestamp").assign(
        event_type="purchase", item_id=[toys[i % 3] for i in range(1000)])
    _append(redis_client, promo)
    report = drift_report(settings, "recommender", redis_client=redis_client)
    flagged = {n for n, r in report["features"].items() if r["drifted"]}
    assert {"event_type", "item_category", "item_price"} <= flagged


def test_window_reads_in_chunks_keeps_the_newest_and_skips_bad_records(
        settings: Settings, redis_client: Any) -> None:
    from mlplatform.monitoring.driftreport import live_rows

    stream, now = "test:decisions", 1_800_000_000.0
    pipe = redis_client.pipeline()
    for i in range(2500):
        record = "{not json" if i == 2400 else json.dumps({"features": {"amount": float(i)}})
        pipe.xadd(stream, {"record": record}, id=f"{int((now - 2500 + i) * 1000)}-0")
    pipe.execute()
    source = {"stream": stream, "json_field": "record", "vector": "features"}
    lake = Lake.from_settings(settings)
    window = live_rows(redis_client, lake, source, now - 3600, now, max_rows=2200)
    assert window.truncated is True and window.skipped == 1
    amounts = [row["features"]["amount"] for row in window.rows]
    assert amounts == [float(i) for i in range(300, 2500) if i != 2400]  # the newest, in order
    whole = live_rows(redis_client, lake, source, now - 3600, now)
    assert not whole.truncated and len(whole.rows) == 2499 and all(whole.in_window)
    recent = live_rows(redis_client, lake, source, now - 100, now)
    assert len(recent.rows) == 100 - 1  # the bad record is among the newest hundred


def test_live_values_are_counted_as_one_value_at_a_time_would_count_them() -> None:
    """The report counts distinct values in one pass and converts all-number columns at
    once; the counts and numbers are those of keying and filtering each value alone,
    whatever the mix: 1 == 1.0 == True, -0.0 apart from 0, text, missing, NaN, lists."""
    import random

    from mlplatform.monitoring.driftreport import _category_counts, _json_row, _numbers
    from mlplatform.monitoring.reference import category_key

    def one_at_a_time(values: list) -> dict:
        counts: dict = {}
        for v in values:
            counts[category_key(v)] = counts.get(category_key(v), 0) + 1
        return counts

    rng = random.Random(3)
    pools = [[0, 0.0, -0.0, False, True, 1, 1.0, 2.5, "web", None, float("nan"), 10**17, 1e17],
             [0.0, -0.0, 1.0], [0, 1, True, False], [[1], 0.0, -0.0, "x"]]
    for pool in pools:
        for _ in range(300):
            values = [rng.choice(pool) for _ in range(rng.randint(0, 40))]
            assert _category_counts(values) == one_at_a_time(values), values
            numbers = np.array([v for v in values if isinstance(v, (int, float))], dtype=float)
            assert np.array_equal(_numbers(values), numbers, equal_nan=True), values
    assert _category_counts([-0.0, 0.0, 0, False]) == {"-0": 1, "0": 3}
    # What Python's JSON reads and msgspec refuses still reads (NaN from a json.dumps).
    assert math.isnan(_json_row('{"x": NaN}')["x"]) and _json_row('{"x": 1}') == {"x": 1}


def test_featurise_folds_one_hot_keys_whatever_the_vector_layout() -> None:
    """A vector's keys go plain or fold into their one-hot feature, whichever layout the
    rows have (rows of one layout share a plan); a plain key named like a one-hot feature
    is assigned in the vector's order, as one by one."""
    from mlplatform.monitoring.reference import NONE, featurise

    source = {"vector": "f", "onehot": {"mcat=": "merchant_category"}}
    rows = [{"f": {"amount": 5.0, "mcat=food": 0.0, "mcat=toys": 1.0}},
            {"f": {"amount": 7.0, "mcat=food": 1.0, "mcat=toys": 0.0}},
            {"f": {"mcat=food": 0.0, "amount": 9.0}},
            {"f": {"mcat=food": 1.0, "merchant_category": 3.0}},
            {"f": {"merchant_category": 3.0, "mcat=food": 1.0}},
            {"f": None}]
    assert featurise(rows, source) == [
        {"merchant_category": "toys", "amount": 5.0},
        {"merchant_category": "food", "amount": 7.0},
        {"merchant_category": NONE, "amount": 9.0},
        {"merchant_category": 3.0},
        {"merchant_category": "food"},
        {"merchant_category": NONE}]


def test_a_vector_source_reads_only_the_vector_of_each_record(
        settings: Settings, redis_client: Any) -> None:
    """The decision records' other fields are skipped, not built; a record msgspec
    refuses (NaN) is read by json; one that is not JSON, or lacks the field, is skipped."""
    from mlplatform.monitoring.driftreport import live_rows

    stream, now = "test:vector-only", 1_800_000_000.0
    records = [json.dumps({"features": {"amount": 1.0}, "reasons": [{"code": "x"}]}),
               '{"features": {"amount": NaN}, "score": 0.5}', "{not json", None,
               json.dumps({"score": 0.1})]
    for i, record in enumerate(records):
        fields = {"other": "1"} if record is None else {"record": record}
        redis_client.xadd(stream, fields, id=f"{int((now - 10 + i) * 1000)}-0", maxlen=10)
    source = {"stream": stream, "json_field": "record", "vector": "features"}
    window = live_rows(redis_client, Lake.from_settings(settings), source, now - 60, now)
    assert window.skipped == 2 and len(window.rows) == 3
    assert window.rows[0] == {"features": {"amount": 1.0}}
    assert math.isnan(window.rows[1]["features"]["amount"])
    assert window.rows[2] == {"features": None}


def test_the_console_shows_a_fresh_published_report_and_computes_a_stale_one(
        settings: Settings, redis_client: Any) -> None:
    """A worker publishes its report every minute: the console shows it while it is at
    most two minutes old, instead of computing its own; an older one is computed again."""
    import time

    from mlplatform.monitoring.collector import Collector
    from mlplatform.monitoring.driftreport import publish

    now = time.time()
    report = {"service": "fraud", "model": "fraud-online:v9", "rows": 123,
              "drift_share": 0.0, "features": {}, "at": now - 30}
    publish(redis_client, "fraud", report)
    collector = Collector(settings, redis_client, services=("fraud",))
    shown = collector._drift("fraud", now)
    assert shown == {"available": True, **report}
    # Three minutes later the worker has not published again: computed here (this
    # settings folder has no fraud model, so the console says why).
    stale = collector._drift("fraud", now + 150)
    assert stale["available"] is False and "fraud" in stale["reason"]
