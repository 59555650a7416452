"""``mlsuite keys create|list|revoke``: API keys in the services' Redis.

The keys live where every replica reads them: ``MLSUITE_REDIS_URL``, else the data
folder's embedded server while ``mlsuite demo`` or ``mlsuite serve`` runs it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

__all__ = ["keys"]


def _store() -> Any:
    import redis

    from mlplatform.cli import _settings
    from mlplatform.redisdb import connect, services_url
    from mlplatform.security.keys import KeyStore

    url = services_url(_settings())
    if not url:
        raise click.ClickException(
            "no Redis holds the keys: set MLSUITE_REDIS_URL, or run `mlsuite demo` (or "
            "`mlsuite serve`) with the same MLSUITE_DATA_DIR")
    client = connect(url)
    try:
        client.ping()
    except redis.RedisError:
        raise click.ClickException("redis is not answering (MLSUITE_REDIS_URL, or the "
                                   "embedded server of the data folder)") from None
    return KeyStore(client)


def _scopes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from mlplatform.security.keys import parse_scopes

    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def keys() -> None:
    """API keys: create, list and revoke the keys clients send as a Bearer token.

    Scopes: recommend, events, catalogue (recommender); score, label, review, lists
    (fraud); admin (everything, and the details only operators see: salts, thresholds).
    Only a hash of each key is stored; a revoked key stops working on every replica
    within 2 seconds.
    """


@keys.command()
@click.option("--name", required=True, help="Who or what uses the key (a team, a service).")
@click.option("--scopes", required=True, callback=_scopes,
              help="Comma-separated scopes, e.g. score,label (admin: every scope).")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Requests per second this key may make across all replicas (0: no limit).")
def create(name: str, scopes: tuple[str, ...], rate: float) -> None:
    """Create a key and print it once: it cannot be shown again."""
    try:
        key, record = _store().create(name, scopes, rate_per_second=rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(key)
    click.echo(f"(key id {record.id}, name {record.name!r}, scopes {','.join(record.scopes)}"
               f"{f', {rate:g} requests/s' if rate else ''}; store it now: it is shown once)",
               err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (never the keys themselves).")
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
def list_keys(as_json: bool, show_all: bool) -> None:
    """List keys: id, name, scopes, rate limit, when created or revoked."""
    records = [r for r in _store().all() if show_all or r.active]
    if as_json:
        click.echo(json.dumps([{"id": r.id, "name": r.name, "scopes": list(r.scopes),
                                "rate_per_second": r.rate_per_second,
                                "created_at": r.created_at, "revoked_at": r.revoked_at}
                               for r in records], indent=2))
        return
    if not records:
        click.echo("no keys (mlsuite keys create --name N --scopes a,b)")
        return
    click.echo(f"{'id':<10} {'name':<20} {'scopes':<32} {'rate/s':>7}  created")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        state = "" if r.active else "  (revoked)"
        click.echo(f"{r.id:<10} {r.name:<20} {','.join(r.scopes):<32} "
                   f"{r.rate_per_second or '-':>7}  {created}{state}")


@keys.command()
@click.argument("id_or_name")
def revoke(id_or_name: str) -> None:
    """Revoke the key with this id, or every active key with this name."""
    revoked = _store().revoke(id_or_name)
    if not revoked:
        raise click.ClickException(f"no active key with id or name {id_or_name!r} "
                                   "(mlsuite keys list)")
    for r in revoked:
        click.echo(f"revoked {r.id} ({r.name}); every replica refuses it within 2 s")
