"""``mlsuite experiments``: read an A/B experiment's report, list and reset experiments.

The counts are in the services' Redis: ``MLSUITE_REDIS_URL``, else the data folder's
embedded server while ``mlsuite demo`` runs.
"""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["experiments"]


def _context() -> tuple[Any, Any]:
    """(settings, ExperimentStore on the services' Redis)."""
    import redis

    from mlplatform.cli import _settings
    from mlplatform.experiments.store import ExperimentStore
    from mlplatform.redisdb import connect, services_url

    settings = _settings()
    url = services_url(settings)
    if not url:
        raise click.ClickException(
            "no Redis to read: set MLSUITE_REDIS_URL, or run `mlsuite demo` with the same "
            "MLSUITE_DATA_DIR")
    client = connect(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise click.ClickException(f"redis at {url} is not answering: {exc}") from None
    return settings, ExperimentStore(client)


def _definition(settings: Any, name: str) -> Any:
    from mlplatform.experiments.definition import load_definitions

    definitions = load_definitions(settings.experiments_file)
    if name not in definitions:
        raise click.ClickException(f"unknown experiment {name!r}; expected one of "
                                   f"{', '.join(sorted(definitions)) or '(none configured)'}")
    return definitions[name]


@click.group()
def experiments() -> None:
    """A/B experiments: per-variant conversion, lift with a 95% CI, SRM and guardrails."""


@experiments.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(name: str, as_json: bool) -> None:
    """The report of experiment NAME: users, exposures, conversions, lift vs the control
    with a 95% confidence interval and p-value, sample-ratio mismatch, guardrails."""
    from mlplatform.experiments import report_for
    from mlplatform.experiments.report import format_report

    settings, store = _context()
    body = report_for(store, _definition(settings, name)).to_json()
    click.echo(json.dumps(body, indent=2) if as_json else format_report(body))


@experiments.command("list")
def list_experiments() -> None:
    """Configured experiments and whether counts exist for them."""
    from mlplatform.experiments.definition import load_definitions

    settings, store = _context()
    recorded = set(store.names())
    for name, d in sorted(load_definitions(settings.experiments_file).items()):
        weights = ", ".join(f"{v}={w:g}" for v, w in d.weights.items())
        click.echo(f"{name}: {weights}; control {d.control}; window {d.window_seconds:g}s"
                   f"{'' if name in recorded else ' (nothing recorded yet)'}")


@experiments.command("reset")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(name: str, yes: bool) -> None:
    """Delete the counts of experiment NAME (start a new measurement)."""
    settings, store = _context()
    _definition(settings, name)
    if not yes:
        click.confirm(f"delete every count of experiment {name}?", abort=True)
    click.echo(f"{name}: {store.reset(name)} keys deleted")
