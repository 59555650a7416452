"""The rollout state machine on its own: one row per situation, no Redis, no clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mlplatform.errors import BadRequest, Conflict
from mlplatform.rollouts import machine
from mlplatform.rollouts.machine import Measurements, Rollout, Spec, parse_guard, step

T0 = 1_000_000.0
OK = Measurements(requests=500, errors=1, p99_ms=7.5, values={"conversion": 0.05})
ERRORS = Measurements(requests=500, errors=50, p99_ms=7.5, values={"conversion": 0.05})
SLOW = Measurements(requests=500, errors=0, p99_ms=250.0, values={"conversion": 0.05})
LOW_CONVERSION = Measurements(requests=500, errors=0, p99_ms=5.0, values={"conversion": 0.01})
NO_CONVERSION = Measurements(requests=500, errors=0, p99_ms=5.0)
FEW = Measurements(requests=20, errors=20, p99_ms=999.0)


def spec(strategy: str = "canary", **changes: Any) -> Spec:
    base = Spec("recommender", "recommender", 3, 2, strategy, steps=(5.0, 25.0, 50.0, 100.0),
                interval_seconds=30.0, failures=2, max_error_rate=0.01, max_p99_ms=50.0,
                min_samples=100, guards=(parse_guard("conversion>=0.03"),))
    return dataclasses.replace(base, **changes)


def at(strategy: str = "canary", *, step_: int | None = None, failed: int = 0,
       **changes: Any) -> Rollout:
    """A running rollout at step ``step_`` whose check is due at T0 + 30."""
    r = machine.start(spec(strategy, **changes), T0)
    if step_ is not None:
        steps = r.spec.steps
        share = steps[step_ - 1] / 100 if step_ else 0.0
        r = dataclasses.replace(r, step=step_,
                                share=0.0 if strategy == "shadow" else share,
                                mirror=share if strategy == "shadow" else 0.0)
    return dataclasses.replace(r, failed_checks=failed)


DUE = T0 + 30.0

CASES = [
    # id, rollout, measurements, now, expected (state, step, share, failed_checks), reason part
    ("not-due-yet", at(), OK, T0 + 10, ("running", 1, 0.05, 0), "next check in 20.0s"),
    ("too-few-samples-waits", at(), FEW, DUE, ("running", 1, 0.05, 0), "waiting for samples: 20 < 100"),
    ("all-pass-advances", at(), OK, DUE, ("running", 2, 0.25, 0), "share 5% -> 25%"),
    ("pass-at-50-goes-to-100", at(step_=3), OK, DUE, ("running", 4, 1.0, 0), "share 50% -> 100%"),
    ("pass-at-100-promotes", at(step_=4), OK, DUE, ("promoted", 4, 1.0, 0), "promoted v3"),
    ("error-rate-fails-once", at(), ERRORS, DUE, ("running", 1, 0.05, 1), "error_rate=0.1 breaks error_rate<=0.01"),
    ("second-failure-rolls-back", at(step_=2, failed=1), ERRORS, DUE, ("rolled_back", 2, 0.0, 2), "rolled back to v2"),
    ("latency-fails", at(), SLOW, DUE, ("running", 1, 0.05, 1), "p99_ms=250 breaks p99_ms<=50"),
    ("business-guard-fails", at(), LOW_CONVERSION, DUE, ("running", 1, 0.05, 1), "conversion=0.01 breaks conversion>=0.03"),
    ("unmeasured-guard-fails", at(), NO_CONVERSION, DUE, ("running", 1, 0.05, 1), "conversion not measured"),
    ("one-failure-allowed-rolls-back", at(failures=1), ERRORS, DUE, ("rolled_back", 1, 0.0, 1), "check failed (1/1)"),
    ("bluegreen-waits-for-smoke", at("blue-green"), OK, DUE, ("running", 0, 0.0, 0), "waiting for the smoke check"),
    ("bluegreen-smoke-ok-switches", at("blue-green"), dataclasses.replace(OK, smoke="ok"), T0 + 1,
     ("running", 1, 1.0, 0), "all traffic moves to it"),
    ("bluegreen-smoke-failed-rolls-back", at("blue-green"), dataclasses.replace(OK, smoke="replica a: boom"),
     T0 + 1, ("rolled_back", 0, 0.0, 0), "smoke check of v3 failed: replica a: boom"),
    ("bluegreen-no-smoke-in-time", at("blue-green"), OK, T0 + 60, ("rolled_back", 0, 0.0, 0), "no request worker smoke-checked v3 within 60s"),
    ("bluegreen-pass-after-switch-promotes", at("blue-green", step_=1), OK, DUE, ("promoted", 1, 1.0, 0), "promoted v3"),
    ("bluegreen-failures-after-switch-roll-back", at("blue-green", step_=1, failed=1), ERRORS, DUE,
     ("rolled_back", 1, 0.0, 2), "rolled back to v2"),
    ("shadow-pass-mirrors-more", at("shadow", step_=1), OK, DUE, ("running", 2, 0.0, 0), "mirrored 5% -> 25%"),
    ("shadow-fail-counts", at("shadow", step_=1), ERRORS, DUE, ("running", 1, 0.0, 1), "on 500 mirrored requests"),
]


@pytest.mark.parametrize(("rollout", "measured", "now", "expected", "reason_part"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_step(rollout: Rollout, measured: Measurements, now: float,
              expected: tuple[str, int, float, int], reason_part: str) -> None:
    new, reason = step(rollout, measured, now)
    assert (new.state, new.step, new.share, new.failed_checks) == expected, reason
    assert reason_part in reason
    changed_phase = (new.state, new.step, new.share, new.failed_checks) != (
        rollout.state, rollout.step, rollout.share, rollout.failed_checks) or new.mirror != rollout.mirror
    if changed_phase:  # every transition is in the history with when and why
        assert new.history[-1]["reason"] == reason and new.history[-1]["at"]
        assert len(new.history) == len(rollout.history) + 1
    else:
        assert new.history == rollout.history


def test_a_check_opens_a_new_window_and_waiting_keeps_the_old_one() -> None:
    r = at()
    waited, _ = step(r, FEW, DUE)
    assert waited.window_start == r.window_start and waited.next_check_at == DUE + 30
    checked, _ = step(waited, OK, DUE + 30)
    assert checked.window_start == DUE + 30 and checked.checks == 1


def test_shadow_never_serves_and_promotes_after_the_last_mirrored_step() -> None:
    r = at("shadow", step_=1)
    now = DUE
    for _ in range(3):
        r, _ = step(r, OK, now)
        assert r.share == 0.0
        now += 30
    assert r.mirror == 1.0
    r, reason = step(r, OK, now)
    assert r.state == "promoted", reason


def test_finished_rollouts_do_not_move() -> None:
    done, _ = step(at(step_=4), OK, DUE)
    assert step(done, ERRORS, DUE + 60)[0] == done
    with pytest.raises(Conflict, match="is promoted: cannot abort"):
        machine.abort(done, DUE + 60)


def test_operator_promote_and_abort() -> None:
    promoted = machine.promote(at(), T0 + 5, who="alice")
    assert (promoted.state, promoted.share) == ("promoted", 1.0)
    assert promoted.history[-1]["reason"] == "promoted v3 by alice"
    aborted = machine.abort(at(), T0 + 5)
    assert (aborted.state, aborted.share) == ("aborted", 0.0)


def test_every_transition_is_in_the_table() -> None:
    for state, event in machine.TRANSITIONS:
        assert state in machine.STATES and machine.TRANSITIONS[(state, event)] in machine.STATES
    assert all(s == "running" for s, _ in machine.TRANSITIONS)  # finished states are final


def test_document_round_trips() -> None:
    r, _ = step(at(segment={"country": "DE"}), ERRORS, DUE)
    doc = r.to_dict()
    assert {"state", "version", "strategy", "step", "share", "history"} <= doc.keys()
    assert doc["guards"] == ["error_rate<=0.01", "p99_ms<=50", "conversion>=0.03"]
    assert Rollout.from_dict(doc) == r


@pytest.mark.parametrize(("text", "field"), [
    ("conversion=0.1", "guard"), ("<=0.1", "guard"), ("p99_ms<=fast", "guard"),
])
def test_bad_guards_are_named(text: str, field: str) -> None:
    with pytest.raises(BadRequest, match="METRIC<=NUMBER") as info:
        parse_guard(text)
    assert info.value.field == field and repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["", "5,25", "50,25,100", "0,100", "5,x,100", "5,150"])
def test_bad_steps_are_named(text: str) -> None:
    with pytest.raises(BadRequest, match="steps must be increasing") as info:
        machine.parse_steps(text)
    assert info.value.field == "steps"


def test_segments() -> None:
    assert machine.parse_segment("country=DE,channel=online") == {"country": "DE",
                                                                  "channel": "online"}
    with pytest.raises(BadRequest, match="segment must look like KEY=VALUE"):
        machine.parse_segment("DE")


def test_bad_strategy_and_interval() -> None:
    with pytest.raises(BadRequest, match="strategy must be one of canary, blue-green, shadow"):
        machine.start(spec("linear"), T0)
    with pytest.raises(BadRequest, match="interval must be > 0"):
        machine.start(spec(interval_seconds=0.0), T0)
