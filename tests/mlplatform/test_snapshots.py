"""Snapshots and followers on a real Redis; signed checkpoints refuse tampering."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from mlplatform.config import Settings
from mlplatform.snapshots import (
    Follower,
    SignatureError,
    Snapshot,
    SnapshotStore,
    dumps_signed,
    loads_signed,
    pack_arrays,
    secret_key,
    unpack_arrays,
)


def decode(snapshot: Snapshot) -> tuple[int, list[float]]:
    arrays, meta = unpack_arrays(snapshot.body)
    return meta["version"], arrays["w"].tolist()


def test_a_follower_swaps_in_each_new_snapshot(redis_client: redis.Redis) -> None:
    store = SnapshotStore(redis_client, "test:snap")
    follower = Follower(store, decode, poll_seconds=0.02, name="test")
    assert follower.get() is None  # nothing published yet
    store.publish(pack_arrays({"w": np.array([1.0])}, {"version": 1}))
    deadline = time.monotonic() + 2
    while follower.get() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert follower.get() == (1, [1.0])
    store.publish(pack_arrays({"w": np.array([2.0, 3.0])}, {"version": 2}))
    while follower.get() == (1, [1.0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert follower.get() == (2, [2.0, 3.0]) and follower.seq == 2
    follower.stop()


def test_a_snapshot_that_cannot_be_decoded_keeps_the_last_good_one(
        redis_client: redis.Redis) -> None:
    store = SnapshotStore(redis_client, "test:snap")
    store.publish(pack_arrays({"w": np.array([1.0])}, {"version": 1}))
    follower = Follower(store, decode, poll_seconds=60, name="test")
    assert follower.get() == (1, [1.0])
    store.publish(b"not an npz file")
    assert follower.refresh() is False
    assert follower.get() == (1, [1.0])


def test_object_arrays_are_refused_never_unpickled() -> None:
    body = pack_arrays({"w": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        unpack_arrays(body)


def test_signed_checkpoints_round_trip_and_refuse_tampering(tmp_path: Path) -> None:
    settings = Settings.from_env({}).with_(data_dir=tmp_path)
    key = secret_key(settings)
    assert secret_key(settings) == key  # created once, then reused
    assert oct(os.stat(tmp_path / "secret.key").st_mode & 0o777) == "0o600"
    blob = dumps_signed({"model": [1, 2, 3]}, key)
    assert loads_signed(blob, key) == {"model": [1, 2, 3]}
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SignatureError):
        loads_signed(tampered, key)
    with pytest.raises(SignatureError):
        loads_signed(blob, b"another key")
    configured = settings.with_(secret_key="s" * 32)
    assert secret_key(configured) == b"s" * 32
