"""Redis Cluster: the embedded three-master cluster, cluster URLs, one-slot multi-key work."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from mlplatform.config import Settings
from mlplatform.errors import ConfigError
from mlplatform.redisdb import cluster_nodes, connect, is_cluster


def test_the_embedded_cluster_spreads_keys_over_its_three_masters(cluster_client: redis.Redis,
                                                                   cluster_url: str) -> None:
    assert is_cluster(cluster_client)
    nodes, _ = cluster_nodes(cluster_url)
    assert len(nodes) == 3
    for i in range(300):
        cluster_client.set(f"k{i}", i)
    per_node = [redis.Redis(host=h, port=p).dbsize() for h, p in nodes]
    # 300 keys over three equal slot ranges: each master holds a share, none holds all.
    assert sum(per_node) == 300 and min(per_node) > 50, per_node
    assert cluster_client.get("k299") == b"299"


def test_one_hash_tag_keeps_a_transaction_on_one_slot(cluster_client: redis.Redis) -> None:
    tx = cluster_client.pipeline(transaction=True)
    tx.lpush("{u1}:hist", "i1")
    tx.xadd("{u1}:events", {"item": "i1"})
    assert tx.execute()[0] == 1
    tx = cluster_client.pipeline(transaction=True)
    tx.lpush("u1:hist", "i1")
    tx.xadd("u2:events", {"item": "i1"})
    # Without a shared tag the keys hash to different slots: the cluster refuses it.
    with pytest.raises(redis.RedisClusterException, match="same slot"):
        tx.execute()


def test_settings_accept_a_cluster_url_and_name_a_bad_node(tmp_path: Path) -> None:
    url = "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001"
    s = Settings.from_env({"MLSUITE_REDIS_URL": url, "MLSUITE_DATA_DIR": str(tmp_path)})
    assert s.redis_url == url
    with pytest.raises(ConfigError, match=r"MLSUITE_REDIS_URL: .*node 'h2' must be host:port"):
        Settings.from_env({"MLSUITE_REDIS_URL": "redis+cluster://h1:7000,h2",
                           "MLSUITE_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"only database 0, got /2 .*:\*\*\*@"):
        Settings.from_env({"MLSUITE_REDIS_URL": "redis+cluster://:pw@h1:7000/2",
                           "MLSUITE_DATA_DIR": str(tmp_path)})


def test_connect_gives_a_cluster_client_for_a_cluster_url(cluster_url: str) -> None:
    client = connect(cluster_url)
    try:
        assert is_cluster(client) and client.ping()
        assert not is_cluster(connect("redis://127.0.0.1:1/0"))
    finally:
        client.close()
