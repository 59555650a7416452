"""The ``mlsuite`` command line.

Platform commands live here; each app adds its own group (``mlsuite recommender ...``,
``mlsuite fraud ...``) through the "mlsuite.commands" entry points, so the platform
never imports an app. A configuration error ends any command with a message naming the
setting and exit status 2.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click

from mlplatform.config import Settings, get_settings
from mlplatform.errors import ConfigError, MLSuiteError
from mlplatform.logs import configure_logging

__all__ = ["cli", "main"]


# Heavier platform commands, imported only when used: `mlsuite --help` stays fast.
_LAZY = {
    "bench": EntryPoint("bench", "mlplatform.bench:bench", "mlsuite.lazy"),
    "loadtest": EntryPoint("loadtest", "mlplatform.loadtest:loadtest", "mlsuite.lazy"),
    "soak": EntryPoint("soak", "mlplatform.bench.soak:soak", "mlsuite.lazy"),
    "pipeline": EntryPoint("pipeline", "mlplatform.pipeline.cli:pipeline", "mlsuite.lazy"),
    "experiments": EntryPoint("experiments", "mlplatform.experiments.cli:experiments", "mlsuite.lazy"),
    "rollout": EntryPoint("rollout", "mlplatform.rollouts.cli:rollout", "mlsuite.lazy"),
    "monitor": EntryPoint("monitor", "mlplatform.monitoring.cli:monitor", "mlsuite.lazy"),
    "backup": EntryPoint("backup", "mlplatform.backup_cli:backup", "mlsuite.lazy"),
    "keys": EntryPoint("keys", "mlplatform.security.cli:keys", "mlsuite.lazy"),
    "gateway": EntryPoint("gateway", "mlplatform.gateway.cli:gateway", "mlsuite.lazy"),
    "up": EntryPoint("up", "mlplatform.gateway.cli:up", "mlsuite.lazy"),
    "capacity": EntryPoint("capacity", "mlplatform.bench.capacity:main", "mlsuite.lazy"),
}


class _PluginGroup(click.Group):
    """A group that also lists the apps' command groups from entry points."""

    def _plugins(self) -> dict[str, Any]:
        return {**_LAZY, **{ep.name: ep for ep in entry_points(group="mlsuite.commands")}}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self._plugins():
            try:
                command = self._plugins()[name].load()
            except Exception as exc:  # one broken app must not take the whole CLI down
                command = _broken_plugin(name, exc)
        return command


def _broken_plugin(name: str, exc: Exception) -> click.Command:
    def fail() -> None:
        raise click.ClickException(f"the {name} commands failed to load: {exc}")

    return click.Command(name, callback=fail, help=f"(unavailable: {exc})")


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlsuite")
def cli() -> None:
    """mlsuite: a real-time recommender and a fraud scorer on one ML platform.

    Settings come from MLSUITE_* environment variables (see README); with none set,
    everything runs embedded in ./data.
    """


@cli.command()
@click.argument("service")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: MLSUITE_<SERVICE>_PORT).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default: MLSUITE_WORKERS).")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]), help="WSGI server (default: MLSUITE_SERVER).")
def serve(service: str, port: int | None, workers: int | None, server: str | None) -> None:
    """Run SERVICE (recommender, fraud, console or graphql) under a production server
    until Ctrl-C."""
    from mlplatform import serving

    settings = _settings()
    default_port = {"recommender": settings.recommender_port, "fraud": settings.fraud_port,
                    "console": settings.console_port, "graphql": settings.graphql_port}
    code = serving.serve(
        service, settings,
        port=port if port is not None else default_port.get(service, 8000),
        workers=workers or settings.workers, server=server or settings.server,
    )
    sys.exit(code)


@cli.command()
@click.argument("service")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Also serve this worker's Prometheus metrics on 127.0.0.1:PORT.")
def worker(service: str, metrics_port: int | None) -> None:
    """Run SERVICE's background worker (recommender or fraud) until Ctrl-C.

    It consumes the service's streams through consumer groups (several workers share
    them), publishes the snapshots request workers swap in, archives streams to the lake
    before trimming them, and runs the retraining pipeline every MLSUITE_RETRAIN_INTERVAL.
    """
    from mlplatform.worker import run_worker

    sys.exit(run_worker(service, _settings(), metrics_port=metrics_port))


