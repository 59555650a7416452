"""Rollouts on a real Redis: the store, per-version metrics, the controller (in a real
worker, across a restart, one holder per rollout) and the ``mlsuite rollout`` CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from mlplatform.config import Settings, get_settings
from mlplatform.errors import Conflict, NotFound
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts import RolloutController, RolloutStore
from mlplatform.rollouts.measure import MetricsRecorder, read_measurements
from mlplatform.worker import Worker

NAME = "recommender"


@pytest.fixture
def registry(settings: Settings) -> ModelRegistry:
    """Model ``recommender`` with v1 in production and v2, v3 registered."""
    reg = ModelRegistry(settings.data_dir / "models")
    for payload in ("a", "b", "c"):
        reg.register(NAME, writer=lambda d, p=payload: (d / "x").write_text(p), params={},
                     metrics={}, data_fingerprint="f")
    reg.promote(NAME, 1)
    return reg


@pytest.fixture
def store(redis_client: redis.Redis, registry: ModelRegistry) -> RolloutStore:
    return RolloutStore(redis_client, registry)


def traffic(client: redis.Redis, version: int, requests: int, *, errors: int = 0,
            latency: float = 0.002, role: str = "live", at: float | None = None,
            **guards: float) -> None:
    """Record ``requests`` served by ``version`` (as request workers do) and flush."""
    rec = MetricsRecorder(client)
    for i in range(requests):
        rec.request(NAME, version, latency, error=i < errors, role=role, at=at)
    for metric, value in guards.items():
        rec.observe(NAME, version, metric, value * requests, requests, role=role, at=at)
    rec.flush()


def test_start_moves_the_candidate_alias_and_refuses_a_second_rollout(
        store: RolloutStore, registry: ModelRegistry) -> None:
    r = store.start(NAME, 2, "canary", min_samples=10)
    assert (r.state, r.step, r.share, r.spec.previous) == ("running", 1, 0.05, 1)
    assert registry.aliases(NAME)["candidate"] == 2 and registry.rollout(NAME)[1] == 0.05
    assert store.active() == [NAME] and store.require(NAME).history[0]["event"] == "start"
    with pytest.raises(Conflict, match="a canary rollout of v2 is already running"):
        store.start(NAME, 3, "shadow")


@pytest.mark.parametrize(("name", "version", "error", "message"), [
    (NAME, 9, NotFound, "model 'recommender' has no version 9"),
    ("nope", 1, NotFound, "no model named 'nope' in the registry; known models: recommender"),
    (NAME, 1, Conflict, "v1 is already production"),
])
def test_start_names_what_is_wrong(store: RolloutStore, name: str, version: int,
                                   error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        store.start(name, version, "canary")
    assert store.active() == []


def test_metrics_per_version_and_role(redis_client: redis.Redis) -> None:
    since = time.time() - 1
    traffic(redis_client, 2, 200, errors=4, latency=0.004, conversion=0.1)
    traffic(redis_client, 2, 50, latency=0.2, role="shadow", agreement=0.8)
    live = read_measurements(redis_client, NAME, 2, since, time.time() + 1)
    assert (live.requests, live.errors, live.p99_ms) == (200, 4, 5.0)
    assert live.values["conversion"] == pytest.approx(0.1)
    shadow = read_measurements(redis_client, NAME, 2, since, time.time() + 1, role="shadow")
    assert (shadow.requests, shadow.p99_ms, shadow.values) == (50, 250.0, {"agreement": 0.8})
    assert read_measurements(redis_client, NAME, 3, since, time.time() + 1).requests == 0


def test_controller_advances_on_good_metrics_and_rolls_back_on_errors(
        store: RolloutStore, registry: ModelRegistry, redis_client: redis.Redis) -> None:
    ctl = RolloutController(redis_client, registry, "recommender")
    r = store.start(NAME, 2, "canary", steps=(10.0, 50.0, 100.0), interval_seconds=5,
                    min_samples=100)
    t = r.started_at
    traffic(redis_client, 2, 150)
    assert ctl.tick(now=t + 1) == ""  # not due yet
    assert "share 10% -> 50%" in ctl.tick(now=t + 5)
    assert registry.rollout(NAME)[1] == 0.5
    traffic(redis_client, 2, 150, errors=30, at=t + 6)
    assert "check failed (1/2)" in ctl.tick(now=t + 10)
    traffic(redis_client, 2, 150, errors=30, at=t + 11)
    assert "check failed (2/2)" in ctl.tick(now=t + 15)
    done = store.require(NAME)
    assert (done.state, done.share) == ("rolled_back", 0.0)
    assert registry.rollout(NAME)[1] == 0.0 and registry.aliases(NAME)["production"] == 1
    assert [h["event"] for h in done.history] == ["start", "advance", "fail", "rollback"]
    assert store.active() == [] and ctl.tick(now=t + 20) == ""


def test_one_controller_per_rollout_and_a_restart_carries_on(
        store: RolloutStore, registry: ModelRegistry, redis_client: redis.Redis) -> None:
    first = RolloutController(redis_client, registry, "recommender", lease_seconds=0.3)
    second = RolloutController(redis_client, registry, "recommender", lease_seconds=0.3)
    r = store.start(NAME, 2, "canary", steps=(50.0, 100.0), interval_seconds=1, min_samples=10)
    traffic(redis_client, 2, 20)
    assert "50% -> 100%" in first.tick(now=r.started_at + 1)
    traffic(redis_client, 2, 20, at=r.started_at + 1.5)
    assert second.tick(now=r.started_at + 2) == ""  # the first one holds the lease
    # The first worker dies (stops renewing): the second takes over after the lease ends.
    deadline = time.monotonic() + 5
    summary = ""
    while not summary and time.monotonic() < deadline:
        summary = second.tick(now=r.started_at + 2)
        time.sleep(0.05)
    assert "promoted v2" in summary
    assert registry.aliases(NAME)["production"] == 2 and store.require(NAME).state == "promoted"


def test_other_services_rollouts_are_left_alone(store: RolloutStore, registry: ModelRegistry,
                                                redis_client: redis.Redis) -> None:
    r = store.start(NAME, 2, "canary", interval_seconds=1, min_samples=1)
    traffic(redis_client, 2, 20)
    assert RolloutController(redis_client, registry, "fraud").tick(now=r.started_at + 5) == ""
    assert store.require(NAME).step == 1


def test_the_worker_runs_the_controller(settings: Settings, store: RolloutStore,
                                        redis_client: redis.Redis) -> None:
    """A plain service worker promotes a healthy canary by itself."""
    worker = Worker("recommender", settings, redis_client)
    worker.start()
    try:
        store.start(NAME, 2, "canary", steps=(50.0, 100.0), interval_seconds=0.5,
                    min_samples=5)
        deadline = time.monotonic() + 15
        while store.require(NAME).state == "running" and time.monotonic() < deadline:
            traffic(redis_client, 2, 10)
            time.sleep(0.1)
    finally:
        worker.stop()
    done = store.require(NAME)
    assert done.state == "promoted", done.history
    assert [h["event"] for h in done.history] == ["start", "advance", "promote"]


# -- the CLI ---------------------------------------------------------------------------

@pytest.fixture
def cli(settings: Settings, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[Callable[..., Any]]:
    """Run ``mlsuite rollout ...`` in-process on the test's data folder and Redis."""
    from mlplatform.cli import cli as mlsuite

    monkeypatch.setenv("MLSUITE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MLSUITE_REDIS_URL", str(settings.redis_url))
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(mlsuite, ["rollout", *args])

    yield run
    get_settings.cache_clear()


