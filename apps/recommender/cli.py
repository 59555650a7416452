"""``mlsuite recommender ...``: train, evaluate, benchmark.

- ``train`` fits the variants on the simulated shop (or ``--interactions FILE``), measures
  them on a time split, refits on everything and registers a new version with its metrics.
- ``evaluate`` compares every variant and the popularity baseline on held-out data.
- ``add-items`` folds new items into a registered version without retraining.
- ``bench`` measures recommendation latency in-process and over HTTP.

``ensure_model(settings)`` trains and promotes a first version when none is in
production (``mlsuite demo`` / ``make demo`` call it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pandas as pd
from tqdm.auto import tqdm

from mlplatform.config import Settings, get_settings
from mlplatform.registry import ModelRegistry, ModelVersion, fingerprint
from mlplatform.security.pii import tokeniser
from recommender.bundle import ModelBundle
from recommender.data import load_interactions, load_table, time_split
from recommender.evaluation import metric_names
from recommender.pii import prepare_profiles, tokenise_users
from recommender.training import TrainConfig, evaluate_variants, fit_bundle, fold_in_items

__all__ = ["MODEL_NAME", "cli", "ensure_model", "train_and_register"]

log = logging.getLogger(__name__)

MODEL_NAME = "recommender"
MODEL_CHOICES = {"als": ("als",), "bpr": ("bpr",), "all": ("als", "bpr")}


def _settings() -> Settings:
    from mlplatform.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


@contextmanager
def _progress(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    with tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        yield step


def _interactions(settings: Settings, path: Path) -> pd.DataFrame:
    """``load_interactions`` with the user ids tokenised, as requests arrive with them."""
    return tokenise_users(load_interactions(path), tokeniser(settings))


def _entity_tables(settings: Settings, interactions: Path, users: Path | None,
                   items: Path | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The users/items tables: given, else ``users.parquet``/``items.parquet`` beside the
    file; user ids tokenised."""
    def pick(given: Path | None, name: str) -> pd.DataFrame | None:
        path = given or interactions.parent / f"{name}.parquet"
        return load_table(path) if path.is_file() else None

    users_df = pick(users, "users")
    if users_df is not None:
        users_df = tokenise_users(users_df, tokeniser(settings))
    return users_df, pick(items, "items")


def train_and_register(settings: Settings, *, interactions: Path | None = None,
                       users: Path | None = None, items: Path | None = None,
                       variants: tuple[str, ...] = ("als", "bpr"), test_fraction: float = 0.2,
                       k: int = 10, alias: str | None = None,
                       progress: bool = True) -> ModelVersion:
    """Evaluate on a time split, refit on all data, register (and point ``alias`` at it)."""
    path = Path(interactions or settings.data_dir / "shop" / "interactions.parquet")
    config = TrainConfig(variants=variants, seed=settings.seed)
    n_models = len(config.all_variants)
    with _progress(4 + 3 * n_models, "train recommender", progress) as step:
        df = _interactions(settings, path)
        users_df, items_df = _entity_tables(settings, path, users, items)
        train, test = time_split(df, test_fraction)
        step("loaded")
        results = evaluate_variants(train, test, config, k=k, users=users_df, items=items_df,
                                    progress=step)
        bundle = fit_bundle(df, config, users=users_df, items=items_df, progress=step)
        metrics = {f"{variant}.{name}": round(value, 6)
                   for variant, values in results.items() for name, value in values.items()}
        bundle.metrics = metrics
        version = ModelRegistry(settings.data_dir / "models").register(
            MODEL_NAME, writer=bundle.save,
            params={**config.as_dict(), "test_fraction": test_fraction, "k": k,
                    "interactions": str(path), "rows": len(df)},
            metrics=metrics, data_fingerprint=fingerprint(path), alias=alias)
        step("registered")
    return version


def ensure_model(settings: Settings) -> None:
    """Train and promote a first version to "production" if none is there; Feast's user
    profiles tokenised and loaded when they are not yet (``recommender.pii``)."""
    prepare_profiles(settings)
    registry = ModelRegistry(settings.data_dir / "models")
    if "production" in registry.aliases(MODEL_NAME):
        return
    shop = settings.data_dir / "shop" / "interactions.parquet"
    if not shop.is_file():
        from mlplatform.simulate import DEFAULT_SIZES, simulate_shop

        log.info("no shop data in %s: simulating it (seed %d)", settings.data_dir, settings.seed)
        simulate_shop(settings.data_dir, seed=settings.seed, n_users=DEFAULT_SIZES["n_users"],
                      n_items=DEFAULT_SIZES["n_items"],
                      n_interactions=DEFAULT_SIZES["n_interactions"])
        prepare_profiles(settings)
    version = train_and_register(settings, alias="production")
    log.info("recommender: %s trained and promoted to production", version.label)


# -- commands ----------------------------------------------------------------------------

