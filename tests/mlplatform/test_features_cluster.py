"""Feast's Redis online store in ``redis_cluster`` mode on a real three-master cluster:
materialize, read online, push. The same feature_repo/ YAML as a single server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import redis

from mlplatform import feast_config
from mlplatform.config import Settings
from mlplatform.features import FeatureStoreAdapter
from mlplatform.redisdb import cluster_nodes

from .test_features import write_data


def test_materialize_read_and_push_on_a_redis_cluster(tmp_path: Path, cluster_url: str,
                                                      cluster_client: redis.Redis) -> None:
    settings = Settings.from_env({}).with_(data_dir=tmp_path / "data", redis_url=cluster_url,
                                           feast_online_store="redis", auth=False)
    config = feast_config.repo_config(settings)
    assert config.online_store.redis_type == "redis_cluster"
    nodes, _ = cluster_nodes(cluster_url)
    assert config.online_store.connection_string.startswith(
        ",".join(f"{h}:{p}" for h, p in nodes) + ",")
    write_data(settings.data_dir)
    store = FeatureStoreAdapter.from_settings(settings)
    store.apply()
    store.materialize()
    rows = store.online_features(["item_catalogue:category", "item_catalogue:in_stock"],
                                 [{"item_id": i} for i in ("i00003", "i99999", "i00001")])
    assert [(r["category"], r["in_stock"]) for r in rows] == [
        ("tech", False), (None, None), ("books", True)]
    row = store.online_feature("fraud_v1", {"card_id": "c000002", "merchant_id": "m00002"})
    assert (row["home_country"], row["risk_score"]) == ("US", 0.9)
    store.push("item_catalogue_push", pd.DataFrame({
        "item_id": ["i00001"], "category": ["books"], "price": [9.5], "in_stock": [False],
        "event_timestamp": [datetime.now(UTC)],
    }))
    assert store.online_feature(["item_catalogue:in_stock"],
                                {"item_id": "i00001"})["in_stock"] is False
    # The rows went to the cluster's masters, not to one node.
    per_node = [redis.Redis(host=h, port=p).dbsize() for h, p in nodes]
    assert sum(per_node) >= 9 and sum(1 for n in per_node if n) > 1, per_node
