"""``mlsuite gateway config`` and ``mlsuite up`` (registered lazily by ``mlplatform.cli``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from mlplatform.config import Settings, get_settings
from mlplatform.errors import ConfigError
from mlplatform.gateway.haproxy import (
    POOLS,
    GatewayConfig,
    Server,
    check_config,
    find_haproxy,
    render,
)
from mlplatform.gateway.up import DEFAULT_GATEWAY_PORT, DEFAULT_SERVICES, ScaleOut, print_urls
from mlplatform.logs import configure_logging

__all__ = ["gateway", "up"]


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


def _address(option: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{option} must be HOST:PORT with a port in [1, 65535], "
                                 f"got {text!r}", param_hint=option)
    return host, int(port)


@click.group()
def gateway() -> None:
    """The HAProxy gateway in front of the services' replicas."""


@gateway.command("config")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_GATEWAY_PORT,
              show_default=True, help="The gateway's one front port.")
@click.option("--host", default=None, help="Address to bind (default: MLSUITE_HOST).")
@click.option("--recommender", multiple=True, metavar="HOST:PORT",
              help="A recommender replica (repeat for each).")
@click.option("--fraud", multiple=True, metavar="HOST:PORT",
              help="A fraud replica (repeat for each).")
@click.option("--console", multiple=True, metavar="HOST:PORT", help="The console.")
@click.option("--graphql", multiple=True, metavar="HOST:PORT", help="The GraphQL service.")
@click.option("--rate-limit", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Requests/s per API key at the gateway, over 10 s (0: none; the "
                   "services' own per-key limits apply either way).")
@click.option("--maxconn", type=click.IntRange(1), default=4096, show_default=True,
              help="Connections the gateway accepts in all.")
@click.option("--server-maxconn", type=click.IntRange(1), default=32, show_default=True,
              help="Requests forwarded at once to one replica (the rest queue).")
@click.option("--stats-socket", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Unix socket for `show stat` (none by default).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the configuration here (default: standard output).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Validate with `haproxy -c` (needs haproxy).")
def gateway_config(port: int, host: str | None, recommender: tuple[str, ...],
                   fraud: tuple[str, ...], console: tuple[str, ...], graphql: tuple[str, ...],
                   rate_limit: float, maxconn: int, server_maxconn: int,
                   stats_socket: Path | None, out: Path | None, check: bool) -> None:
    """Write an HAProxy configuration: /recommender/... and /fraud/... (prefix stripped)
    to their pools, /graphql to GraphQL, everything else to the console.

    With no server given, it fronts the demo's services (MLSUITE_HOST and the
    MLSUITE_*_PORT ports); given any, only the pools named."""
    settings = _settings()
    given = {"recommender": recommender, "fraud": fraud, "console": console,
             "graphql": graphql}
    if not any(given.values()):
        given = {s: (f"{settings.host}:{getattr(settings, f'{s}_port')}",) for s in POOLS}
    pools = {}
    for service, addresses in given.items():
        servers = []
        for i, text in enumerate(addresses, start=1):
            h, p = _address(f"--{service}", text)
            name = service if service in ("console", "graphql") and len(addresses) == 1 \
                else f"{service}-{i}"
            servers.append(Server(name, h, p))
        pools[service] = servers
    try:
        config = GatewayConfig(port=port, host=host or settings.host, pools=pools,
                               rate_limit=rate_limit, maxconn=maxconn,
                               server_maxconn=server_maxconn, stats_socket=stats_socket)
        text = render(config)
        if check:
            check_config(text)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"gateway: configuration written to {out}"
                   f"{' (haproxy -c: valid)' if check else ''}", err=True)


@gateway.command("stats")
@click.option("--socket", "socket_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The gateway's stats socket (`mlsuite up` prints it).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def gateway_stats(socket_path: Path, as_json: bool) -> None:
    """Each replica as HAProxy sees it: state, requests sent, retries, redispatches."""
    from dataclasses import asdict

    from mlplatform.gateway.stats import show_stat

    try:
        rows = list(show_stat(socket_path).values())
    except OSError as exc:
        raise click.ClickException(f"cannot read the stats socket {socket_path}: {exc}") from None
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    click.echo(f"{'pool':<12} {'server':<16} {'status':<10} {'sessions':>9} {'retries':>8} "
               f"{'redisp':>7}")
    for r in rows:
        click.echo(f"{r.pool:<12} {r.server:<16} {r.status:<10} {r.sessions:>9} "
                   f"{r.retries:>8} {r.redispatches:>7}")


@click.command()
@click.option("--replicas", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Replicas of each app service (recommender, fraud).")
@click.option("--gateway/--no-gateway", "with_gateway", default=True, show_default=True,
              help="Put HAProxy in front on --port (needs haproxy).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_GATEWAY_PORT,
              show_default=True, help="The gateway's front port.")
@click.option("--services", default=",".join(DEFAULT_SERVICES), show_default=True,
              help="Comma-separated services; console and graphql run once.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes per replica (default: MLSUITE_WORKERS).")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]), default=None,
              help="WSGI server (default: MLSUITE_SERVER).")
@click.option("--rate-limit", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Requests/s per API key at the gateway (0: only the services' limits).")
def up(replicas: int, with_gateway: bool, port: int, services: str, workers: int | None,
       server: str | None, rate_limit: float) -> None:
    """Run N replicas of each service behind the HAProxy gateway until Ctrl-C.

    Data, Redis, Feast and models are prepared as for `mlsuite demo` (the data folder's
    embedded Redis unless MLSUITE_REDIS_URL is set); each app has one background worker.
    A replica that dies is started again after a backoff; the gateway routes around it."""
    from mlplatform.serving import interrupted, sigterm_interrupts, stop_requests

    settings = _settings()
    names = [s.strip() for s in services.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("name at least one service", param_hint="--services")
    if with_gateway and find_haproxy() is None:
        raise click.ClickException("haproxy not found on PATH or in /usr/sbin: install it "
                                   "(apt-get install haproxy) or use --no-gateway")
    run = ScaleOut(settings, replicas=replicas, services=names, gateway=with_gateway,
                   gateway_port=port, server=server or settings.server,
                   workers=workers or settings.workers, rate_limit=rate_limit,
                   private_redis=False, restart=True, say=lambda m: click.echo(m, err=True))
    try:
        with sigterm_interrupts():
            run.start()
            with stop_requests() as stop:
                print_urls(run, echo=lambda line: click.echo(line))
                click.echo(f"up: {replicas} replica{'s' if replicas > 1 else ''} per app "
                           "service; Ctrl-C stops everything")
                sys.stdout.flush()
                while not stop and not (dead := run.supervise()):
                    time.sleep(0.2)
                if stop:
                    return
            click.echo(f"up: {', '.join(dead)} exited; stopping", err=True)
            sys.exit(1)
    except BaseException as exc:
        if not interrupted(exc):
            raise
    finally:
        run.stop()
