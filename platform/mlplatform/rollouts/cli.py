"""``mlsuite rollout ...``: start, watch, promote and abort model rollouts.

Loaded lazily by ``mlplatform.cli``. The commands only write the rollout document and
move registry aliases; the controller in the service's worker (``mlsuite worker
SERVICE``) checks the guards at every interval and advances, promotes or rolls back.
Refused input (an unknown model or version, a second rollout of one model, a malformed
guard, promoting or aborting a finished rollout) ends with a message naming it and
exit status 2.
"""

from __future__ import annotations

import json
from typing import Any

import click
import redis

from mlplatform.config import Settings, duration_seconds, get_settings
from mlplatform.errors import APIError, BadRequest, MLSuiteError
from mlplatform.logs import configure_logging
from mlplatform.registry import ModelRegistry
from mlplatform.rollouts.machine import STRATEGIES, Rollout, guards_of, parse_segment, parse_steps
from mlplatform.rollouts.measure import read_measurements
from mlplatform.rollouts.store import RolloutStore

__all__ = ["rollout"]


@click.group("rollout", context_settings={"help_option_names": ["-h", "--help"]})
def rollout() -> None:
    """Progressive delivery: canary, blue-green and shadow rollouts with automatic rollback.

    The service's worker (`mlsuite worker recommender|fraud`) runs the controller.
    """


def _store() -> tuple[Settings, RolloutStore]:
    settings = get_settings()
    configure_logging(settings.log_level)
    url = settings.redis_url or _embedded_url(settings)
    if not url:
        raise click.ClickException(
            "no Redis to keep rollouts in: set MLSUITE_REDIS_URL, or run `mlsuite demo` "
            "(its embedded Redis is found through the data folder)")
    from mlplatform.redisdb import connect

    client = connect(url)
    return settings, RolloutStore(client, ModelRegistry(settings.data_dir / "models"))


def _embedded_url(settings: Settings) -> str | None:
    from mlplatform.redisdb import EmbeddedRedis, connect

    try:
        url = EmbeddedRedis(settings.data_dir).url_file.read_text().strip()
        return url if connect(url, socket_timeout=0.3).ping() else None
    except (OSError, redis.RedisError):
        return None


class _BadInput(click.ClickException):
    exit_code = 2


def _fail(exc: MLSuiteError) -> click.ClickException:
    """Bad input (unknown model or version, a rollout already running): exit status 2."""
    if isinstance(exc, APIError) and exc.status in (400, 404, 409):
        return _BadInput(str(exc))
    return click.ClickException(str(exc))


def _seconds(text: str) -> float:
    value = duration_seconds(text)
    if value is None or value <= 0:
        raise click.BadParameter(f"must be a duration such as 30s, 2m or 1.5, got {text!r}",
                                 param_hint="--interval")
    return value


@rollout.command("start")
@click.argument("name")
@click.option("--version", "version", required=True,
              help="Registered version to roll out (a number, v3, or an alias).")
@click.option("--strategy", type=click.Choice(STRATEGIES), required=True)
@click.option("--steps", default="5,25,50,100", show_default=True,
              help="Canary shares (shadow: mirrored shares) in percent, ending at 100.")
@click.option("--interval", default="30s", show_default=True,
              help="How often the guards are checked (30s, 2m).")
