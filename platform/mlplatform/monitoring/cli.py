"""``mlsuite monitor ...``: monitoring reports from the command line (``drift``).

Loaded lazily by ``mlplatform.cli``. ``mlsuite monitor drift fraud`` compares the last
hour of the fraud service's inputs (its decision stream, and the lake for what was
trimmed) with the training reference of its production model, and prints a table with
drifted features marked; ``--json`` prints the report other tools read. Exit status 0
either way (drift is a finding, not a failure); 2 for bad input or no model to compare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from mlplatform.config import duration_seconds
from mlplatform.errors import MLSuiteError

__all__ = ["monitor"]

SERVICES = ("recommender", "fraud")


@click.group("monitor", context_settings={"help_option_names": ["-h", "--help"]})
def monitor() -> None:
    """Monitoring reports: per-feature drift of live traffic against training."""


class _BadInput(click.ClickException):
    exit_code = 2


def _window(_ctx: click.Context, _param: click.Parameter, text: str) -> float:
    value = duration_seconds(text)
    if value is None or value <= 0:
        raise click.BadParameter(f"must be a duration such as 15m, 1h or 1d, got {text!r}")
    return value


def _client(settings: Any) -> Any:
    """The services' Redis (MLSUITE_REDIS_URL, else the demo's embedded one); None if
    there is none, then only the lake is read."""
    import redis

    from mlplatform.redisdb import connect, services_url

    url = services_url(settings)
    if not url:
        return None
    client = connect(url, socket_timeout=5.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise click.ClickException(f"redis at {url} is not answering: {exc}") from None
    return client


@monitor.command("drift")
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--window", default="1h", show_default=True, callback=_window,
              help="How much recent live traffic to compare (e.g. 15m, 1h, 1d).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def drift(service: str, window: float, as_json: bool) -> None:
    """Per-feature drift of SERVICE's live inputs against training.

    Compares the window's inputs with the training reference of the production model.
    Numeric features: normalised Wasserstein distance (or K-S on a small reference) and
    PSI; categorical ones: Jensen-Shannon distance (or chi-square). Thresholds follow
    Evidently's defaults; drifted features are marked with '!'.
    """
    from mlplatform.cli import _settings
    from mlplatform.monitoring.driftreport import drift_report

    settings = _settings()
    try:
        report = drift_report(settings, service, window_seconds=window,
                              redis_client=_client(settings))
    except MLSuiteError as exc:
        raise _BadInput(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(render(report))


def render(report: Mapping[str, Any]) -> str:
    """The report as a table: one line per feature, drifted first, marked with '!';
    those the window does not judge (``not_judged``) marked with '~'.

    >>> print(render({"model": "m:v1", "reference": "m:v1", "window": "1h", "rows": 80,
    ...     "enough_data": True, "drift_share": 0.5, "n_drifted": 1, "features": {
    ...     "amount": {"kind": "numeric", "statistic": "wasserstein", "value": 1.2,
    ...                "threshold": 0.1, "drifted": True, "psi": 2.0},
    ...     "channel": {"kind": "categorical", "statistic": "jensenshannon", "value": 0.01,
    ...                 "threshold": 0.1, "drifted": False},
    ...     "hour": {"kind": "numeric", "statistic": "wasserstein", "value": 0.9,
    ...              "threshold": 0.1, "drifted": False, "not_judged": "time of day"}}}))
    m:v1 (reference m:v1): 80 live rows in the last 1h, 1/2 features drifted (50%); ~ not judged: time of day
      feature  kind         statistic      value  threshold    psi
    ! amount   numeric      wasserstein   1.2000     0.1000 2.0000
      channel  categorical  jensenshannon 0.0100     0.1000      -
    ~ hour     numeric      wasserstein   0.9000     0.1000      -
    """
    features = report["features"]
    head = (f"{report['model']} (reference {report['reference']}): {report['rows']} live rows "
            f"in the last {report['window']}, ")
    unjudged = [n for n in features if features[n].get("not_judged")]
    if report["enough_data"]:
        head += (f"{report['n_drifted']}/{len(features) - len(unjudged)} features drifted "
                 f"({report['drift_share']:.0%})")
    else:
        head += "too few to flag anything"
    if unjudged:
        head += f"; ~ not judged: {features[unjudged[0]]['not_judged']}"
    order = sorted(features, key=lambda n: (not features[n]["drifted"],
                                            bool(features[n].get("not_judged")), n))
    width = max([len("feature"), *map(len, features)])

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [head, f"  {'feature':<{width}}  {'kind':<11}  {'statistic':<13} {'value':>6} "
                   f"{'threshold':>10} {'psi':>6}"]
    for name in order:
        r = features[name]
        mark = "!" if r["drifted"] else "~" if r.get("not_judged") else " "
        lines.append(f"{mark} {name:<{width}}  {r['kind']:<11}  "
                     f"{r['statistic']:<13} {number(r['value']):>6} {number(r['threshold']):>10} "
                     f"{number(r.get('psi')):>6}")
    return "\n".join(lines)
