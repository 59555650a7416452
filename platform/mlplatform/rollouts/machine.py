"""The rollout state machine: one table of transitions and a pure ``step``.

A rollout moves a model's candidate version into production in steps (Flagger's canary
analysis). At each ``interval`` with at least ``min_samples`` requests measured for the
candidate, every guard is checked:

- all pass: advance one step (canary: a bigger share of units; shadow: a bigger share
  of requests mirrored); a pass at the last step (100%) promotes;
- one fails: a failed check is counted; at ``failures`` failed checks the rollout rolls
  back (the candidate's share goes to 0, production never moved);
- too few samples: wait (the window keeps growing until there are enough).

Blue-green has one step: it waits until a request worker has loaded and smoke-checked
the candidate (readiness plus a scored sample), then moves all traffic at once; a pass
after that promotes, a failed smoke check or failed checks roll back.

``step(rollout, measurements, now)`` returns the next rollout and the reason; it does
no I/O, so every case is a row of a table in the tests. The controller applies the
effects (alias moves, shares) and stores the result.

>>> r = start(Spec("m", "m", 2, 1, "canary", steps=(50.0, 100.0), interval_seconds=10,
...                min_samples=10), now=0.0)
>>> r.state, r.share
('running', 0.5)
>>> ok = Measurements(requests=100, errors=0, p99_ms=5.0)
>>> r, why = step(r, ok, now=10.0)
>>> r.share, why
(1.0, 'all 2 guards passed on 100 requests: share 50% -> 100%')
>>> r, why = step(r, ok, now=20.0)
>>> r.state, why
('promoted', 'all 2 guards passed on 100 requests at 100%: promoted v2')
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlplatform.errors import BadRequest, Conflict

__all__ = [
    "STATES",
    "TERMINAL",
    "STRATEGIES",
    "TRANSITIONS",
    "Guard",
    "Measurements",
    "Spec",
    "Rollout",
    "start",
    "step",
    "promote",
    "abort",
    "parse_guard",
    "parse_steps",
    "parse_segment",
]

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled_back", "aborted"
STATES = (RUNNING, PROMOTED, ROLLED_BACK, ABORTED)
TERMINAL = frozenset({PROMOTED, ROLLED_BACK, ABORTED})
STRATEGIES = ("canary", "blue-green", "shadow")

# (state, event) -> next state. Anything not here is refused (a finished rollout is final).
TRANSITIONS: dict[tuple[str, str], str] = {
    (RUNNING, "start"): RUNNING,       # `rollout start`: first step (blue-green: loading)
    (RUNNING, "wait"): RUNNING,        # too few samples, or not due: nothing changes
    (RUNNING, "switch"): RUNNING,      # blue-green: smoke check passed, all traffic moves
    (RUNNING, "advance"): RUNNING,     # guards passed: next step
    (RUNNING, "fail"): RUNNING,        # a guard failed, fewer than `failures` so far
    (RUNNING, "promote"): PROMOTED,    # guards passed at 100%, or `rollout promote`
    (RUNNING, "rollback"): ROLLED_BACK,  # `failures` failed checks, or a failed smoke check
    (RUNNING, "abort"): ABORTED,       # `rollout abort`
}

_GUARD = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(<=|>=)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$", re.I)


@dataclass(frozen=True)
class Guard:
    """``metric <= limit`` (or ``>=``) over the candidate's measurements of one interval.

    >>> parse_guard("error_rate<=0.01").check(0.02)
    False
    """

    metric: str
    op: Literal["<=", ">="]
    limit: float

    def check(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


def parse_guard(text: str, field: str = "guard") -> Guard:
    """``METRIC<=X`` or ``METRIC>=X``; ``BadRequest`` naming the text otherwise."""
    match = _GUARD.match(text)
    if not match:
        raise BadRequest(f"{field} must look like METRIC<=NUMBER or METRIC>=NUMBER "
                         f"(e.g. conversion>=0.02), got {text!r}", field=field)
    op: Literal["<=", ">="] = "<=" if match.group(2) == "<=" else ">="
    return Guard(match.group(1).lower(), op, float(match.group(3)))


def parse_steps(text: str) -> tuple[float, ...]:
    """Comma-separated percentages, strictly increasing, ending at 100.

    >>> parse_steps("5,25,50,100")
    (5.0, 25.0, 50.0, 100.0)
    """
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        steps = ()
    if (not steps or any(not 0 < s <= 100 for s in steps) or steps[-1] != 100
            or any(b <= a for a, b in zip(steps, steps[1:], strict=False))):
        raise BadRequest(f"steps must be increasing percentages in (0, 100] ending at 100 "
                         f"(e.g. 5,25,50,100), got {text!r}", field="steps")
    return steps


def parse_segment(text: str | None) -> dict[str, str]:
    """``key=value[,key=value]`` (units whose attributes match all pairs); {} for none."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadRequest(f"segment must look like KEY=VALUE[,KEY=VALUE] (e.g. country=DE), "
                             f"got {text!r}", field="segment")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Measurements:
    """What the controller measured for the candidate since the last check.

    ``values`` holds the business guards the apps report (``conversion``,
    ``decline_rate``, ``agreement``...). ``smoke`` is blue-green's smoke-check verdict
    from the request workers: None (none yet), ``"ok"`` or the failure's text.
    """

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    values: Mapping[str, float] = field(default_factory=dict)
    smoke: str | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def value(self, metric: str) -> float | None:
        if metric == "error_rate":
            return self.error_rate
        if metric == "p99_ms":
            return self.p99_ms
        if metric == "requests":
            return float(self.requests)
        return self.values.get(metric)


