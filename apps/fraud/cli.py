"""``mlsuite fraud ...``: train, replay, bench; and ``ensure_model`` for ``make demo``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from mlplatform.config import Settings, get_settings
from mlplatform.errors import MLSuiteError, Unavailable

__all__ = ["cli", "ensure_model", "ensure_trained", "seed_velocity", "ignored_columns",
           "tokenise_profiles"]

log = logging.getLogger(__name__)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _default_transactions(settings: Settings) -> Path:
    return settings.data_dir / "payments" / "transactions.parquet"


def _settings() -> Settings:
    from mlplatform.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


def ensure_model(settings: Settings) -> None:
    """Make the service ready to score (``make demo``): card profiles keyed by token in
    Feast, a production model (trained and promoted unless one exists), and the Redis
    velocity state seeded from the history once."""
    from fraud.config import FraudConfig

    tokenise_profiles(settings)
    config = FraudConfig.from_env()
    path = _default_transactions(settings)
    if not (settings.redis_url and path.is_file()):
        ensure_trained(settings, config)
        return
    # The seed is mostly Redis running the velocity script (another process) and the
    # training mostly numpy and scikit-learn's threads: side by side they take the time
    # of the longer, not of both (about 25 s less on 2 cores at the default size).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="velocity-seed") as pool:
        seeding = pool.submit(seed_velocity, settings, config, path, force=False)
        ensure_trained(settings, config)
        seeding.result()


def tokenise_profiles(settings: Settings) -> bool:
    """Tokenise the card profile file Feast reads (``fraud.pii``) and, when it changed,
    load it into the online store again, so profile reads by token find it. True when
    the file changed (once per simulated data folder).

    Best run before Feast's first materialisation; run after it, the online store also
    keeps the rows of the ids as they were until they expire."""
    from fraud.pii import tokenise_profile_file
    from mlplatform.security.pii import tokeniser

    if not tokenise_profile_file(settings.data_dir, tokeniser(settings)):
        return False
    log.info("fraud: card ids of payments/cards.parquet replaced by their tokens")
    try:
        from mlplatform.features import FeatureStoreAdapter
    except ImportError:  # a platform without Feast: training reads the file itself
        return True
    try:  # the views were materialised from the ids as they were: load the tokens
        FeatureStoreAdapter.from_settings(settings).materialize(full=True)
    except Unavailable as exc:  # not applied yet: the first materialisation reads tokens
        log.info("fraud: feast not materialised again (%s)", exc.message)
    return True


def ensure_trained(settings: Settings, config: Any) -> None:
    """Train and promote the models unless the served one has a production version."""
    from fraud.training import load_dataset, train
    from mlplatform.registry import ModelRegistry
    from mlplatform.security.pii import tokeniser

    registry = ModelRegistry(settings.data_dir / "models")
    if config.model_alias in registry.aliases(config.model_name):
        log.info("fraud: %s has a %s version", config.model_name, config.model_alias)
        return
    path = _default_transactions(settings)
    if not path.is_file():
        raise MLSuiteError(f"no transactions at {path}: run `mlsuite simulate` first")
    data = load_dataset(path, extra_fields=config.extra_fields, progress=True,
                        pii=tokeniser(settings))
    # Only the served model: the batch baseline (`mlsuite fraud train`) serves nobody, and
    # `make demo` should be up in seconds, not wait for it.
    train(data, registry, config, promote=True, batch=False, progress=True)


def seed_velocity(settings: Settings, config: Any, path: Path, *, force: bool) -> int:
    """Replay ``path`` into the Redis velocity state, once per file (a marker key
    remembers it), so the first live payment of a card is compared with its past."""
    from fraud.features import event_of
    from fraud.schema import read_transactions, transactions_from_frame
    from fraud.velocity import RedisVelocityStore, seed
    from mlplatform.redisdb import connect
    from mlplatform.registry import fingerprint
    from mlplatform.security.pii import tokeniser

    client = connect(settings.redis_url or "")
    marker = f"{config.key_prefix}velocity:seeded"
    # The marker names the file and that its ids were tokenised: a folder seeded by
    # card id before tokens existed is seeded again, by token, once.
    digest = f"{fingerprint(path)}:tokens"
    if not force and client.get(marker) == digest.encode():
        log.info("fraud: velocity state already seeded from %s", path.name)
        return 0
    frame = read_transactions(path, pii=tokeniser(settings))  # velocity keys by token
    events = [event_of(t) for t in transactions_from_frame(frame)]
    n = seed(RedisVelocityStore(client, config.key_prefix), events)
    client.set(marker, digest)
    log.info("fraud: velocity state seeded with %d transactions from %s", n, path.name)
    return n


@click.group("fraud", context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fraud scoring: train models, replay history, benchmark the scorer."""