@click.option("--failures", type=click.IntRange(1), default=2, show_default=True,
              help="Failed checks before an automatic rollback.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True)
@click.option("--max-p99-ms", type=click.FloatRange(0, min_open=True), default=50.0,
              show_default=True)
@click.option("--min-samples", type=click.IntRange(0), default=100, show_default=True,
              help="Requests the candidate must have served in an interval to be checked.")
@click.option("--guard", "guards", multiple=True,
              help="A business guard METRIC<=X or METRIC>=X (repeatable), e.g. "
                   "conversion>=0.02, decline_rate<=0.05, agreement>=0.9.")
@click.option("--segment", default=None,
              help="Canary only units whose attributes match, e.g. country=DE or segment=S1.")
@click.option("--service", default=None,
              help="Service whose worker runs the controller (default: from NAME, "
                   "fraud-online -> fraud).")
@click.option("--json", "as_json", is_flag=True, help="Print the new rollout as JSON.")
def start(name: str, version: str, strategy: str, steps: str, interval: str, failures: int,
          max_error_rate: float, max_p99_ms: float, min_samples: int, guards: tuple[str, ...],
          segment: str | None, service: str | None, as_json: bool) -> None:
    """Start rolling out VERSION of model NAME; the service's worker drives it from here."""
    settings, store = _store()
    try:
        v = _version(store, name, version)
        started = store.start(
            name, v, strategy, service=service, steps=parse_steps(steps),
            interval_seconds=_seconds(interval), failures=failures,
            max_error_rate=max_error_rate, max_p99_ms=max_p99_ms, min_samples=min_samples,
            guards=guards_of(guards), segment=parse_segment(segment))
    except MLSuiteError as exc:
        raise _fail(exc) from None
    _show(started, as_json)


def _version(store: RolloutStore, name: str, ref: str) -> int:
    if name not in store.registry.names():
        known = ", ".join(store.registry.names()) or "(none)"
        raise BadRequest(f"no model named {name!r} in the registry; known models: {known}",
                         field="name")
    return store.registry.resolve(name, ref).version


@rollout.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help="Print the rollout document (state, version, strategy, step, share, "
                   "history, ...) and the current interval's measurements as JSON.")
def status(name: str, as_json: bool) -> None:
    """Show the rollout of model NAME: state, step, share and every transition."""
    _, store = _store()
    try:
        current = store.require(name)
    except MLSuiteError as exc:
        raise _fail(exc) from None
    _show(current, as_json, store)


@rollout.command("promote")
@click.argument("name")
def promote_cmd(name: str) -> None:
    """Promote the running rollout of NAME now: its candidate becomes production."""
    _, store = _store()
    try:
        _show(store.promote(name), False)
    except MLSuiteError as exc:
        raise _fail(exc) from None


@rollout.command("abort")
@click.argument("name")
def abort_cmd(name: str) -> None:
    """Abort the running rollout of NAME: the candidate stops serving, production stays."""
    _, store = _store()
    try:
        _show(store.abort(name), False)
    except MLSuiteError as exc:
        raise _fail(exc) from None


def _show(r: Rollout, as_json: bool, store: RolloutStore | None = None) -> None:
    doc: dict[str, Any] = r.to_dict()
    if store is not None and not r.finished:
        import time

        role = "shadow" if r.spec.strategy == "shadow" else "live"
        m = read_measurements(store.client, r.name, r.version, r.window_start, time.time(),
                              role=role)
        doc["current_window"] = {"requests": m.requests, "errors": m.errors,
                                 "error_rate": m.error_rate, "p99_ms": m.p99_ms, **m.values}
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    extra = f", mirror {r.mirror:.0%}" if r.spec.strategy == "shadow" else ""
    click.echo(f"{r.name}: {r.spec.strategy} rollout of v{r.version} "
               f"(production v{r.spec.previous}) is {r.state}: step {r.step}/"
               f"{len(r.spec.steps)}, share {r.share:.0%}{extra}, failed checks "
               f"{r.failed_checks}/{r.spec.failures}")
    click.echo(f"  guards: {', '.join(str(g) for g in r.guards)}; every "
               f"{r.spec.interval_seconds:g}s with >= {r.spec.min_samples} requests"
               + (f"; segment {doc['segment']}" if r.spec.segment else ""))
    if "current_window" in doc:
        click.echo(f"  this interval: {json.dumps(doc['current_window'], default=str)}")
    for entry in r.history:
        click.echo(f"  {entry['at']}  {entry['event']:<9} {entry['reason']}")