@click.group(name="recommender", context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Recommender: train models, compare them offline, benchmark the service."""


FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@cli.command()
@click.option("--interactions", type=FILE, default=None,
              help="CSV/Parquet: user_id, item_id, timestamp[, event_type | weight] "
                   "(default: the simulated shop in the data folder).")
@click.option("--users", type=FILE, default=None,
              help="user_id, segment table (default: users.parquet beside the interactions).")
@click.option("--items", type=FILE, default=None,
              help="item_id, category table (default: items.parquet beside the interactions).")
@click.option("--model", "model", type=click.Choice(sorted(MODEL_CHOICES)), default="all",
              show_default=True, help="Variants to train (popularity is always included).")
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True,
              help="Newest share of interactions held out to measure the version.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--promote", is_flag=True, help="Point the production alias at the new version.")
def train(interactions: Path | None, users: Path | None, items: Path | None, model: str,
          test_fraction: float, k: int, promote: bool) -> None:
    """Train the recommender and register a new version with its metrics."""
    settings = _settings()
    try:
        version = train_and_register(
            settings, interactions=interactions, users=users, items=items,
            variants=MODEL_CHOICES[model], test_fraction=test_fraction, k=k,
            alias="production" if promote else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    metrics = version.metadata.get("metrics", {})
    click.echo(f"registered {version.label} ({version.path})")
    for key in sorted(m for m in metrics if m.endswith(f"ndcg@{k}")):
        click.echo(f"  {key} = {metrics[key]:.4f}")
    if promote:
        click.echo(f"production -> {version.label}")
    else:
        click.echo(f"promote with: mlsuite models promote {MODEL_NAME} {version.version}")


@cli.command()
@click.option("--train", "train_file", type=FILE, default=None,
              help="Interactions to train on (default: the simulated shop).")
@click.option("--test", "test_file", type=FILE, default=None,
              help="Interactions to evaluate on (default: a time split of --train).")
@click.option("--users", type=FILE, default=None, help="user_id, segment table (optional).")
@click.option("--items", type=FILE, default=None, help="item_id, category table (optional).")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True,
              help="With no --test: the newest share of --train held out.")
@click.option("--model", "model", type=click.Choice(sorted(MODEL_CHOICES)), default="all",
              show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: MLSUITE_SEED).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per variant.")
def evaluate(train_file: Path | None, test_file: Path | None, users: Path | None,
             items: Path | None, k: int, test_fraction: float, model: str, seed: int | None,
             as_json: bool) -> None:
    """Train on one file, score every variant and the popularity baseline on another."""
    settings = _settings()
    path = train_file or settings.data_dir / "shop" / "interactions.parquet"
    config = TrainConfig(variants=MODEL_CHOICES[model],
                         seed=settings.seed if seed is None else seed)
    try:
        df = _interactions(settings, path)
        if test_file is not None:
            train_df, test_df = df, _interactions(settings, test_file)
        else:
            train_df, test_df = time_split(df, test_fraction)
        users_df, items_df = _entity_tables(settings, path, users, items)
        with _progress(1 + 2 * len(config.all_variants), "evaluate", not as_json) as step:
            results = evaluate_variants(train_df, test_df, config, k=k, users=users_df,
                                        items=items_df, progress=step)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({v: {m: round(x, 6) for m, x in r.items()}
                               for v, r in results.items()}, indent=2))
        return
    click.echo(format_table(results, k))
    click.echo(f"train: {len(train_df)} interactions, test: {len(test_df)}; users = warm test "
               "users with a held-out item they had not seen")


def format_table(results: dict[str, dict[str, float]], k: int) -> str:
    names = [*metric_names(k), "users"]
    lines = ["variant".ljust(20) + "".join(n.rjust(14) for n in names)]
    for variant, values in results.items():
        cells = [f"{values[n]:.0f}" if n == "users" else f"{values[n]:.4f}" for n in names]
        lines.append(variant.ljust(20) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


@cli.command("add-items")
@click.option("--interactions", type=FILE, required=True,
              help="Interactions that mention the new items (CSV/Parquet).")
@click.option("--items", type=FILE, default=None, help="item_id, category of the new items.")
@click.option("--from", "base", default="production", show_default=True,
              help="Version (number) or alias to start from.")
@click.option("--promote", is_flag=True, help="Point the production alias at the new version.")
def add_items(interactions: Path, items: Path | None, base: str, promote: bool) -> None:
    """Fold new items into a version without retraining (ALS partial_fit_items)."""
    settings = _settings()
    registry = ModelRegistry(settings.data_dir / "models")
    source = registry.resolve(MODEL_NAME, base)
    bundle = ModelBundle.load(source.path)
    try:
        df = _interactions(settings, interactions)
        added = fold_in_items(bundle, df, items=load_table(items) if items else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not added:
        click.echo(f"{source.label} already knows every item in {interactions}: nothing to do")
        return
    version = registry.register(
        MODEL_NAME, writer=bundle.save,
        params={**source.metadata.get("params", {}), "base_version": source.version,
                "added_items": len(added)},
        metrics=source.metadata.get("metrics", {}),
        data_fingerprint=fingerprint(interactions), alias="production" if promote else None)
    click.echo(f"registered {version.label}: {source.label} + {len(added)} new items "
               f"({', '.join(map(str, added[:5]))}{', ...' if len(added) > 5 else ''})")


@cli.command()
@click.option("--requests", "n_requests", type=click.IntRange(100), default=2000,
              show_default=True, help="Requests per measurement.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=500, show_default=True,
              help="Users per batch request.")
@click.option("--http/--no-http", default=True, show_default=True,
              help="Also measure over HTTP against a real server on a free port.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Server worker processes (default: MLSUITE_WORKERS).")
@click.option("--seconds", type=click.FloatRange(1, 600), default=5.0, show_default=True,
              help="Length of each HTTP load phase.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def bench(n_requests: int, batch_size: int, http: bool, workers: int | None, seconds: float,
          as_json: bool) -> None:
    """Recommendation latency (p50/p99) in-process and over HTTP, and batch users/s."""
    from recommender.bench import format_report, run_bench

    report: dict[str, Any] = run_bench(_settings(), n_requests=n_requests, batch_size=batch_size,
                                       http=http, workers=workers, duration=seconds,
                                       progress=not as_json)
    if not as_json:
        click.echo(format_report(report))
    click.echo(json.dumps(report, indent=None if not as_json else 2))