@cli.group(invoke_without_command=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: MLSUITE_SEED).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder to write into (default: MLSUITE_DATA_DIR).")
@click.option("--users", type=click.IntRange(1), default=None, help="Shop users.")
@click.option("--items", type=click.IntRange(1), default=None, help="Shop items.")
@click.option("--interactions", type=click.IntRange(1), default=None, help="Shop interactions.")
@click.option("--cards", type=click.IntRange(1), default=None, help="Payment cards.")
@click.option("--merchants", type=click.IntRange(1), default=None, help="Merchants.")
@click.option("--transactions", type=click.IntRange(1), default=None, help="Payment transactions.")
@click.option("--only", type=click.Choice(["shop", "payments"]), default=None, help="Simulate one domain.")
@click.pass_context
def simulate(ctx: click.Context, seed: int | None, out_dir: Path | None, only: str | None,
             **sizes: int | None) -> None:
    """Write a deterministic simulated shop and payment stream as parquet files.

    `mlsuite simulate traffic` instead sends simulated shoppers and payments to the
    running services (see its --help).
    """
    if ctx.invoked_subcommand is not None:
        return
    from mlplatform import simulate as sim

    settings = _settings()
    data_dir = out_dir or settings.data_dir
    seed = settings.seed if seed is None else seed
    names = {"users": "n_users", "items": "n_items", "interactions": "n_interactions",
             "cards": "n_cards", "merchants": "n_merchants", "transactions": "n_transactions"}
    n: dict[str, int] = {**sim.DEFAULT_SIZES,
                         **{names[k]: v for k, v in sizes.items() if v is not None}}
    summary: dict[str, Any] = {}
    if only in (None, "shop"):
        summary["shop"] = sim.simulate_shop(data_dir, seed=seed, n_users=n["n_users"],
                                            n_items=n["n_items"],
                                            n_interactions=n["n_interactions"])
    if only in (None, "payments"):
        summary["payments"] = sim.simulate_payments(data_dir, seed=seed, n_cards=n["n_cards"],
                                                    n_merchants=n["n_merchants"],
                                                    n_transactions=n["n_transactions"])
    click.echo(json.dumps(summary, indent=2, default=str))


@simulate.command("traffic")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), required=True,
              help="How long to run (it stops by itself).")
