"""``mlsuite loadtest``: a headless Locust run of one scenario in loadtests/, with reports.

Locust runs in its own process (``python -m locust``): importing it monkey-patches the
whole interpreter with gevent, which neither this CLI nor a service may suffer. The
scenario files are in the checkout's ``loadtests/`` folder: ``shop`` (the e-commerce
site -> recommender), ``payments`` (the payment flow and late labels -> fraud) and
``mixed`` (both at once).

Against running services (``--host-recommender`` / ``--host-fraud``, loopback only), or,
for a service whose URL is not given, against one started for the run on a free port
(data, Redis, Feast and models prepared as ``mlsuite bench`` does, all stopped at the
end). The run lasts ``--duration``; Locust's CSV files and HTML report go to
``reports/loadtest/<scenario>/``. The exit status is Locust's: 1 when any request
failed.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import click

__all__ = ["SCENARIOS", "check_loopback_url", "loadtest", "parse_duration"]

# scenario -> (locustfile in loadtests/, services it calls)
SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shop": ("shop_site.py", ("recommender",)),
    "payments": ("payment_flow.py", ("fraud",)),
    "mixed": ("mixed.py", ("recommender", "fraud")),
}
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """Seconds in "90", "30s", "2m", "1m30s" or "1h".

    >>> [parse_duration(t) for t in ("90", "30s", "2m", "1m30s")]
    [90, 30, 120, 90]
    """
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        m = _DURATION.match(text)
        if not m or not any(m.groups()):
            raise click.BadParameter(f"expected seconds or a time like 30s, 2m, 1m30s; got {text!r}")
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if not 1 <= seconds <= 24 * 3600:
        raise click.BadParameter(f"must be between 1 s and 24 h, got {text!r}")
    return seconds


def check_loopback_url(url: str) -> str:
    """``url`` without a trailing slash, if it is http(s) on this machine's loopback.

    >>> check_loopback_url("http://127.0.0.1:8001/")
    'http://127.0.0.1:8001'
    """
    parsed = urlparse(url)
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parsed.scheme not in ("http", "https") or not loopback:
        raise click.BadParameter(
            f"load tests only target services on this machine: expected http://127.0.0.1:PORT "
            f"(or localhost, [::1]), got {url!r}")
    return url.rstrip("/")


def _loopback_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_loopback_url(value)


def _locustfiles() -> Path:
    from mlplatform.config import source_root

    return source_root() / "loadtests"


def _aggregated(stats_csv: Path) -> tuple[int, int, float] | None:
    """(requests, failures, requests/s) from Locust's live stats CSV, if written yet."""
    try:
        with stats_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("Name") == "Aggregated":
                    return (int(row["Request Count"]), int(row["Failure Count"]),
                            float(row["Requests/s"]))
    except (OSError, ValueError, KeyError):
        return None
    return None


def run_locust(scenario: str, urls: dict[str, str], *, seconds: int, users: int,
               spawn_rate: float, out_dir: Path, data_dir: Path, progress: bool = True,
               api_key: str | None = None) -> int:
    """Run Locust headless for ``seconds``; returns its exit status (1 on failures).
    Its users send ``api_key`` (else MLSUITE_API_KEY, if set)."""
    locustfile = _locustfiles() / SCENARIOS[scenario][0]
    if not locustfile.is_file():
        raise click.ClickException(f"scenario file {locustfile} is missing")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
           "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{seconds}s",
           "--stop-timeout", "5", "--csv", str(prefix), "--html", str(out_dir / "report.html"),
           "--exit-code-on-error", "1", "--loglevel", "WARNING"]
    if progress:  # our bar shows the live totals; without a terminal, Locust's tables do
        cmd.append("--only-summary")
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
           "MLSUITE_LOADTEST_RECOMMENDER_URL": urls.get("recommender", ""),
           "MLSUITE_LOADTEST_FRAUD_URL": urls.get("fraud", "")}
    if api_key:
        env["MLSUITE_API_KEY"] = api_key
    proc = subprocess.Popen(cmd, env=env)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=seconds, desc=f"locust {scenario}", unit="s", leave=False,
                   bar_format="{desc} {bar:30} {n:.0f}/{total}s {postfix}")
    t0 = time.monotonic()
    try:
        # Locust stops itself after --run-time; the deadline is only a safety net.
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if elapsed > seconds + 60:
                proc.terminate()
                raise click.ClickException(f"locust did not stop within {seconds + 60}s")
            if bar is not None:
                live = _aggregated(prefix.with_name("locust_stats.csv"))
                if live:
                    bar.set_postfix_str(f"{live[0]:,} requests, {live[1]} failed, "
                                        f"{live[2]:,.0f} req/s", refresh=False)
                bar.n = min(elapsed, seconds)
                bar.refresh()
            time.sleep(0.5)
    except KeyboardInterrupt:
        proc.wait(timeout=30)  # Ctrl-C reached Locust too: it writes its reports and stops
        raise
    finally:
        if bar is not None:
            bar.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def _check_ready(service: str, url: str) -> None:
    from mlplatform.serving import wait_ready

    try:
        wait_ready(url, timeout=10)
    except (TimeoutError, RuntimeError) as exc:
        raise click.ClickException(f"the {service} at {url} is not ready: {exc}") from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scenario", type=click.Choice(sorted(SCENARIOS)), default="mixed",
              show_default=True, help="shop: the e-commerce site; payments: the payment flow "
                                      "and late labels; mixed: both.")