@dataclass(frozen=True)
class Spec:
    """What ``rollout start`` asks for (validated by ``start``)."""

    name: str
    service: str
    version: int
    previous: int | None
    strategy: str
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_seconds: float = 30.0
    failures: int = 2
    max_error_rate: float = 0.01
    max_p99_ms: float = 50.0
    min_samples: int = 100
    guards: tuple[Guard, ...] = ()
    segment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    """The rollout document: its spec, where it is, and every transition so far."""

    spec: Spec
    state: str = RUNNING
    step: int = 0              # steps reached (1 = the first share); 0 = not serving yet
    share: float = 0.0         # fraction of units the candidate serves
    mirror: float = 0.0        # shadow: fraction of requests the candidate also scores
    failed_checks: int = 0
    checks: int = 0
    started_at: float = 0.0
    window_start: float = 0.0  # measurements are read from here
    next_check_at: float = 0.0
    rev: int = 0               # bumped on every stored change (optimistic concurrency)
    history: tuple[dict[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def guards(self) -> tuple[Guard, ...]:
        """The spec's own guards plus the error-rate and latency guards every rollout has."""
        base = (Guard("error_rate", "<=", self.spec.max_error_rate),
                Guard("p99_ms", "<=", self.spec.max_p99_ms))
        own = {g.metric for g in self.spec.guards}
        return tuple(g for g in base if g.metric not in own) + tuple(self.spec.guards)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    # -- the stored JSON -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": s.name, "service": s.service, "state": self.state, "version": s.version,
            "previous": s.previous, "strategy": s.strategy, "step": self.step,
            "steps": list(s.steps), "share": self.share, "mirror": self.mirror,
            "interval_seconds": s.interval_seconds, "failures": s.failures,
            "failed_checks": self.failed_checks, "checks": self.checks,
            "min_samples": s.min_samples, "max_error_rate": s.max_error_rate,
            "max_p99_ms": s.max_p99_ms, "guards": [str(g) for g in self.guards],
            "extra_guards": [str(g) for g in s.guards],
            "segment": dict(s.segment), "started_at": _iso(self.started_at),
            "started_ts": self.started_at, "window_start": self.window_start,
            "next_check_at": self.next_check_at, "rev": self.rev,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rollout:
        own = tuple(parse_guard(g) for g in d.get("extra_guards", []))
        spec = Spec(d["name"], d["service"], int(d["version"]),
                    None if d.get("previous") is None else int(d["previous"]), d["strategy"],
                    tuple(float(s) for s in d["steps"]), float(d["interval_seconds"]),
                    int(d["failures"]), float(d["max_error_rate"]), float(d["max_p99_ms"]),
                    int(d["min_samples"]), own, dict(d.get("segment") or {}))
        return cls(spec, d["state"], int(d["step"]), float(d["share"]),
                   float(d.get("mirror", 0.0)), int(d["failed_checks"]), int(d["checks"]),
                   float(d["started_ts"]), float(d["window_start"]),
                   float(d["next_check_at"]), int(d.get("rev", 0)), tuple(d["history"]))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _transition(r: Rollout, event: str, reason: str, now: float,
                measured: Measurements | None = None, **changes: Any) -> Rollout:
    """Apply ``event`` (checked against ``TRANSITIONS``) and record it in the history."""
    target = TRANSITIONS.get((r.state, event))
    if target is None:
        raise Conflict(f"rollout of {r.name} is {r.state}: cannot {event} it", field="name")
    new = dataclasses.replace(r, state=target, **changes)
    entry: dict[str, Any] = {"at": _iso(now), "event": event, "reason": reason,
                             "state": new.state, "step": new.step, "share": new.share}
    if r.spec.strategy == "shadow":
        entry["mirror"] = new.mirror
    if measured is not None:
        entry["measured"] = {"requests": measured.requests, "errors": measured.errors,
                             "error_rate": round(measured.error_rate, 6),
                             "p99_ms": measured.p99_ms,
                             **{k: round(v, 6) for k, v in measured.values.items()}}
    return dataclasses.replace(new, history=(*r.history, entry))


def start(spec: Spec, now: float) -> Rollout:
    """A new running rollout at its first step (blue-green: waiting for its smoke check)."""
    if spec.strategy not in STRATEGIES:
        raise BadRequest(f"strategy must be one of {', '.join(STRATEGIES)}, "
                         f"got {spec.strategy!r}", field="strategy")
    if spec.strategy == "blue-green":
        spec = dataclasses.replace(spec, steps=(100.0,))
    for name, value, low in (("interval", spec.interval_seconds, 0.0),
                             ("failures", spec.failures, 1), ("min_samples", spec.min_samples, 0)):
        if value < low or (name == "interval" and value <= 0):
            raise BadRequest(f"{name} must be {'> 0' if name == 'interval' else f'>= {low}'}, "
                             f"got {value!r}", field=name)
    r = Rollout(spec, started_at=now, window_start=now, next_check_at=now + spec.interval_seconds)
    first = spec.steps[0] / 100
    label = f"v{spec.version}" + (f" (production v{spec.previous})" if spec.previous else "")
    if spec.strategy == "canary":
        seg = f" in segment {_seg(spec.segment)}" if spec.segment else ""
        return _transition(r, "start", f"canary of {label} started: {first:.0%} of units{seg}",
                           now, step=1, share=first)
    if spec.strategy == "shadow":
        return _transition(r, "start", f"shadow of {label} started: it scores {first:.0%} of "
                                      f"requests off the response path", now, step=1, mirror=first)
    return _transition(r, "start", f"blue-green of {label} started: waiting for a request "
                                  f"worker to load and smoke-check it", now)


def _seg(segment: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in segment.items())


def step(r: Rollout, m: Measurements, now: float) -> tuple[Rollout, str]:
    """The rollout after one look at ``m`` at ``now``, and why (pure: no I/O)."""
    if r.finished:
        return r, f"rollout is {r.state}"
    spec = r.spec
    if spec.strategy == "blue-green" and r.step == 0:
        if m.smoke is not None and m.smoke != "ok":
            reason = f"smoke check of v{spec.version} failed: {m.smoke}"
            return _transition(r, "rollback", reason, now, share=0.0), reason
        if m.smoke == "ok":
            reason = (f"v{spec.version} loaded and smoke-checked: all traffic moves to it "
                      f"(v{spec.previous} stays loaded)")
            return _transition(r, "switch", reason, now, step=1, share=1.0, window_start=now,
                               next_check_at=now + spec.interval_seconds), reason
        if now >= r.started_at + spec.failures * spec.interval_seconds:
            reason = (f"no request worker smoke-checked v{spec.version} within "
                      f"{spec.failures * spec.interval_seconds:g}s")
            return _transition(r, "rollback", reason, now, share=0.0), reason
        return r, "waiting for the smoke check"
    if now < r.next_check_at:
        return r, f"next check in {r.next_check_at - now:.1f}s"
    if m.requests < spec.min_samples:
        # Not a check: the window keeps growing until it holds enough requests.
        return (dataclasses.replace(r, next_check_at=now + spec.interval_seconds),
                f"waiting for samples: {m.requests} < {spec.min_samples}")
    failed = []
    for guard in r.guards:
        value = m.value(guard.metric)
        if value is None:
            failed.append(f"{guard.metric} not measured (guard {guard})")
        elif not guard.check(value):
            failed.append(f"{guard.metric}={value:.4g} breaks {guard}")
    window = {"window_start": now, "next_check_at": now + spec.interval_seconds,
              "checks": r.checks + 1}
    what = "mirrored " if spec.strategy == "shadow" else ""
    if failed:
        n = r.failed_checks + 1
        reason = (f"check failed ({n}/{spec.failures}) on {m.requests} {what}requests: "
                  + "; ".join(failed))
        if n >= spec.failures:
            reason += f": rolled back to v{spec.previous}" if spec.previous else ": rolled back"
            return _transition(r, "rollback", reason, now, m, share=0.0, mirror=0.0,
                               failed_checks=n, **window), reason
        return _transition(r, "fail", reason, now, m, failed_checks=n, **window), reason
    passed = f"all {len(r.guards)} guards passed on {m.requests} {what}requests"
    if r.step >= len(spec.steps):
        reason = f"{passed} at 100%: promoted v{spec.version}"
        return _transition(r, "promote", reason, now, m, share=1.0, **window), reason
    nxt = spec.steps[r.step] / 100
    if spec.strategy == "shadow":
        reason = f"{passed}: mirrored {r.mirror:.0%} -> {nxt:.0%}"
        return _transition(r, "advance", reason, now, m, step=r.step + 1, mirror=nxt,
                           **window), reason
    reason = f"{passed}: share {r.share:.0%} -> {nxt:.0%}"
    return _transition(r, "advance", reason, now, m, step=r.step + 1, share=nxt,
                       **window), reason


def promote(r: Rollout, now: float, who: str = "operator") -> Rollout:
    """``rollout promote``: the candidate becomes production now."""
    return _transition(r, "promote", f"promoted v{r.version} by {who}", now, share=1.0,
                       step=len(r.spec.steps))


def abort(r: Rollout, now: float, who: str = "operator") -> Rollout:
    """``rollout abort``: the candidate's share goes to 0, production stays."""
    return _transition(r, "abort", f"aborted by {who}: v{r.version} no longer served",
                       now, share=0.0, mirror=0.0)


def guards_of(texts: Sequence[str]) -> tuple[Guard, ...]:
    return tuple(parse_guard(t, field=f"guard[{i}]") for i, t in enumerate(texts))