@click.option("--rate", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Shopper sessions per second.")
@click.option("--payments-rate", type=click.FloatRange(0), default=None,
              help="Payments per second to the fraud service (default: half of --rate; "
                   "0: none).")
@click.option("--recommender-url", default=None,
              help="Recommender base URL (default: the demo's, http://HOST:MLSUITE_RECOMMENDER_PORT).")
@click.option("--fraud-url", default=None,
              help="Fraud service base URL (default: the demo's, http://HOST:MLSUITE_FRAUD_PORT; "
                   "'' for no payments).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The data folder the services were built from (default: MLSUITE_DATA_DIR).")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Concurrent shoppers / payments in flight.")
@click.option("--seed", type=int, default=None, help="Random seed (default: MLSUITE_SEED).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate_traffic(minutes: float, rate: float, payments_rate: float | None,
                     recommender_url: str | None, fraud_url: str | None, data_dir: Path | None,
                     threads: int, seed: int | None, as_json: bool) -> None:
    """Simulated shoppers browse, cart and buy through the running recommender (their
    true tastes decide), and payments are scored by the fraud service with labels
    posted later; prints the true conversion per variant and the measured A/B report.
    Requests carry MLSUITE_API_KEY, else the key of the demo running on this data folder."""
    from mlplatform.security.keys import local_key
    from mlplatform.simulate.traffic import TrafficConfig, format_result, run_traffic

    settings = _settings()
    config = TrafficConfig(
        recommender_url=recommender_url or f"http://{settings.host}:{settings.recommender_port}",
        fraud_url=(f"http://{settings.host}:{settings.fraud_port}" if fraud_url is None
                   else fraud_url or None),
        data_dir=data_dir or settings.data_dir, minutes=minutes, rate=rate,
        payments_rate=rate / 2 if payments_rate is None else payments_rate,
        threads=threads, seed=settings.seed if seed is None else seed,
        api_key=local_key(settings))
    try:
        result = run_traffic(config, say=lambda m: click.echo(m, err=True))
    except MLSuiteError as exc:
        raise click.ClickException(str(exc)) from None
    body = result.to_json()
    click.echo(json.dumps(body, indent=2) if as_json else format_result(body))


@cli.group()
def feast() -> None:
    """Feast feature store: register definitions, load the online store."""


@feast.command("apply")
def feast_apply() -> None:
    """Register feature_repo/'s definitions in the registry (in the data folder)."""
    from mlplatform.features import FeatureStoreAdapter

    FeatureStoreAdapter.from_settings(_settings()).apply()
    click.echo("feast: definitions applied")


@feast.command("materialize")
def feast_materialize() -> None:
    """Load the latest feature values from the offline files into the online store."""
    from mlplatform.demo import prepare_sources
    from mlplatform.features import FeatureStoreAdapter

    prepare_sources(_settings())  # the apps' derived files first (ids as tokens)
    FeatureStoreAdapter.from_settings(_settings()).materialize()
    click.echo("feast: online store materialized")


@cli.group()
def models() -> None:
    """Model registry: list and show versions, promote, roll back."""


def _registry() -> Any:
    from mlplatform.registry import ModelRegistry

    return ModelRegistry(_settings().data_dir / "models")


@models.command("list")
@click.argument("name", required=False)
def models_list(name: str | None) -> None:
    """List models, or the versions and aliases of NAME."""
    registry = _registry()
    for model in [name] if name else registry.names():
        aliases = registry.aliases(model)
        click.echo(f"{model}: aliases {aliases or '{}'}")
        for v in registry.versions(model):
            tags = [a for a, n in aliases.items() if n == v.version]
            click.echo(f"  v{v.version}  {v.metadata.get('created_at')}  "
                       f"{json.dumps(v.metadata.get('metrics', {}), default=str)[:120]}"
                       f"{'  <- ' + ', '.join(tags) if tags else ''}")


@models.command("show")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print metadata and model card as JSON.")
def models_show(name: str, version: str, as_json: bool) -> None:
    """Show VERSION (a number or an alias) of model NAME: metadata, lineage, model card."""
    registry = _registry()
    try:
        v = registry.resolve(name, version)
    except MLSuiteError as exc:
        raise click.ClickException(str(exc)) from None
    meta, card = v.metadata, v.model_card
    if as_json:
        click.echo(json.dumps({**meta, "model_card": card}, indent=2, default=str))
        return
    aliases = [a for a, n in registry.aliases(name).items() if n == v.version]
    click.echo(f"{v.label}{'  <- ' + ', '.join(aliases) if aliases else ''}")
    for key in ("created_at", "code_version", "data_fingerprint"):
        click.echo(f"  {key}: {meta.get(key)}")
    click.echo(f"  path: {v.path}")
    click.echo(f"  params: {json.dumps(meta.get('params', {}), default=str)[:300]}")
    click.echo("metrics:")
    for key, value in sorted(meta.get("metrics", {}).items()):
        click.echo(f"  {key} = {value}")
    lineage = meta.get("lineage")
    if not lineage:
        click.echo("lineage: none recorded (registered outside the pipeline)")
    else:
        click.echo(f"lineage: run {lineage.get('run_id')}, {lineage.get('train_rows')} training "
                   f"rows up to {lineage.get('data_cutoff')}, compared with "
                   f"{lineage.get('production')}")
        for entry in lineage.get("inputs", []):
            where = entry.get("stream", "file")
            click.echo(f"  {where:<20} {entry['path']}  rows={entry['rows']}  "
                       f"fingerprint={entry['fingerprint']}")
    click.echo("model card:" if card else "model card: none")
    if card:
        click.echo(card.rstrip())


@models.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--alias", default="production", show_default=True)
def models_promote(name: str, version: int, alias: str) -> None:
    """Point ALIAS of model NAME at VERSION; running services swap to it."""
    _registry().promote(name, version, alias)
    click.echo(f"{name}: {alias} -> v{version}")


@models.command("rollback")
@click.argument("name")
@click.option("--alias", default="production", show_default=True)
def models_rollback(name: str, alias: str) -> None:
    """Move ALIAS of model NAME back to the version it pointed at before."""
    v = _registry().rollback(name, alias)
    click.echo(f"{name}: {alias} rolled back to v{v.version}")


@cli.command()
@click.option("--services", default="recommender,fraud,console,graphql", show_default=True,
              help="Comma-separated services to start.")
def demo(services: str) -> None:
    """Set everything up and run the suite embedded: data, Feast, Redis, models, services."""
    from mlplatform.demo import run_demo

    sys.exit(run_demo(_settings(), [s.strip() for s in services.split(",") if s.strip()]))


def main() -> None:
    """Console-script entry point: configuration errors become one clear line, exit 2."""
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"mlsuite: configuration error: {exc}", err=True)
        sys.exit(2)
    except MLSuiteError as exc:
        click.echo(f"mlsuite: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