@click.option("--duration", default="30s", show_default=True,
              help="How long the run lasts: seconds, or 30s, 2m, 1m30s.")
@click.option("--users", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Simulated callers (shoppers, gateways, jobs) at full ramp.")
@click.option("--spawn-rate", type=click.FloatRange(0.1, 1000), default=10.0, show_default=True,
              help="Callers started per second while ramping up.")
@click.option("--host-recommender", default=None, metavar="URL", callback=_loopback_option,
              help="A running recommender (loopback), e.g. http://127.0.0.1:8001.")
@click.option("--host-fraud", default=None, metavar="URL", callback=_loopback_option,
              help="A running fraud service (loopback), e.g. http://127.0.0.1:8002.")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]), default=None,
              help="WSGI server for services started here (default: MLSUITE_SERVER).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Workers per service started here (default: MLSUITE_WORKERS).")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports/loadtest"), show_default=True,
              help="Reports go to OUT/<scenario>/ (locust_*.csv, report.html).")
def loadtest(scenario: str, duration: str, users: int, spawn_rate: float,
             host_recommender: str | None, host_fraud: str | None, server: str | None,
             workers: int | None, out_root: Path) -> None:
    """Run a Locust scenario headless against the services and write its reports.

    Services whose URL is not given are started for the run on free 127.0.0.1 ports
    and stopped at the end. Exits 1 if any request failed.
    """
    from mlplatform.config import get_settings
    from mlplatform.logs import configure_logging

    seconds = parse_duration(duration)
    settings = get_settings()
    configure_logging(settings.log_level)
    given = {"recommender": host_recommender, "fraud": host_fraud}
    urls = {s: u for s, u in given.items() if u}
    needed = SCENARIOS[scenario][1]
    to_start = [s for s in needed if s not in urls]
    out_dir = out_root / scenario
    from mlplatform.security.keys import local_key
    from mlplatform.stack import Stack, sigterm_interrupts

    stack = None
    try:
        if to_start:

            with sigterm_interrupts():
                stack = Stack(settings, to_start, server=server or settings.server,
                              workers=workers or settings.workers, name="loadtest",
                              say=click.echo)
                stack.start()
            urls.update(stack.urls)
        for service in needed:
            if service not in to_start:
                _check_ready(service, urls[service])
        click.echo(f"locust: {scenario} for {seconds}s with {users} users against "
                   + ", ".join(f"{s} {urls[s]}" for s in needed))
        with sigterm_interrupts():
            code = run_locust(scenario, urls, seconds=seconds, users=users,
                              spawn_rate=spawn_rate, out_dir=out_dir,
                              data_dir=settings.data_dir, progress=sys.stderr.isatty(),
                              api_key=stack.api_key if stack is not None else local_key(settings))
    except KeyboardInterrupt:
        click.echo("\nloadtest interrupted", err=True)
        sys.exit(130)
    finally:
        if stack is not None:
            stack.stop()
    totals = _aggregated(out_dir / "locust_stats.csv")
    if totals:
        click.echo(f"locust: {totals[0]:,} requests, {totals[1]} failed, {totals[2]:,.1f} req/s")
    click.echo(f"reports: {out_dir}/report.html, {out_dir}/locust_stats.csv, "
               f"locust_failures.csv, locust_exceptions.csv")
    if code != 0:
        click.echo(f"loadtest: locust exited with status {code} (failures: see "
                   f"{out_dir}/locust_failures.csv)", err=True)
        sys.exit(code)
