"""The simulators write exactly the brief's schema, deterministically, with learnable structure.

Small worlds on real parquet files in a temp folder: seed 7 twice (must match byte for
byte) and seed 8 (must differ). The shop must reward a good recommender (tastes show in
the interactions, purchase probability follows relevance); the payments stream must
hold every fraud pattern with its signature, and the drift pattern only after its start,
and be realistically hard: legit bursts that look like fraud, noisy labels, missing
profiles, and a fraud model that is good but far from perfect on it.
"""

from __future__ import annotations

import doctest
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplatform.simulate import (
    DEFAULT_SIZES,
    DRIFT_PATTERN,
    EVENT_TYPES,
    FRAUD_PATTERNS,
    FRIENDLY_FRAUD,
    ShopWorld,
    simulate_all,
    simulate_payments,
    simulate_shop,
)
from mlplatform.simulate import shop as shop_module
from mlplatform.simulate.bank import COUNTRY_CURRENCY

SHOP: dict[str, Any] = {"n_users": 300, "n_items": 150, "n_interactions": 20_000}
PAYMENTS: dict[str, Any] = {"n_cards": 400, "n_merchants": 60, "n_transactions": 15_000}
TS = "timestamp[us, tz=UTC]"
FILES = ["shop/users.parquet", "shop/items.parquet", "shop/interactions.parquet",
         "shop/world.npz", "payments/cards.parquet", "payments/merchants.parquet",
         "payments/transactions.parquet"]
MINUTE = pd.Timedelta(minutes=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """name -> (data dir, summaries): seed 7 twice and seed 8."""
    out = {}
    for name, seed in (("a", 7), ("a_again", 7), ("b", 8)):
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, {
            "shop": simulate_shop(d, seed=seed, progress=False, **SHOP),
            "payments": simulate_payments(d, seed=seed, progress=False, **PAYMENTS),
        })
    return out


@pytest.fixture(scope="module")
def data(runs: dict[str, tuple[Path, dict[str, Any]]]) -> Path:
    return runs["a"][0]