@cli.command("train")
@click.option("--transactions", "path", type=_FILE,
              help="Parquet or CSV with the transaction columns plus is_fraud "
                   "(default: <data_dir>/payments/transactions.parquet).")
@click.option("--validation-fraction", type=click.FloatRange(0.05, 0.5), default=0.2,
              show_default=True, help="Latest share of the time range used for validation.")
@click.option("--promote/--no-promote", default=True, show_default=True,
              help="Point the production alias at the new versions.")
@click.option("--batch/--no-batch", default=True, show_default=True,
              help="Also train the scikit-learn batch model (fraud-batch).")
def train_command(path: Path | None, validation_fraction: float, promote: bool,
                  batch: bool) -> None:
    """Train the online (river) and batch (scikit-learn) models and register both."""
    from fraud.config import FraudConfig
    from fraud.training import train
    from mlplatform.registry import ModelRegistry

    settings = _settings()
    config = FraudConfig.from_env()
    path = path or _default_transactions(settings)
    data = _load(path, config, progress=True, settings=settings)
    versions = train(data, ModelRegistry(settings.data_dir / "models"), config,
                     validation_fraction=validation_fraction, promote=promote, batch=batch,
                     progress=True)
    for role, v in versions.items():
        click.echo(f"{role}: {v.label}{' (production)' if promote else ''}  "
                   f"validation {json.dumps(v.metadata['metrics'])}")


@cli.command("seed-velocity")
@click.option("--transactions", "path", type=_FILE,
              help="Transaction history (default: <data_dir>/payments/transactions.parquet).")
def seed_command(path: Path | None) -> None:
    """Load a transaction history into the Redis velocity state (before first serving)."""
    from fraud.config import FraudConfig

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("MLSUITE_REDIS_URL is not set: seeding needs the Redis "
                                   "the service uses")
    n = seed_velocity(settings, FraudConfig.from_env(),
                      path or _default_transactions(settings), force=True)
    click.echo(f"velocity state seeded with {n} transactions")


@cli.command("replay")
@click.option("--transactions", "path", type=_FILE,
              help="Transaction file in time order with is_fraud "
                   "(default: <data_dir>/payments/transactions.parquet).")
@click.option("--label-delay", type=click.FloatRange(0), default=None,
              help="Seconds after a transaction its label becomes known "
                   "(default: the file's labelled_at column).")
@click.option("--train-fraction", type=click.FloatRange(0.05, 0.9), default=0.3,
              show_default=True, help="Share of the time range both models learn first.")
@click.option("--refit-every", type=click.FloatRange(0), default=7 * 86400.0,
              show_default=True,
              help="Seconds between refits of the served model's trees (the pipeline's "
                   "schedule; 0: never).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: served, online and batch models, and the replay.")
def replay_command(path: Path | None, label_delay: float | None, train_fraction: float,
                   refit_every: float, as_json: bool) -> None:
    """Prequential evaluation in time order: the served model (trees refitted on schedule
    plus an online layer), the online-only model and a static batch model."""
    from fraud.config import FraudConfig
    from fraud.replay import replay

    settings = _settings()
    config = FraudConfig.from_env()
    data = _load(path or _default_transactions(settings), config, progress=not as_json,
                 settings=settings)
    ignored = ignored_columns(data.frame.columns, config.extra_fields)
    if ignored:
        click.echo(f"note: ignoring the column(s) {', '.join(ignored)}: not in the documented "
                   "schema; declare numeric ones as features with MLSUITE_FRAUD_EXTRA_FIELDS",
                   err=True)
    try:
        result = replay(data, label_delay=label_delay, train_fraction=train_fraction,
                        positive_weight=config.positive_weight,
                        refit_every=refit_every or None, progress=not as_json)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    result.info["ignored_columns"] = ignored
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_replay(result.models, result.info)