def test_cli_start_status_promote(cli: Callable[..., Any], registry: ModelRegistry) -> None:
    out = cli("start", NAME, "--version", "v2", "--strategy", "canary", "--steps", "10,100",
              "--interval", "1m", "--failures", "3", "--guard", "conversion>=0.02",
              "--segment", "segment=S1")
    assert out.exit_code == 0, out.output
    assert "canary rollout of v2 (production v1) is running: step 1/2, share 10%" in out.output
    status = cli("status", NAME, "--json")
    doc = json.loads(status.output)
    assert {k: doc[k] for k in ("state", "version", "strategy", "step", "share")} == {
        "state": "running", "version": 2, "strategy": "canary", "step": 1, "share": 0.1}
    assert doc["interval_seconds"] == 60 and doc["failures"] == 3
    assert doc["guards"][-1] == "conversion>=0.02" and doc["segment"] == {"segment": "S1"}
    assert doc["history"][0]["at"] and "canary of v2" in doc["history"][0]["reason"]
    assert cli("promote", NAME).exit_code == 0
    assert registry.aliases(NAME)["production"] == 2
    again = cli("abort", NAME)
    assert again.exit_code == 2 and "is promoted: cannot abort it" in again.output


@pytest.mark.parametrize(("args", "message"), [
    (["start", NAME, "--version", "7", "--strategy", "canary"],
     "model 'recommender' has no version 7"),
    (["start", "nope", "--version", "1", "--strategy", "canary"], "no model named 'nope'"),
    (["start", NAME, "--version", "2", "--strategy", "linear"], "'linear' is not one of"),
    (["start", NAME, "--version", "2", "--strategy", "canary", "--guard", "conversion"],
     "guard[0] must look like METRIC<=NUMBER"),
    (["start", NAME, "--version", "2", "--strategy", "canary", "--steps", "5,50"],
     "steps must be increasing percentages"),
    (["start", NAME, "--version", "2", "--strategy", "canary", "--interval", "soon"],
     "must be a duration such as 30s"),
    (["start", NAME, "--version", "2", "--strategy", "canary", "--segment", "DE"],
     "segment must look like KEY=VALUE"),
    (["status", NAME], "model 'recommender' has no rollout"),
    (["promote", NAME], "model 'recommender' has no rollout"),
], ids=["unknown-version", "unknown-model", "strategy", "guard", "steps", "interval",
        "segment", "status-none", "promote-none"])
def test_cli_bad_input(cli: Callable[..., Any], args: list[str], message: str) -> None:
    out = cli(*args)
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_cli_second_rollout_is_refused(cli: Callable[..., Any]) -> None:
    assert cli("start", NAME, "--version", "2", "--strategy", "shadow").exit_code == 0
    out = cli("start", NAME, "--version", "3", "--strategy", "canary")
    assert out.exit_code == 2
    assert "recommender: a shadow rollout of v2 is already running" in out.output
    assert cli("abort", NAME).exit_code == 0
    assert cli("start", NAME, "--version", "3", "--strategy", "canary").exit_code == 0


def test_cli_help(cli: Callable[..., Any]) -> None:
    for sub in ("start", "status", "promote", "abort"):
        out = cli(sub, "--help")
        assert out.exit_code == 0 and "Usage:" in out.output


def test_registry_path(registry: ModelRegistry, settings: Settings) -> None:
    assert Path(registry.root) == settings.data_dir / "models"
