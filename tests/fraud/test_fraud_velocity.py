"""Velocity features: the Redis store (online) and the in-memory store (offline replay)
give identical vectors for the same transactions."""

from __future__ import annotations

import pytest
import redis

from fraud.features import event_of, offline_vectors
from fraud.profiles import FrameProfiles
from fraud.training import Dataset
from fraud.velocity import (
    MAX_TOTAL_MILLI,
    Claimed,
    Event,
    History,
    MemoryVelocityStore,
    RedisVelocityStore,
    velocity_features,
)
from mlplatform.redisdb import is_cluster


def _features(store, events, chunks):  # type: ignore[no-untyped-def]
    out, i = [], 0
    for size in chunks:
        part = events[i:i + size]
        out += [velocity_features(e, h) for e, h in zip(part, store.observe(part))]
        i += size
    return out


def test_online_and_offline_velocity_match_on_simulated_payments(
        redis_client: redis.Redis, payments_data: Dataset) -> None:
    from fraud.schema import transactions_from_frame

    txs = transactions_from_frame(payments_data.frame.iloc[:4000])
    events = [event_of(t) for t in txs]
    # Online: single scores and batches of several sizes (one pipeline each), as the API sends.
    chunks = [1] * 300 + [7, 50, 500, 1] + [1000] * 3 + [4000]
    online = _features(RedisVelocityStore(redis_client, "t:"), events, chunks)
    offline = _features(MemoryVelocityStore(), events, [len(events)])
    assert len(online) == len(offline) == 4000
    mismatches = [(i, a, b) for i, (a, b) in enumerate(zip(online, offline)) if a != b]
    assert not mismatches, f"first mismatch at row {mismatches[0][0]}: {mismatches[0][1:]}"
    # Not vacuous: the sample exercises the features (shared devices come from EDGE_CASES).
    constant = [name for name in online[0] if len({f[name] for f in online}) == 1]
    assert constant in ([], ["device_distinct_cards_24h"]), constant


def _e(i: int, ts: float, card: str = "c1", merchant: str = "m1", amount: float = 10.0,
       country: str = "FR", device: str | None = "d1") -> Event:
    return Event(f"t{i}", ts, card, merchant, amount, country, device)


EDGE_CASES = {
    "ties at one timestamp": [_e(1, 1000.0), _e(2, 1000.0, amount=0.1), _e(3, 1000.0)],
    "window boundaries exactly 60 s / 1 h / 24 h back": [
        _e(1, 1000.0), _e(2, 1060.0), _e(3, 1000.0 + 3600), _e(4, 1000.0 + 86400)],
    "history older than the trim horizon": [_e(1, 0.0), _e(2, 10.0), _e(3, 200_000.0)],
    "no device, new device, new country": [
        _e(1, 0.0, device=None), _e(2, 5.0, device="d9"), _e(3, 9.0, country="US")],
    "device shared by cards": [_e(1, 0.0, card="a"), _e(2, 1.0, card="b"), _e(3, 2.0, card="a")],
    "amounts that do not add exactly in floating point": [
        _e(i, float(i), amount=a) for i, a in enumerate([0.1, 0.2, 0.3, 1e9, 0.7, 1e-3])],
    "out-of-order arrival": [_e(1, 100.0), _e(2, 50.0), _e(3, 120.0)],
    "an out-of-order transaction trimmed later": [
        _e(1, 100_000.0), _e(2, 50.0), _e(3, 189_990.0), _e(4, 189_991.0)],
}