@pytest.fixture(scope="module")
def summary(runs: dict[str, tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    return runs["a"][1]


@pytest.fixture(scope="module")
def tx(data: Path) -> pd.DataFrame:
    """Transactions joined with their card and merchant."""
    t = pd.read_parquet(data / "payments/transactions.parquet")
    cards = pd.read_parquet(data / "payments/cards.parquet").drop(columns="event_timestamp")
    merchants = pd.read_parquet(data / "payments/merchants.parquet")
    # Left joins: some cards and merchants have no profile row (missing data).
    return t.merge(cards, on="card_id", how="left").merge(
        merchants.drop(columns="event_timestamp"), on="merchant_id", how="left")


@pytest.fixture(scope="module")
def interactions(data: Path) -> pd.DataFrame:
    return pd.read_parquet(data / "shop/interactions.parquet")


@pytest.fixture(scope="module")
def items(data: Path) -> pd.DataFrame:
    return pd.read_parquet(data / "shop/items.parquet")


@pytest.fixture(scope="module")
def world(data: Path) -> ShopWorld:
    return ShopWorld.load(data / "shop")


# --- determinism and schema ------------------------------------------------------------

@pytest.mark.parametrize("name", FILES)
def test_same_seed_writes_identical_bytes(runs: dict, name: str) -> None:
    first, again = (runs[k][0] / name for k in ("a", "a_again"))
    assert first.read_bytes() == again.read_bytes(), f"{name} differs between two seed-7 runs"


@pytest.mark.parametrize("name", ["shop/interactions.parquet", "payments/transactions.parquet"])
def test_different_seed_writes_different_data(runs: dict, name: str) -> None:
    a, b = (pd.read_parquet(runs[k][0] / name) for k in ("a", "b"))
    assert not a.equals(b), f"{name} is the same for seeds 7 and 8"


EXPECTED_SCHEMAS = {
    "shop/users.parquet": {"user_id": "string", "segment": "string", "country": "string",
                           "event_timestamp": TS},
    "shop/items.parquet": {"item_id": "string", "category": "string", "price": "double",
                           "in_stock": "bool", "event_timestamp": TS},
    "shop/interactions.parquet": {"user_id": "string", "item_id": "string",
                                  "event_type": "string", "timestamp": TS},
    "payments/cards.parquet": {"card_id": "string", "home_country": "string",
                               "card_age_days": "int64", "avg_amount": "double",
                               "event_timestamp": TS},
    "payments/merchants.parquet": {"merchant_id": "string", "merchant_category": "string",
                                   "merchant_country": "string", "risk_score": "double",
                                   "event_timestamp": TS},
    "payments/transactions.parquet": {
        "transaction_id": "string", "timestamp": TS, "card_id": "string",
        "merchant_id": "string", "amount": "double", "currency": "string", "country": "string",
        "channel": "string", "device_id": "string", "is_fraud": "bool",
        "fraud_pattern": "string", "labelled_at": TS, "true_fraud": "bool"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_schema_matches_the_brief(data: Path, name: str) -> None:
    schema = pq.read_schema(data / name)
    assert {f.name: str(f.type) for f in schema} == EXPECTED_SCHEMAS[name]
    assert list(schema.names) == list(EXPECTED_SCHEMAS[name]), "column order"


@pytest.mark.parametrize(("name", "column", "pattern"), [
    ("shop/users.parquet", "user_id", r"u\d{6}"),
    ("shop/items.parquet", "item_id", r"i\d{5}"),
    ("payments/cards.parquet", "card_id", r"c\d{6}"),
    ("payments/merchants.parquet", "merchant_id", r"m\d{5}"),
    ("payments/transactions.parquet", "transaction_id", r"t\d{7}"),
    ("shop/users.parquet", "country", r"[A-Z]{2}"),
    ("payments/cards.parquet", "home_country", r"[A-Z]{2}"),
    ("payments/transactions.parquet", "country", r"[A-Z]{2}"),
    ("payments/transactions.parquet", "currency", r"[A-Z]{3}"),
])
def test_ids_and_codes_are_well_formed_and_ids_unique(
    data: Path, name: str, column: str, pattern: str
) -> None:
    values = pq.read_table(data / name, columns=[column]).column(0).to_pylist()
    if column == "home_country":  # a profile field: may be missing
        values = [v for v in values if v is not None]
    bad = [v for v in values if v is None or not re.fullmatch(pattern, v)]
    assert not bad, f"{name}:{column} values not matching {pattern}: {bad[:5]}"
    if column.endswith("_id"):
        assert len(set(values)) == len(values), f"{name}:{column} has duplicates"


@pytest.mark.parametrize(("name", "column"), [
    ("shop/interactions.parquet", "timestamp"), ("payments/transactions.parquet", "timestamp")])
def test_streams_are_sorted_and_inside_the_period(
    data: Path, summary: dict, name: str, column: str
) -> None:
    ts = pd.read_parquet(data / name, columns=[column])[column]
    part = summary[name.split("/")[0]]
    assert ts.is_monotonic_increasing
    assert ts.min() >= pd.Timestamp(part["start"]) and ts.max() < pd.Timestamp(part["end"])


@pytest.mark.parametrize("name", ["shop/users.parquet", "shop/items.parquet",
                                  "payments/cards.parquet", "payments/merchants.parquet"])
def test_entity_rows_are_stamped_at_the_start(data: Path, summary: dict, name: str) -> None:
    ts = pd.read_parquet(data / name, columns=["event_timestamp"])["event_timestamp"]
    assert (ts == pd.Timestamp(summary[name.split("/")[0]]["start"])).all()


# --- payments --------------------------------------------------------------------------

def test_transactions_are_consistent(tx: pd.DataFrame) -> None:
    assert (tx.amount >= 0).all()
    assert set(tx.channel) == {"card_present", "online"}
    assert (tx.device_id.isna() == (tx.channel == "card_present")).all(), "device iff online"
    assert (tx.currency == tx.country.map(COUNTRY_CURRENCY)).all()
    assert (tx.true_fraud == tx.fraud_pattern.isin(FRAUD_PATTERNS[1:])).all()
    assert set(tx.fraud_pattern[tx.is_fraud & ~tx.true_fraud]) == {FRIENDLY_FRAUD}
    assert not (tx.fraud_pattern == FRIENDLY_FRAUD)[~tx.is_fraud].any()
    legit = tx[~tx.true_fraud]
    assert (legit.country == legit.home_country).mean() > 0.9, "legit mostly at home"


def test_labels_arrive_after_the_transaction(tx: pd.DataFrame) -> None:
    delay = tx.labelled_at - tx.timestamp
    assert (delay[~tx.is_fraud] == pd.Timedelta(days=2)).all(), "settled: fixed delay"
    fraud = delay[tx.is_fraud]
    assert fraud.between(pd.Timedelta(days=1), pd.Timedelta(days=20)).all(), fraud.describe()
    assert fraud.nunique() > 1, "chargeback delays vary"


def test_fraud_rate_is_sane_and_the_drift_pattern_matters(tx: pd.DataFrame, summary: dict) -> None:
    assert 0.005 <= tx.is_fraud.mean() <= 0.03
    p = summary["payments"]
    assert p["fraud"] == tx.is_fraud.sum() and p["transactions"] == len(tx)
    assert p["true_fraud"] == tx.true_fraud.sum()
    after = tx[tx.timestamp >= pd.Timestamp(p["drift_start"])]
    share = (after.fraud_pattern == DRIFT_PATTERN).sum() / after.true_fraud.sum()
    assert share > 0.15, f"after the drift start, {DRIFT_PATTERN} is only {share:.0%} of fraud"


@pytest.mark.parametrize("pattern", [p for p in FRAUD_PATTERNS if p != "none"])
def test_every_fraud_pattern_is_present(tx: pd.DataFrame, pattern: str) -> None:
    assert (tx.fraud_pattern == pattern).sum() > 0
    assert (tx.is_fraud & (tx.fraud_pattern == pattern)).sum() > 0, "and labelled"


def test_drift_pattern_starts_part_way_through(tx: pd.DataFrame, summary: dict) -> None:
    start = pd.Timestamp(summary["payments"]["drift_start"])
    before = tx[tx.timestamp < start]
    assert pd.Timestamp(summary["payments"]["start"]) < start < tx.timestamp.max()
    assert (before.fraud_pattern == DRIFT_PATTERN).sum() == 0
    assert (tx[tx.timestamp >= start].fraud_pattern == DRIFT_PATTERN).sum() > 0
    assert before.is_fraud.sum() > 0, "other patterns run before the drift"


def _max_in_window(f: pd.DataFrame, key: str, window: pd.Timedelta, distinct: str = "") -> pd.Series:
    """Per key: the most rows (or distinct values of ``distinct``) within any window."""
    out = {}
    for k, g in f.sort_values("timestamp").groupby(key):
        ts = g.timestamp.dt.tz_convert(None).to_numpy()
        ends = np.searchsorted(ts, ts + window.to_timedelta64(), side="right")
        out[k] = max((g[distinct].iloc[i:e].nunique() if distinct else e - i)
                     for i, e in enumerate(ends))
    return pd.Series(out, dtype=float)


def _ratio(f: pd.DataFrame) -> pd.Series:
    """Amount over the card profile's usual amount (an estimate; null when missing)."""
    return (f.amount / f.avg_amount).dropna()


def _known_pairs(tx: pd.DataFrame) -> set[tuple[str, str]]:
    legit = tx[~tx.true_fraud & tx.device_id.notna()]
    return set(zip(legit.card_id, legit.device_id, strict=True))


def _card_testing(f: pd.DataFrame, tx: pd.DataFrame) -> None:
    assert (f.channel == "online").all() and f.amount.max() <= 25.0
    assert f.amount.median() <= 5.0, "mostly tiny amounts"
    assert (_max_in_window(f, "card_id", 20 * MINUTE) >= 2).all(), "tries in quick succession"
    assert (_max_in_window(f, "card_id", 10 * MINUTE) >= 8).mean() > 0.2, "some long bursts"
    assert (f.device_id.map(f.groupby("device_id").card_id.nunique()) > 1).any(), "ring devices"


def _account_takeover(f: pd.DataFrame, tx: pd.DataFrame) -> None:
    assert (f.channel == "online").all() and _ratio(f).median() > 2.0
    abroad = (f.country != f.home_country)[f.home_country.notna()].mean()
    assert 0.3 < abroad < 0.8, f"from abroad or behind a home proxy: {abroad:.0%} abroad"
    known = _known_pairs(tx)
    new = np.mean([pair not in known for pair in zip(f.card_id, f.device_id, strict=True)])
    assert 0.6 < new < 0.95, f"mostly on a new device, sometimes the owner's: {new:.0%}"


def _merchant_attack(f: pd.DataFrame, tx: pd.DataFrame) -> None:
    assert _ratio(f).median() > 1.5
    merchants = tx.drop_duplicates("merchant_id").risk_score
    assert f.risk_score.median() > merchants.median(), "risky merchants are hit more often"
    assert (_max_in_window(f, "merchant_id", 24 * 60 * MINUTE, distinct="card_id") >= 8).all()


def _stolen_card(f: pd.DataFrame, tx: pd.DataFrame) -> None:
    assert (f.channel == "card_present").all()
    assert (f.country == f.home_country)[f.home_country.notna()].all()
    assert 1.0 < _ratio(f).median() < 4.0, "a little above the owner's usual"
    assert (_max_in_window(f, "card_id", 12 * 60 * MINUTE) >= 2).mean() > 0.8


def _bust_out(f: pd.DataFrame, tx: pd.DataFrame) -> None:
    assert (f.country == f.home_country)[f.home_country.notna()].all()
    assert _ratio(f).median() > 2.0
    assert set(f.channel) == {"online", "card_present"}
    legit_online = tx[~tx.true_fraud & tx.device_id.notna()]
    regular = legit_online.groupby("card_id").size().loc[lambda n: n >= 5].index
    online = f[(f.channel == "online") & f.card_id.isin(regular)]
    assert len(online), "no bust-out card with a legit online history to compare"
    known = _known_pairs(tx)
    assert np.mean([p in known for p in zip(online.card_id, online.device_id, strict=True)]) > 0.8
    assert (_max_in_window(f, "card_id", 24 * 60 * MINUTE) >= 4).mean() > 0.9
    assert (_max_in_window(f, "card_id", 24 * 60 * MINUTE, distinct="merchant_id") >= 3
            ).mean() > 0.9


@pytest.mark.parametrize(("pattern", "check"), [
    pytest.param(name, check, id=name) for name, check in [
        ("card_testing", _card_testing), ("account_takeover", _account_takeover),
        ("merchant_attack", _merchant_attack), ("stolen_card", _stolen_card),
        ("bust_out", _bust_out)]
])
def test_fraud_pattern_has_its_signature(
    tx: pd.DataFrame, pattern: str, check: Callable[[pd.DataFrame, pd.DataFrame], None]
) -> None:
    check(tx[tx.fraud_pattern == pattern], tx)


def test_every_pattern_has_a_signature_test() -> None:
    assert set(FRAUD_PATTERNS) - {"none"} == {
        "card_testing", "account_takeover", "merchant_attack", "stolen_card", "bust_out"}


# --- realism: noisy labels, missing profiles, legit bursts, overlap ----------------------

def test_labels_are_noisy_and_the_truth_is_kept(tx: pd.DataFrame, summary: dict) -> None:
    p = summary["payments"]
    unreported = tx.true_fraud & ~tx.is_fraud
    friendly = tx.is_fraud & ~tx.true_fraud
    assert 0.05 < unreported.sum() / tx.true_fraud.sum() < 0.3, "some fraud is never reported"
    assert 0.01 < friendly.sum() / tx.is_fraud.sum() < 0.12, "some disputes are not fraud"
    assert (p["unreported_fraud"], p["friendly_fraud"]) == (unreported.sum(), friendly.sum())
    delay = (tx.labelled_at - tx.timestamp)
    assert (delay[unreported] == pd.Timedelta(days=2)).all(), "unreported: settles as legit"
    assert (delay[friendly] > pd.Timedelta(days=1)).all(), "disputes come late too"


def test_some_profiles_are_missing_or_incomplete(data: Path, tx: pd.DataFrame,
                                                 summary: dict) -> None:
    cards = pd.read_parquet(data / "payments/cards.parquet")
    merchants = pd.read_parquet(data / "payments/merchants.parquet")
    assert (~tx.card_id.isin(cards.card_id)).any(), "payments of cards without a profile"
    assert (~tx.merchant_id.isin(merchants.merchant_id)).any(), "merchants without a profile"
    assert cards[["home_country", "card_age_days", "avg_amount"]].isna().any(axis=1).sum() > 0
    assert merchants[["merchant_category", "risk_score"]].isna().any(axis=1).sum() > 0
    assert cards.iloc[0].notna().all() and merchants.iloc[0].notna().all(), "reference rows"
    profiles = summary["payments"]["profiles"]
    assert profiles["cards_without_profile"] == PAYMENTS["n_cards"] - len(cards)
    assert profiles["merchants_without_profile"] == PAYMENTS["n_merchants"] - len(merchants)


def test_legit_bursts_exist(tx: pd.DataFrame, summary: dict) -> None:
    stories = summary["payments"]["legit_by_story"]
    assert min(stories.values()) > 0, stories
    legit = tx[~tx.true_fraud].copy()
    legit["day"] = legit.timestamp.dt.floor("D")
    # Travel: card-present payments in one foreign country on several days.
    away = legit[(legit.channel == "card_present") & legit.home_country.notna()
                 & (legit.country != legit.home_country)]
    days_abroad = away.groupby(["card_id", "country"]).day.nunique()
    assert (days_abroad >= 2).sum() >= 5, "trips abroad"
    # Subscriptions: the same amount at the same merchant, week after week.
    online = legit[legit.channel == "online"]
    key = ["card_id", "merchant_id", "amount"]
    repeated = online[online.groupby(key).timestamp.transform("size") >= 3]
    spacing = repeated.groupby(key).timestamp.agg(lambda t: t.diff().median())
    assert (spacing == pd.Timedelta(days=7)).sum() >= 5, "weekly subscriptions"
    # In-app purchase bursts: several small online payments within minutes.
    small = online[online.amount < 10]
    assert (_max_in_window(small, "card_id", 10 * MINUTE) >= 4).sum() >= 5, "legit bursts"
    # Holiday shopping: many merchants on one day, concentrated on the sale days.
    busy = legit.groupby(["card_id", "day"]).merchant_id.nunique()
    sprees = busy[busy >= 5].reset_index().day.value_counts()
    assert sprees.iloc[:2].mean() >= 2 * sprees.median(), "two sale days stand out"
    # New devices (phone changes, a new browser) for legit cards with an online history.
    seen = online.sort_values("timestamp").groupby("card_id").device_id.transform(
        lambda d: ~d.duplicated())
    first = online.sort_values("timestamp").groupby("card_id").cumcount() == 0
    assert (seen & ~first).mean() > 0.02, "legit payments on a device new to the card"
    assert summary["payments"]["phone_changes"] > 0 and summary["payments"]["trips"] > 0


def test_legit_and_fraud_overlap(tx: pd.DataFrame) -> None:
    """No single field tells fraud apart: each has legit payments on the fraud side."""
    legit, fraud = tx[~tx.true_fraud], tx[tx.true_fraud]
    ratio = _ratio(legit)
    assert (ratio > 5).mean() > 0.005, "big legit purchases"
    assert (_ratio(fraud[fraud.fraud_pattern != "card_testing"]) < 1.5).mean() > 0.05
    night = legit.timestamp.dt.hour < 6
    assert night.mean() > 0.03 and (fraud.timestamp.dt.hour >= 8).mean() > 0.5
    foreign_online = (legit.channel == "online") & (legit.country != legit.home_country)
    assert foreign_online.sum() > 0 and (legit.country != legit.merchant_country).mean() > 0.1
    assert (fraud.risk_score < fraud.risk_score.median()).any()


@pytest.fixture(scope="module")
def featurised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """40k simulated payments through the fraud service's own feature code."""
    from fraud.training import load_dataset

    folder = tmp_path_factory.mktemp("featurised")
    summary = simulate_payments(folder, seed=11, progress=False, n_cards=800, n_merchants=100,
                                n_transactions=40_000)
    return load_dataset(folder / "payments/transactions.parquet"), summary


def _fitted(data: Any, end: int) -> Any:
    from fraud.models import BatchGBM, feature_names_of

    return BatchGBM(feature_names_of(data.vectors[:end]), max_iter=100).fit(
        data.vectors[:end], data.labels[:end]).predictor()


def test_a_good_model_is_good_but_not_perfect(featurised: tuple[Any, dict[str, Any]]) -> None:
    """The fraud service's batch model on the observed labels: far better than chance, far
    from the 0.999 a caricature of fraud gives."""
    from sklearn.metrics import roc_auc_score

    data, _ = featurised
    cut = data.timestamps[0] + 0.7 * (data.timestamps[-1] - data.timestamps[0])
    split = int(np.searchsorted(data.timestamps, cut))
    model = _fitted(data, split)
    auc = roc_auc_score(data.labels[split:], model.predict(model.matrix(data.vectors[split:])))
    assert 0.8 < auc < 0.97, f"validation ROC AUC {auc:.4f}"


def test_the_drift_pattern_is_missed_by_a_model_trained_before_it(
        featurised: tuple[Any, dict[str, Any]]) -> None:
    """Scored on the last half of the drift period at 2% FPR: a model fitted before the
    drift catches far fewer bust-outs than one that has seen the first half's labels."""
    from fraud.thresholds import threshold_for_fpr

    data, summary = featurised
    ts, drift = data.timestamps, pd.Timestamp(summary["drift_start"]).timestamp()
    start = int(np.searchsorted(ts, drift))
    middle = int(np.searchsorted(ts, drift + (ts[-1] - drift) / 2))
    pattern = data.frame["fraud_pattern"].to_numpy()[middle:] == DRIFT_PATTERN
    assert pattern.sum() >= 20
    recall = []
    for end in (start, middle):
        model = _fitted(data, end)
        scores = model.predict(model.matrix(data.vectors[middle:]))
        cut = threshold_for_fpr(scores[~data.labels[middle:]], 0.02)
        recall.append(float(np.mean(scores[pattern] >= cut)))
    static, updated = recall
    assert static < 0.4 and updated > static + 0.25, (static, updated)


# --- shop ------------------------------------------------------------------------------

def test_funnel_has_plausible_ratios(interactions: pd.DataFrame, summary: dict) -> None:
    counts = interactions.event_type.value_counts()
    assert set(counts.index) == set(EVENT_TYPES)
    assert 0.03 <= counts["add_to_cart"] / counts["view"] <= 0.3
    assert 0.3 <= counts["purchase"] / counts["add_to_cart"] <= 0.8
    assert summary["shop"]["interactions"] == len(interactions)
    assert abs(len(interactions) - SHOP["n_interactions"]) < 0.2 * SHOP["n_interactions"]


@pytest.mark.parametrize(("later", "earlier"), [("purchase", "add_to_cart"),
                                                ("add_to_cart", "view")])
def test_every_step_follows_the_previous_one(
    interactions: pd.DataFrame, later: str, earlier: str
) -> None:
    step = interactions[interactions.event_type == later]
    prev = interactions[interactions.event_type == earlier].assign(prev_ts=lambda d: d.timestamp)
    joined = pd.merge_asof(step, prev[["timestamp", "user_id", "item_id", "prev_ts"]],
                           on="timestamp", by=["user_id", "item_id"],
                           allow_exact_matches=False)
    assert joined.prev_ts.notna().all(), f"{later} without an earlier {earlier}"


def test_out_of_stock_items_are_seen_but_never_bought(
    interactions: pd.DataFrame, items: pd.DataFrame
) -> None:
    assert 0.02 <= (~items.in_stock).mean() <= 0.15
    gone = set(items.item_id[~items.in_stock])
    bought = interactions[interactions.event_type != "view"]
    assert not bought.item_id.isin(gone).any()


def test_interactions_follow_user_tastes(
    interactions: pd.DataFrame, items: pd.DataFrame, world: ShopWorld
) -> None:
    """A user's views land in their three best-liked categories far above chance."""
    category = items.set_index("item_id").category
    names = sorted(category.unique())
    rel = world.relevance_matrix()
    by_cat = np.stack([rel[:, (category.to_numpy() == c)].mean(axis=1) for c in names], axis=1)
    top3 = {u: {names[k] for k in np.argsort(-by_cat[row])[:3]}
            for row, u in enumerate(world.user_ids)}
    views = interactions[interactions.event_type == "view"]
    observed, chance = [], []
    for user, g in views.groupby("user_id"):
        if len(g) >= 10:
            observed.append(g.item_id.map(category).isin(top3[user]).mean())
            chance.append(category.isin(top3[user]).mean())
    assert len(observed) > 100
    assert np.mean(observed) > 2 * np.mean(chance), (np.mean(observed), np.mean(chance))


def test_item_popularity_is_long_tailed(interactions: pd.DataFrame) -> None:
    views = interactions[interactions.event_type == "view"].item_id.value_counts()
    top = views.iloc[: max(1, SHOP["n_items"] // 10)].sum() / views.sum()
    assert top > 0.3, f"top 10% of items get only {top:.0%} of views"


def test_world_matches_the_tables(data: Path, world: ShopWorld, items: pd.DataFrame) -> None:
    users = pd.read_parquet(data / "shop/users.parquet")
    assert world.user_ids.tolist() == users.user_id.tolist()
    assert world.item_ids.tolist() == items.item_id.tolist()
    assert world.in_stock.tolist() == items.in_stock.tolist()


def test_purchase_probability_follows_relevance(world: ShopWorld) -> None:
    items = world.item_ids.tolist()
    for user in world.user_ids[:20].tolist():
        rel, buy = world.relevance(user, items), world.purchase_probability(user, items)
        assert ((buy >= 0) & (buy <= 1)).all() and (buy[~world.in_stock] == 0).all()
        stocked = np.flatnonzero(world.in_stock)
        order = stocked[np.argsort(-rel[stocked])]
        best, worst = buy[order[:10]].mean(), buy[order[-10:]].mean()
        assert best > 5 * worst, (user, best, worst)
        assert np.all(np.diff(buy[order]) <= 1e-12), "monotone in relevance among stocked items"


@pytest.mark.parametrize(("user", "item", "message"), [
    ("u999999", "i00001", "unknown user_id 'u999999'"),
    ("u000001", "nope", "unknown item_id 'nope'"),
])
def test_world_rejects_unknown_ids(world: ShopWorld, user: str, item: str, message: str) -> None:
    with pytest.raises(KeyError, match=message):
        world.purchase_probability(user, [item])


# --- entry points ----------------------------------------------------------------------

def test_simulate_all_writes_both_datasets(tmp_path: Path) -> None:
    tiny = {"n_users": 40, "n_items": 30, "n_interactions": 800,
            "n_cards": 50, "n_merchants": 20, "n_transactions": 1_000}
    summary = simulate_all(tmp_path, seed=1, progress=False, **tiny)
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"
    assert summary["payments"]["transactions"] == pq.read_metadata(
        tmp_path / "payments/transactions.parquet").num_rows
    assert set(DEFAULT_SIZES) == set(tiny)


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: simulate_all(d, seed=1, n_user=3), "unknown size 'n_user'"),
    (lambda d: simulate_shop(d, seed=1, n_users=0, n_items=5, n_interactions=5),
     "n_users must be an integer >= 1, got 0"),
    (lambda d: simulate_payments(d, seed=1, n_cards=5, n_merchants=3, n_transactions=5),
     "n_merchants must be >= 12"),
], ids=["unknown-size", "zero-users", "too-few-merchants"])
def test_bad_sizes_are_rejected_by_name(
    tmp_path: Path, call: Callable[[Path], object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call(tmp_path)


@pytest.mark.parametrize("module", ["_common", "bank", "patterns", "shopworld", "shop", "payments", ""])
def test_doctests(module: str) -> None:
    mod = importlib.import_module("mlplatform.simulate" + (f".{module}" if module else ""))
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_timestamps_are_utc_microseconds(data: Path) -> None:
    table = pq.read_table(data / "payments/transactions.parquet")
    assert table.schema.field("labelled_at").type == pa.timestamp("us", tz="UTC")
    assert str(pd.read_parquet(data / "shop/interactions.parquet").timestamp.dtype) == \
        "datetime64[us, UTC]"


def test_memory_bounded_sampling_draws_like_the_cached_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interactions: pd.DataFrame
) -> None:
    """Big catalogs build CDF rows per day in blocks; the draws must match the small path."""
    monkeypatch.setattr(shop_module, "_CACHE_CELLS", 0)
    monkeypatch.setattr(shop_module, "_CDF_BLOCK", 40 * SHOP["n_items"])  # many small blocks
    simulate_shop(tmp_path, seed=7, progress=False, **SHOP)
    blocked = pd.read_parquet(tmp_path / "shop/interactions.parquet")
    assert len(blocked) == len(interactions)
    assert (blocked.item_id == interactions.item_id).mean() > 0.999
