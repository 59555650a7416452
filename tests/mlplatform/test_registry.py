"""Model registry: versions with metadata, aliases, promotion, rollback, live hot swap."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from mlplatform.errors import NotFound, Unavailable
from mlplatform.registry import ModelRegistry, ModelVersion, fingerprint


def _register(reg: ModelRegistry, payload: str, **kw: object) -> ModelVersion:
    return reg.register("clf", writer=lambda d: (d / "model.txt").write_text(payload),
                        params={"p": payload}, metrics={"auc": 0.9},
                        data_fingerprint=fingerprint(payload.encode()), **kw)  # type: ignore[arg-type]


def test_register_stores_artifacts_and_metadata(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1, v2 = _register(reg, "one"), _register(reg, "two")
    assert (v1.version, v2.version) == (1, 2)
    assert (v2.path / "model.txt").read_text() == "two"
    meta = json.loads((v2.path / "metadata.json").read_text())
    for key in ("created_at", "params", "metrics", "data_fingerprint", "code_version"):
        assert key in meta, key
    assert reg.get("clf", 1).metadata["params"] == {"p": "one"}
    assert not list((tmp_path / "clf").glob(".tmp-*"))


def test_failed_writer_leaves_no_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)

    def boom(d: Path) -> None:
        (d / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.register("clf", writer=boom, params={}, metrics={}, data_fingerprint="-")
    assert reg.versions("clf") == [] and not list((tmp_path / "clf").glob(".tmp-*"))


def test_promote_and_rollback_move_the_alias(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    for payload in ("a", "b", "c"):
        _register(reg, payload)
    reg.promote("clf", 1)
    reg.promote("clf", 2)
    reg.promote("clf", 3)
    assert reg.resolve("clf", "production").version == 3
    assert reg.rollback("clf").version == 2
    assert reg.rollback("clf").version == 1
    with pytest.raises(NotFound, match="no earlier version"):
        reg.rollback("clf")
    history = (tmp_path / "clf" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in history][-2:] == ["rollback", "rollback"]


def test_resolve_by_number_and_unknown(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg, "a", alias="candidate")
    assert reg.resolve("clf", "v1").version == reg.resolve("clf", "candidate").version == 1
    with pytest.raises(NotFound):
        reg.resolve("clf", "production")
    with pytest.raises(NotFound):
        reg.get("clf", 9)


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    threads = [threading.Thread(target=_register, args=(reg, str(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v.version for v in reg.versions("clf")] == list(range(1, 9))


def test_live_model_swaps_when_the_alias_moves(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    live = reg.live("clf", "production", lambda mv: (mv.path / "model.txt").read_text(),
                    poll_seconds=0.05)
    with pytest.raises(Unavailable, match="no model 'clf'"):
        live.get()
    _register(reg, "first", alias="production")
    assert live.get()[1] == "first"
    _register(reg, "second")
    reg.promote("clf", 2)
    deadline = time.monotonic() + 5
    while live.get()[1] != "second" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.get()[0].version == 2
    reg.rollback("clf")
    deadline = time.monotonic() + 5
    while live.get()[0].version != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.get()[1] == "first"
    live.stop()


def test_canary_serves_a_stable_share_and_promotion_ends_it(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg, "blue", alias="production")
    _register(reg, "green")
    live = reg.live_rollout("clf", lambda mv: (mv.path / "model.txt").read_text(), poll_seconds=0.0)
    units = [f"card{i}" for i in range(2000)]
    assert {live.get(u)[1] for u in units} == {"blue"}
    reg.set_rollout("clf", 0.10, version=2)
    served = {u: live.get(u)[1] for u in units}
    share = sum(v == "green" for v in served.values()) / len(units)
    assert 0.07 < share < 0.13
    reg.set_rollout("clf", 0.30)
    wider = {u: live.get(u)[1] for u in units}
    assert all(wider[u] == "green" for u, v in served.items() if v == "green")  # no flip back
    reg.promote("clf", 2)
    assert reg.rollout("clf")[1] == 0.0
    deadline = time.monotonic() + 5
    while live.get("card1")[1] != "green" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {live.get(u)[1] for u in units[:200]} == {"green"}
    with pytest.raises(Exception, match="fraction must be a number in"):
        reg.set_rollout("clf", 1.5)
    live.stop()