@pytest.mark.parametrize("events", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_online_and_offline_velocity_match_on_edge_cases(
        redis_client: redis.Redis, events: list[Event]) -> None:
    online = _features(RedisVelocityStore(redis_client, "e:"), events, [1] * len(events))
    offline = _features(MemoryVelocityStore(), events, [len(events)])
    assert online == offline


def test_a_window_string_starts_with_its_smallest_timestamp(redis_client: redis.Redis) -> None:
    # The head makes the trim check one comparison; a wrong head would keep stale records
    # (features filter them, so only this test sees it).
    store = RedisVelocityStore(redis_client, "hd:")
    store.observe([_e(1, 100_000.0), _e(2, 50.0)])
    card, _, _, device = store._entity_keys(_e(0, 0.0))
    for key in (card, device):
        assert redis_client.get(key).split(b"\x1e")[0] == b"50.0"  # type: ignore[union-attr]
    store.observe([_e(3, 189_990.0)])  # more than 25 h after t2: trims it, keeps t1
    for key in (card, device):
        blob = redis_client.get(key)
        assert blob.split(b"\x1e")[0] == b"100000.0", blob  # type: ignore[union-attr]
        assert blob.count(b"\x1e") == 2 and b"t2" not in blob, blob  # type: ignore[union-attr]


def test_features_without_a_window_match_the_window_walk() -> None:
    # velocity_features skips the window walk when the card and the device have nothing
    # in 24 h; the values must be the walk's, whatever else the history holds.
    from fraud.velocity import _first_features, _window_features

    events = [_e(1, 0.0), _e(2, 100_000.0), _e(3, 200_000.0, device=None, country="US"),
              _e(4, 300_000.0, card="c2", amount=1e16), _e(5, 400_000.0, device="d2"),
              _e(6, 400_000.0 + 30 * 86400.0, merchant="m2")]
    histories = MemoryVelocityStore().observe(events)
    assert all(not h.card_events and not h.device_events for h in histories)
    assert {h.card_n for h in histories} == {0, 1, 2, 3, 4}, "known and new cards"
    for e, h in zip(events, histories):
        assert _first_features(e, h) == _window_features(e, h)
        assert list(_first_features(e, h)) == list(_window_features(e, h)), "key order"


def test_velocity_values_on_a_card_testing_burst() -> None:
    events = [_e(i, 1000.0 + 10 * i, merchant=f"m{i % 3}", amount=1.0, device="ring")
              for i in range(8)]
    last = _features(MemoryVelocityStore(), events, [8])[-1]
    assert last["card_count_1m"] == 6.0  # t=1010..1060: the window includes its bound
    assert last["card_count_1h"] == 7.0
    assert last["card_amount_24h"] == 7.0
    assert last["card_distinct_merchants_24h"] == 3.0
    assert last["card_secs_since_prev"] == 10.0
    assert last["card_new_device"] == 0.0
    assert last["merchant_count_1h"] == 2.0  # m1 was used at i=1 and i=4


def test_a_retried_transaction_leaves_velocity_untouched(redis_client: redis.Redis) -> None:
    store = RedisVelocityStore(redis_client, "g:")
    first = store.observe_guarded([_e(1, 0.0)], ["g:tx:t1"], ["?fp1"])
    assert isinstance(first[0], History)
    assert redis_client.get("g:tx:t1") == b"?fp1", "the observe claims the id"
    redis_client.set("g:tx:t1", "decided")
    assert store.observe_guarded([_e(1, 0.0)], ["g:tx:t1"]) == [Claimed("decided")]
    [h] = store.observe([_e(2, 1.0)])
    assert h.card_n == 1, "the retry must not count twice"


def test_full_vectors_built_offline_match_the_ones_logged_online(
        make_app, payments_data: Dataset, fraud_data_dir, as_bodies) -> None:  # type: ignore[no-untyped-def]
    """The service's logged vectors (Feast profiles, Redis velocity) == offline_vectors
    (parquet profiles, in-memory velocity) over the same rows."""
    import json

    from fraud.app import get_service
    from fraud.schema import transactions_from_frame

    app = make_app()
    client = app.test_client()
    frame = payments_data.frame.iloc[:600]
    rows = as_bodies(frame)
    for row in rows[:100]:
        assert client.post("/v1/transactions/score", json=row).status_code == 200
    response = client.post("/v1/transactions/score/batch", json={"transactions": rows[100:]})
    assert response.status_code == 200, response.get_json()
    records = get_service(app).decisions.fetch([r["transaction_id"] for r in rows])
    online = [json.loads(r)["features"] for r in records]  # type: ignore[arg-type]
    offline = offline_vectors(transactions_from_frame(frame),
                              FrameProfiles.from_dir(fraud_data_dir / "payments"),
                              MemoryVelocityStore())
    assert online == offline


def test_chunked_script_calls_keep_order_and_guards(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # A request larger than one script call is split into chunks (pipelined, in order);
    # guards apply per transaction whatever chunk it falls in.
    from fraud import velocity

    monkeypatch.setattr(velocity, "CHUNK", 3)
    events = [_e(i, float(i)) for i in range(1, 9)]
    redis_client.set("c:tx:t5", "decided")
    guards = [f"c:tx:t{i}" for i in range(1, 9)]
    online = RedisVelocityStore(redis_client, "c:").observe_guarded(events, guards)
    assert online[4] == Claimed("decided")
    assert all(isinstance(h, History) for i, h in enumerate(online) if i != 4)
    kept = [e for i, e in enumerate(events) if i != 4]
    offline = MemoryVelocityStore().observe(kept)
    assert [velocity_features(e, h) for e, h in
            zip(kept, [h for h in online if isinstance(h, History)])] == [
        velocity_features(e, h) for e, h in zip(kept, offline)]


def test_profile_prefetch_fills_the_cache_without_overwriting() -> None:
    from fraud.profiles import CachedProfiles

    calls: list[tuple[str, list[str]]] = []

    class Source:
        def get_many(self, kind, ids):  # type: ignore[no-untyped-def]
            calls.append((kind, list(ids)))
            return {i: {"avg_amount": 1.0} for i in ids}

    cache = CachedProfiles(Source(), ttl_seconds=60.0, max_size=5)
    cache.get_many("card", ["c0"])
    assert cache.prefetch("card", [f"c{i}" for i in range(8)], chunk=2) == 4  # c0 kept
    calls.clear()
    assert set(cache.get_many("card", ["c1", "c4"])) == {"c1", "c4"}
    assert calls == [], "prefetched profiles are served from the cache"


def _state(client: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    """Every key under ``prefix`` with its DUMP (type, members, fields, values)."""
    return {k: client.dump(k) for k in sorted(client.scan_iter(f"{prefix}*"))}


def test_a_card_total_near_the_int64_bound_stops_at_the_cap_without_an_error(
        redis_client: redis.Redis) -> None:
    store = RedisVelocityStore(redis_client, "big:")
    memory = MemoryVelocityStore()
    events = [_e(i, float(i), amount=a) for i, a in
              enumerate([1e12, 5e12, 5e12, 1e16, 1e300, 50.0])]
    online = [store.observe([e])[0] for e in events]  # no ResponseError on any of them
    offline = memory.observe(events)
    assert [h.card_amount_milli for h in online] == [h.card_amount_milli for h in offline]
    assert online[-1].card_amount_milli == MAX_TOTAL_MILLI < 2**63 - 1
    assert int(redis_client.hget(store.card_stats_key("c1"), "amt")) == MAX_TOTAL_MILLI
    assert online[-1].card_n == 5
    # A total already near int64 (written before the cap existed) does not overflow either.
    redis_client.hset(store.card_stats_key("c2"), mapping={"n": 1, "amt": 2**63 - 10})
    [h] = store.observe([_e(9, 10.0, card="c2", amount=1e6)])
    assert h.card_amount_milli == 2**63 - 10
    assert int(redis_client.hget(store.card_stats_key("c2"), "amt")) == 2**63 - 10


def test_a_bad_argument_in_any_transaction_applies_nothing(redis_client: redis.Redis) -> None:
    from fraud import velocity

    if is_cluster(redis_client):
        pytest.skip("the single-server chunk script; the cluster's take-back is tested in "
                    "tests/fraud/test_fraud_cluster.py")
    store = RedisVelocityStore(redis_client, "bad:")
    store.observe([_e(1, 0.0)])
    before = _state(redis_client, "bad:")
    pack = store._pack

    def corrupt(events, guards, markers):  # type: ignore[no-untyped-def]
        packed = pack(events, guards, markers)
        for i, e in enumerate(events):
            if e.transaction_id == "t3":  # its amount (milli), the 8th field, out of range
                fields = packed[i].split(velocity.SEP)
                fields[7] = str(2**64)
                packed[i] = velocity.SEP.join(fields)
        return packed
    store._pack = corrupt  # type: ignore[method-assign]
    with pytest.raises(redis.ResponseError, match="amount"):
        store.observe([_e(2, 1.0), _e(3, 2.0)])
    assert _state(redis_client, "bad:") == before
    # Over several chunks too: the chunks applied before the failing one are undone.
    velocity.CHUNK, chunk = 1, velocity.CHUNK
    try:
        with pytest.raises(redis.ResponseError, match="amount"):
            store.observe_guarded([_e(2, 1.0), _e(3, 2.0)], ["bad:tx:t2", "bad:tx:t3"],
                                  ["?a", "?b"])
    finally:
        velocity.CHUNK = chunk
    assert _state(redis_client, "bad:") == before


UNDO_CASES = {
    "new card, device and merchant": ([], _e(5, 100.0)),
    "known card, new device and country": (
        [_e(1, 10.0), _e(2, 20.0, device=None)], _e(5, 100.0, device="d7", country="US")),
    "known card, known device and country": ([_e(1, 10.0), _e(2, 20.0)], _e(5, 100.0)),
    "a transaction that trims old history": (
        [_e(1, 0.0), _e(2, 5.0, card="c9")], _e(5, 200_000.0)),
}


@pytest.mark.parametrize("history, event", UNDO_CASES.values(), ids=UNDO_CASES.keys())
def test_undo_restores_exactly_what_the_observe_changed(
        redis_client: redis.Redis, history: list[Event], event: Event) -> None:
    store = RedisVelocityStore(redis_client, "u:")
    store.observe(history)
    before = _state(redis_client, "u:")
    observed = store.observe_guarded([event], ["u:tx:t5"], ["?fp"])
    assert _state(redis_client, "u:") != before
    assert store.undo([event], observed, ["u:tx:t5"], ["?fp"]) == 1
    assert _state(redis_client, "u:") == before


def test_a_seed_loads_the_state_observing_would_leave(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # seed() loads through RedisVelocityStore.load (no histories read back, chunks sent
    # by a worker thread): the state and what later transactions see must be observe's.
    from fraud import velocity

    monkeypatch.setattr(velocity, "CHUNK", 3)
    monkeypatch.setattr(velocity, "LOAD_BATCH", 7)  # several pipelines, a partial chunk
    events = [Event(f"s{i}", e.timestamp, e.card_id, e.merchant_id, e.amount, e.country,
                    e.device_id)
              for i, e in enumerate(e for case in EDGE_CASES.values() for e in case)]
    assert velocity.seed(RedisVelocityStore(redis_client, "ld:"), events[:-4]) == len(events) - 4
    RedisVelocityStore(redis_client, "ob:").observe(events[:-4])
    loaded, observed = _state(redis_client, "ld:"), _state(redis_client, "ob:")
    assert [k[3:] for k in loaded] == [k[3:] for k in observed]
    assert list(loaded.values()) == list(observed.values())
    then = RedisVelocityStore(redis_client, "ld:").observe(events[-4:])
    assert any(h.card_events for h in then), "the loaded history is seen"
    memory = MemoryVelocityStore()
    memory.observe(events[:-4])
    assert [velocity_features(e, h) for e, h in zip(events[-4:], then)] == [
        velocity_features(e, h) for e, h in zip(events[-4:], memory.observe(events[-4:]))]


def test_undo_keeps_a_transaction_whose_decision_was_recorded(
        redis_client: redis.Redis) -> None:
    store = RedisVelocityStore(redis_client, "k:")
    observed = store.observe_guarded([_e(1, 0.0)], ["k:tx:t1"], ["?fp"])
    redis_client.set("k:tx:t1", "1-0/fp")  # the decision script overwrote the claim
    assert store.undo([_e(1, 0.0)], observed, ["k:tx:t1"], ["?fp"]) == 0
    assert int(redis_client.hget(store.card_stats_key("c1"), "n")) == 1