# Columns a transaction file may carry besides the schema's: labels and what the simulator
# records for analysis (never features: true_fraud is the answer itself).
_KNOWN_EXTRA = ("is_fraud", "labelled_at", "true_fraud", "fraud_pattern", "ts", "labelled_ts")


def ignored_columns(columns: Any, declared: tuple[str, ...]) -> list[str]:
    """The file's columns that are neither the schema's, labels, nor declared features."""
    from fraud.schema import OPTIONAL, REQUIRED

    known = {*REQUIRED, *OPTIONAL, *_KNOWN_EXTRA, *declared}
    return [str(c) for c in columns if str(c) not in known]


def _load(path: Path, config: Any, progress: bool, settings: Settings) -> Any:
    from fraud.schema import TransactionFileError
    from fraud.training import load_dataset
    from mlplatform.security.pii import tokeniser

    try:  # the deployment's key, wherever the file lives
        return load_dataset(path, extra_fields=config.extra_fields, progress=progress,
                            pii=tokeniser(settings))
    except TransactionFileError as exc:
        raise click.ClickException(str(exc)) from None


def _print_replay(models: dict[str, dict[str, Any]], info: dict[str, Any]) -> None:
    click.echo(f"replayed {info['transactions']} transactions: {info['train_rows']} to learn "
               f"first, {info['eval_rows']} evaluated prequentially; labels from "
               f"{info['labels_from']}; drift {info['drift_pattern']} from {info['drift_start']}")
    metric_names = [k for k, v in models["online"].items()
                    if k not in ("segments", "model", "n", "frauds")]
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for name, result in models.items():
        rows.append((name, "all", result))
        for seg, metrics in result.get("segments", {}).items():
            rows.append((name, seg, metrics))
    extra = sorted({k for _, _, m in rows for k in m
                    if k.endswith("fpr") and k not in metric_names})
    header = ["model", "segment", *metric_names, *extra, "frauds"]
    widths = [max(len(h), 8) for h in header]
    widths[1] = 24
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for name, seg, m in rows:
        cells = [name, seg, *[_fmt(m.get(k)) for k in metric_names + extra], str(m.get("frauds"))]
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    click.echo(f"served model: {info['served_refits']} refits; online model: "
               f"{info['online_labels_learned']} labels learned; "
               f"{info['drift_detections']} drift detections "
               f"(first {info['first_detection_after_drift_hours']} h after the drift start)")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


@cli.command("bench")
@click.option("--n", "n_single", type=click.IntRange(10), default=2000, show_default=True,
              help="Single-transaction requests per measurement.")
@click.option("--batch-size", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--batches", type=click.IntRange(1), default=10, show_default=True)
@click.option("--http/--no-http", default=True, show_default=True,
              help="Also measure over HTTP against a real server on a free port.")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]), default=None,
              help="WSGI server for the HTTP part (default: MLSUITE_SERVER).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Server worker processes (default: MLSUITE_WORKERS).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the results to this JSON file ('-': stdout only).")
def bench_command(n_single: int, batch_size: int, batches: int, http: bool, server: str | None,
                  workers: int | None, json_path: Path | None) -> None:
    """Scoring latency (p50/p99) and throughput, in process and over HTTP, single and batch."""
    from fraud.bench import print_report, run_bench

    settings = _settings()
    report = run_bench(settings, n_single=n_single, batch_size=batch_size, batches=batches,
                       http=http, server=server or settings.server,
                       workers=workers or settings.workers)
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(report, indent=2))
        return
    print_report(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"written to {json_path}")


if __name__ == "__main__":  # pragma: no cover
    cli(sys.argv[1:])
