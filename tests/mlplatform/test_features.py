"""FeatureStoreAdapter on a real Feast store in a temp folder, SQLite and Redis online stores.

Each test writes a few rows of parquet in the simulator's schema into its own data
folder, applies feature_repo/ and materializes; nothing is mocked. The Redis variant
runs on the session's real redis-server (flushed before each test) with redis-py 8,
which feast's own [redis] extra does not allow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from mlplatform import feast_config
from mlplatform.config import Settings, source_root
from mlplatform.errors import ConfigError, Unavailable
from mlplatform.features import FeatureStoreAdapter
from mlplatform.redisdb import free_port

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")

USERS = {"user_id": ["u000001", "u000002"], "segment": ["bargain", "premium"],
         "country": ["DE", "FR"]}
ITEMS = {"item_id": ["i00001", "i00002", "i00003"], "category": ["books", "toys", "tech"],
         "price": [9.5, 19.0, 299.0], "in_stock": [True, True, False]}
CARDS = {"card_id": ["c000001", "c000002"], "home_country": ["DE", "US"],
         "card_age_days": [10, 1200], "avg_amount": [20.0, 80.5]}
MERCHANTS = {"merchant_id": ["m00001", "m00002"], "merchant_category": ["grocery", "travel"],
             "merchant_country": ["DE", "GB"], "risk_score": [0.1, 0.9]}
# Feast's user profiles come from the tokenised copy of the shop's users (recommender.pii
# writes it); these ids stand for tokens: Feast passes them through as they are.
TABLES = {"shop/users.tokenised.parquet": USERS, "shop/items.parquet": ITEMS,
          "payments/cards.parquet": CARDS, "payments/merchants.parquet": MERCHANTS}


def write_table(path: Path, columns: dict[str, list], at: datetime = T0) -> None:
    """One parquet file in the simulator's schema (event_timestamp: timestamp[us, tz=UTC])."""
    n = len(next(iter(columns.values())))
    table = pa.table({**{k: pa.array(v) for k, v in columns.items()},
                      "event_timestamp": pa.array([at] * n, type=TS)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_data(data_dir: Path) -> None:
    for name, columns in TABLES.items():
        write_table(data_dir / name, columns)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Settings of a data folder holding the tiny dataset, for one online store."""
    write_data(settings.data_dir)
    return settings.with_(feast_online_store=request.param)


@pytest.fixture
def store(store_settings: Settings) -> FeatureStoreAdapter:
    """Applied and materialized: ready for online reads."""
    adapter = FeatureStoreAdapter.from_settings(store_settings)
    adapter.apply()
    adapter.materialize()
    return adapter


@pytest.fixture
def sqlite_settings(settings: Settings) -> Settings:
    write_data(settings.data_dir)
    return settings.with_(feast_online_store="sqlite")


# --- apply / materialize ------------------------------------------------------------


def test_apply_registers_the_catalogue_and_is_idempotent(sqlite_settings: Settings) -> None:
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings)
    first = adapter.apply()
    for expected in ("Entity item", "FeatureView item_catalogue", "FeatureView card_profile",
                     "PushSource item_catalogue_push", "FeatureService recommender_v1",
                     "FeatureService fraud_v1", "FileSource shop_users"):
        assert expected in first.applied
    assert first.deleted == ()
    assert adapter.apply().deleted == (), "a second apply must not delete anything"


def test_feast_writes_only_into_the_data_folder(sqlite_settings: Settings) -> None:
    repo = sqlite_settings.feast_repo

    def snapshot() -> dict[str, float]:
        return {str(p.relative_to(repo)): p.stat().st_mtime for p in repo.rglob("*")}

    before = snapshot()
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings)
    adapter.apply()
    adapter.materialize()
    adapter.online_feature("recommender_v1", {"user_id": "u000001", "item_id": "i00001"})
    assert snapshot() == before, "feature_repo/ was written to"
    feast_dir = sqlite_settings.data_dir / "feast"
    assert (feast_dir / "registry.db").is_file()
    assert (feast_dir / "online.db").is_file()


def test_materialize_is_full_first_then_incremental(sqlite_settings: Settings) -> None:
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings)
    adapter.apply()
    first_end = datetime.now(UTC)
    windows = adapter.materialize(first_end)
    assert windows["item_catalogue"][0] == datetime(1970, 1, 1, tzinfo=UTC)

    # A price change recorded after the first run; the next run loads only what is new.
    changed_at = first_end + timedelta(seconds=1)
    write_table(sqlite_settings.data_dir / "shop/items.parquet",
                {**ITEMS, "price": [9.5, 15.0, 299.0]}, at=changed_at)
    windows = adapter.materialize(changed_at + timedelta(seconds=1))
    assert windows["item_catalogue"][0] == first_end
    assert adapter.online_feature(["item_catalogue:price"], {"item_id": "i00002"})["price"] == 15.0


def test_materialize_skips_views_whose_files_are_missing(settings: Settings) -> None:
    write_table(settings.data_dir / "shop/items.parquet", ITEMS)  # nothing else simulated
    adapter = FeatureStoreAdapter.from_settings(settings)
    adapter.apply()
    assert set(adapter.materialize()) == {"item_catalogue"}
    assert adapter.online_feature(["item_catalogue:category"], {"item_id": "i00003"}) == {
        "item_id": "i00003", "category": "tech"}


# --- online reads (both online stores) ----------------------------------------------


def test_read_one_entity(store: FeatureStoreAdapter) -> None:
    row = store.online_feature(["item_catalogue:price", "item_catalogue:in_stock"],
                               {"item_id": "i00002"})
    assert row == {"item_id": "i00002", "price": 19.0, "in_stock": True}


def test_read_many_entities_keeps_request_order(store: FeatureStoreAdapter) -> None:
    ids = ["i00003", "i99999", "i00001", "i00003"]
    rows = store.online_features(["item_catalogue:category", "item_catalogue:in_stock"],
                                 [{"item_id": i} for i in ids])
    assert [r["item_id"] for r in rows] == ids
    assert [r["category"] for r in rows] == ["tech", None, "books", "tech"]
    assert [r["in_stock"] for r in rows] == [False, None, True, False], "unknown id reads None"


def test_feature_service_returns_plain_typed_names(store: FeatureStoreAdapter) -> None:
    row = store.online_feature("fraud_v1", {"card_id": "c000002", "merchant_id": "m00002"})
    assert row == {"card_id": "c000002", "merchant_id": "m00002",
                   "home_country": "US", "card_age_days": 1200, "avg_amount": 80.5,
                   "merchant_category": "travel", "merchant_country": "GB", "risk_score": 0.9}
    assert isinstance(row["card_age_days"], int) and isinstance(row["risk_score"], float)


def test_push_takes_an_item_out_of_stock(store: FeatureStoreAdapter) -> None:
    entity = {"item_id": "i00001"}
    assert store.online_feature(["item_catalogue:in_stock"], entity)["in_stock"] is True
    store.push("item_catalogue_push", pd.DataFrame({
        "item_id": ["i00001"], "category": ["books"], "price": [9.5], "in_stock": [False],
        "event_timestamp": [datetime.now(UTC)],
    }))
    assert store.online_feature(["item_catalogue:in_stock"], entity)["in_stock"] is False
    other = store.online_feature(["item_catalogue:in_stock"], {"item_id": "i00002"})
    assert other["in_stock"] is True, "a push changes only the rows pushed"


def test_freshness_is_visible_and_max_age_hides_stale_values(store: FeatureStoreAdapter) -> None:
    entity = {"user_id": "u000001"}
    row = store.online_feature(["user_profile:segment"], entity, with_timestamps=True)
    assert row == {"user_id": "u000001", "segment": "bargain", "segment__ts": T0}

    stale_before = metric("mlsuite_feast_stale_values_total", feature_view="user_profile")
    old = store.online_feature(["user_profile:segment"], entity, max_age=timedelta(days=30))
    assert old["segment"] is None, "a 2025 profile is older than 30 days"
    assert metric("mlsuite_feast_stale_values_total", feature_view="user_profile") == (
        stale_before + 1)
    fresh = store.online_feature(["user_profile:segment"], entity,
                                 max_age=datetime.now(UTC) - T0 + timedelta(days=1))
    assert fresh["segment"] == "bargain"


# --- feature names ------------------------------------------------------------------


def test_clashing_feature_names_keep_their_view_prefix(sqlite_settings: Settings,
                                                       tmp_path: Path) -> None:
    repo = tmp_path / "feature_repo"
    shutil.copytree(sqlite_settings.feast_repo, repo,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # A second view with a "country" feature, as a new domain file would add it.
    (repo / "geo_features.py").write_text(
        "from datetime import timedelta\n"
        "from feast import FeatureView, Field\n"
        "from feast.types import String\n"
        "from entities import merchant\n"
        "from payment_features import merchants_source\n"
        "merchant_geo = FeatureView(name='merchant_geo', entities=[merchant],\n"
        "    ttl=timedelta(days=365), source=merchants_source,\n"
        "    schema=[Field(name='country', dtype=String)])\n"
    )
    write_table(sqlite_settings.data_dir / "payments/merchants.parquet",
                {**MERCHANTS, "country": ["DE", "GB"]})
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings.with_(feast_repo=repo))
    assert "FeatureView merchant_geo" in adapter.apply().applied
    adapter.materialize()

    row = adapter.online_feature(
        ["user_profile:country", "merchant_geo:country", "user_profile:segment"],
        {"user_id": "u000002", "merchant_id": "m00002"},
    )
    assert row == {"user_id": "u000002", "merchant_id": "m00002",
                   "user_profile__country": "FR", "merchant_geo__country": "GB",
                   "segment": "premium"}

    (repo / "geo_features.py").unlink()
    assert adapter.apply().deleted == ("FeatureView merchant_geo",), (
        "apply removes what feature_repo/ no longer defines, like `feast apply`")


@pytest.mark.parametrize(
    ("features", "entity", "error", "message"),
    [
        ("fraud_v9", {"card_id": "c000001"}, ConfigError, "fraud_v9"),
        (["card_profile:colour"], {"card_id": "c000001"}, ConfigError, "no feature 'colour'"),
        (["no_such_view:x"], {"card_id": "c000001"}, ConfigError, "no_such_view"),
        (["card_profile.avg_amount"], {"card_id": "c000001"}, ValueError, "feature_view:feature"),
    ],
    ids=["unknown-service", "unknown-feature", "unknown-view", "malformed-ref"],
)
def test_bad_feature_requests_name_the_problem(store: FeatureStoreAdapter, features: object,
                                               entity: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        store.online_feature(features, entity)  # type: ignore[arg-type]


def test_push_without_event_timestamp_is_refused(store: FeatureStoreAdapter) -> None:
    with pytest.raises(ValueError, match="event_timestamp"):
        store.push("item_catalogue_push", pd.DataFrame({"item_id": ["i00001"]}))


# --- failures and metrics -----------------------------------------------------------


def test_unreachable_redis_is_unavailable_fast(settings: Settings) -> None:
    write_data(settings.data_dir)
    dead = settings.with_(feast_online_store="redis",
                          redis_url=f"redis://127.0.0.1:{free_port()}/0")
    adapter = FeatureStoreAdapter.from_settings(dead)
    adapter.apply()  # registry only: Redis is touched when data is written or read
    errors_before = metric("mlsuite_feast_errors_total", operation="online_read")
    started = time.perf_counter()
    with pytest.raises(Unavailable) as caught:
        adapter.online_feature("fraud_v1", {"card_id": "c000001", "merchant_id": "m00001"})
    assert caught.value.dependency == "feast"
    assert time.perf_counter() - started < 1.0, "a dead Redis must fail fast, not retry for long"
    assert metric("mlsuite_feast_errors_total", operation="online_read") == errors_before + 1
    with pytest.raises(Unavailable, match="redis"):
        adapter.ping()


def test_redis_outage_during_reads_is_unavailable(settings: Settings, tmp_path: Path) -> None:
    from mlplatform.redisdb import EmbeddedRedis

    write_data(settings.data_dir)
    server = EmbeddedRedis(tmp_path / "private-redis")
    server.start()
    try:
        adapter = FeatureStoreAdapter.from_settings(
            settings.with_(feast_online_store="redis", redis_url=server.url))
        adapter.apply()
        adapter.materialize()
        assert adapter.ping().startswith("redis")
    finally:
        server.stop()
    with pytest.raises(Unavailable, match="redis"):
        adapter.online_feature("fraud_v1", {"card_id": "c000001", "merchant_id": "m00001"})


def test_store_not_applied_is_unavailable(sqlite_settings: Settings) -> None:
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings)
    with pytest.raises(Unavailable, match="apply"):
        adapter.ping()
    with pytest.raises(Unavailable):
        adapter.online_feature("fraud_v1", {"card_id": "c000001"})


def test_every_operation_is_timed(store: FeatureStoreAdapter) -> None:
    def count(op: str) -> float:
        return metric("mlsuite_feast_operation_seconds_count", operation=op)

    before = {op: count(op) for op in ("online_read", "push", "ping")}
    store.online_features("recommender_v1", [{"user_id": "u000001", "item_id": "i00001"}])
    store.push("user_profile_push", pd.DataFrame({
        "user_id": ["u000001"], "segment": ["tech"], "country": ["DE"],
        "event_timestamp": [datetime.now(UTC)]}))
    assert store.ping().startswith(store.online_store_type)
    assert {op: count(op) - before[op] for op in before} == {
        "online_read": 1, "push": 1, "ping": 1}


# --- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
        ("redis://localhost", "localhost:6379,db=0"),
        ("redis://:p%40ss@cache:6380/3", "cache:6380,db=3,password=p@ss"),
        ("rediss://app:pw@cache:6379", "cache:6379,db=0,username=app,password=pw,ssl=true"),
        ("unix:///run/redis.sock?db=2", "localhost:6379,db=2,unix_socket_path=/run/redis.sock"),
    ],
    ids=["plain", "defaults", "password-escaped", "tls-acl", "unix-socket"],
)
def test_redis_url_becomes_feast_connection_string(url: str, expected: str) -> None:
    timeouts = ",socket_connect_timeout=2,socket_timeout=2"
    assert feast_config.redis_connection_string(url) == expected + timeouts


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://cache:6379", "redis://"), ("redis://:a,b@cache", "','"),
     ("redis://cache/zero", "number")],
    ids=["wrong-scheme", "comma-in-password", "named-db"],
)
def test_unusable_redis_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        feast_config.redis_connection_string(url)


def test_redis_online_store_needs_a_redis_url(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="MLSUITE_REDIS_URL"):
        feast_config.repo_config(settings.with_(feast_online_store="redis", redis_url=None))


def test_config_paths_come_from_settings_not_the_environment(settings: Settings) -> None:
    config = feast_config.repo_config(settings)
    data_dir = settings.data_dir.resolve()
    assert Path(config.registry.path) == data_dir / "feast/registry.db"
    assert Path(config.online_store.path) == data_dir / "feast/online.db"
    assert config.repo_path == data_dir, "relative FileSource paths resolve in the data folder"
    assert os.environ.get(feast_config.DATA_DIR_VAR) != str(data_dir)


# --- the real simulator's data, and the feast CLI ------------------------------------


def test_simulated_data_serves_online_by_token_only(settings: Settings, shop_dir: Path,
                                                   payments_dir: Path) -> None:
    from mlplatform.demo import prepare_sources
    from mlplatform.security.pii import tokeniser

    (settings.data_dir / "shop").mkdir(parents=True)
    for name in ("users.parquet", "items.parquet"):
        (settings.data_dir / "shop" / name).symlink_to(shop_dir / name)
    # A copy: fraud's source hook rewrites the card file in place.
    shutil.copytree(payments_dir, settings.data_dir / "payments")
    prepare_sources(settings)  # what a stack runs before apply and materialize
    adapter = FeatureStoreAdapter.from_settings(settings)
    adapter.apply()
    assert set(adapter.materialize()) == {"user_profile", "item_catalogue", "card_profile",
                                          "merchant_profile"}
    tokens = tokeniser(settings)
    users = pd.read_parquet(shop_dir / "users.parquet").sort_values("event_timestamp")
    latest = users.groupby("user_id").last().reset_index().iloc[:50]
    rows = adapter.online_features(["user_profile:segment", "user_profile:country"],
                                   [{"user_id": tokens.token("user", u)}
                                    for u in latest["user_id"]])
    assert [r["segment"] for r in rows] == list(latest["segment"])
    assert [r["country"] for r in rows] == list(latest["country"])
    cards = pd.read_parquet(payments_dir / "cards.parquet")
    merchants = pd.read_parquet(payments_dir / "merchants.parquet")
    row = adapter.online_feature("fraud_v1", {
        "card_id": tokens.token("card", cards["card_id"].iloc[0]),
        "merchant_id": merchants["merchant_id"].iloc[0]})
    assert None not in row.values()
    # The online store was never loaded with an id as it came in.
    online = (settings.data_dir / "feast" / "online.db").read_bytes()
    for raw in [*latest["user_id"].iloc[:5], *cards["card_id"].iloc[:5]]:
        assert raw.encode() not in online, raw
    assert tokens.token("card", cards["card_id"].iloc[0]).encode() in online


@pytest.mark.slow
def test_feast_cli_works_as_documented(sqlite_settings: Settings) -> None:
    """The commands in feature_repo/feature_store.yaml's header, run for real."""
    root, data_dir = source_root(), str(sqlite_settings.data_dir.resolve())
    feast = [str(Path(sys.executable).parent / "feast")]
    env = {**os.environ, "MLSUITE_DATA_DIR": data_dir}
    yaml_file = str(root / "feature_repo/feature_store.yaml")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for args in (["-c", "feature_repo", "apply", "--skip-source-validation"],
                 ["-c", data_dir, "-f", yaml_file, "materialize", "1970-01-01T00:00:00", now]):
        done = subprocess.run([*feast, *args], check=False, cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"feast {' '.join(args)} failed:\n{done.stderr[-2000:]}"
    adapter = FeatureStoreAdapter.from_settings(sqlite_settings)
    assert adapter.online_feature(["card_profile:home_country"], {"card_id": "c000001"}) == {
        "card_id": "c000001", "home_country": "DE"}


def test_feast_is_imported_without_typeguard_instrumentation_and_others_keep_it(
        tmp_path: Path) -> None:
    # A fresh interpreter (in this one Feast may already be imported), from a file
    # (typeguard reads a decorated function's source).
    probe = tmp_path / "probe.py"
    probe.write_text("""
import mlplatform.feast_config, feast, typeguard

@typeguard.typechecked
def ours(x: int) -> int:
    return x

def names(f):
    return set(f.__code__.co_names)

assert "check_argument_types_internal" not in names(feast.Entity.__init__)
assert "check_argument_types_internal" not in names(feast.FeatureStore.get_online_features)
try:
    ours("not an int")
except typeguard.TypeCheckError:
    print("others checked")
""")
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "others checked"
