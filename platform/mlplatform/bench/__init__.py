"""Benchmarks: how much traffic one machine takes, against a bare Flask baseline.

- ``loadgen``: the load generator (standard library only): closed loop to saturation,
  open loop at a fixed rate with coordinated-omission-aware latency, exact percentiles.
- ``payloads``: the endpoints under test, with requests built from the data files.
- ``mlplatform.stack`` (shared with ``mlsuite demo``): data, Redis, Feast, models and services, for one run
  (``mlsuite loadtest`` starts its services with it too).
- ``harness``: the run itself; ``report``: the table, the JSON and the issue's targets.

``bench`` is the ``mlsuite bench`` command; this module imports only click, so that
``mlsuite --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["bench"]


def _services(value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("give at least one of baseline, recommender, fraud")
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.FloatRange(1, 3600), default=10.0, show_default=True,
              help="Seconds each measurement lasts (saturation, then half of peak, per endpoint).")
@click.option("--warmup", type=click.FloatRange(0, 600), default=3.0, show_default=True,
              help="Seconds of unmeasured load before each saturation measurement (a "
                   "service's first requests may fill caches).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--services", default="baseline,recommender,fraud", show_default=True,
              help="Comma-separated services to bench (the baseline gives the ratios); add "
                   "baseline-conventions to see what mlsuite's HTTP conventions cost, "
                   "baseline-recorded for the floor under fraud.score (conventions plus its "
                   "two Redis script calls, no scoring).")
@click.option("--only", default="", metavar="TEXT[,TEXT]",
              help="Only endpoints whose name contains one of these (e.g. fraud.score); "
                   "the baseline is always measured.")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]), default=None,
              help="WSGI server for every service (default: MLSUITE_SERVER).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes per service (default: MLSUITE_WORKERS).")
@click.option("--threads", type=click.IntRange(1, 64), default=None,
              help="Request threads per worker (default: MLSUITE_THREADS).")
@click.option("--connections", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Concurrent keep-alive connections at saturation.")
@click.option("--generator-processes", "processes", type=click.IntRange(1, 10), default=1,
              show_default=True, help="Load generator processes (1 leaves the servers most CPU).")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Users / transactions per batch request.")
@click.option("--half-rate-runs", type=click.IntRange(1, 50), default=1, show_default=True,
              help="Half-rate measurements per endpoint; the one with the median p99 is "
                   "reported (use 5 or more on a noisy machine).")
@click.option("--redis", "redis_kind", type=click.Choice(["server", "cluster"]), default="server",
              show_default=True,
              help="cluster: measure every endpoint on the usual Redis, then again on a "
                   "private three-master Redis Cluster (rows <name>@cluster), in one run.")
@click.option("--no-progress", is_flag=True, help="No progress bars (logs, CI).")
def bench(duration: float, warmup: float, json_path: Path | None, services: str, only: str,
          server: str | None, workers: int | None, threads: int | None, connections: int,
          processes: int, batch_size: int, half_rate_runs: int, redis_kind: str,
          no_progress: bool) -> None:
    """Measure the services against a bare Flask endpoint on this machine.

    Starts the baseline (GET /ping, no conventions), the recommender and the fraud scorer
    under the same server and settings on free 127.0.0.1 ports (data simulated, Feast
    materialized and models trained if missing; Redis private unless MLSUITE_REDIS_URL is
    set), drives each endpoint to saturation with one load generator, then at half its
    peak rate, and prints requests/s (items/s for batches), p50/p99/p99.9 latency, errors
    and the ratio to the baseline. Exits 1 if any request failed.
    """
    from mlplatform.bench.harness import BenchOptions, run_bench
    from mlplatform.config import get_settings
    from mlplatform.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    if processes > connections:
        raise click.BadParameter("must not exceed --connections", param_hint="--generator-processes")
    opts = BenchOptions(
        services=tuple(_services(services)), server=server or settings.server,
        workers=workers or settings.workers, threads=threads or settings.threads,
        duration=duration, warmup=warmup,
        connections=connections, processes=processes, batch_size=batch_size,
        only=tuple(o.strip() for o in only.split(",") if o.strip()), json_path=json_path,
        half_rate_runs=half_rate_runs, redis=redis_kind,
        progress="none" if no_progress else "bar" if sys.stderr.isatty() else "lines",
    )
    from mlplatform.stack import sigterm_interrupts

    try:
        with sigterm_interrupts():
            report = run_bench(settings, opts, say=click.echo)
    except KeyboardInterrupt:
        click.echo("\nbench interrupted: servers and Redis stopped", err=True)
        sys.exit(130)
    errors = next(t for t in report["targets"] if t["figure"] == "errors")["measured"]
    if errors:
        click.echo(f"bench: {errors} requests failed (see error_kinds in the report)", err=True)
        sys.exit(1)
