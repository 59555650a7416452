"""``mlsuite backup create|verify|restore``: the command-line face of ``mlplatform.backup``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlplatform.backup import BackupError, create_backup, restore_backup, verify_backup
from mlplatform.config import get_settings
from mlplatform.logs import configure_logging

__all__ = ["backup"]


@click.group()
def backup() -> None:
    """Back up and restore the data folder, the lake and the Redis state.

    A backup covers the model registry, the Feast registry and SQLite online store, the
    source data, the lake, the signing key and every Redis key (streams, histories,
    velocity, lists, review cases, snapshots; a Redis online store too). Take it with
    the services stopped or quiet: keys are copied one by one, not as one snapshot.
    """


@backup.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def create(directory: Path) -> None:
    """Write a backup into DIRECTORY (new or empty), with a manifest of checksums."""
    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        report = create_backup(settings, directory)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup {directory}: {report.summary()}")


@backup.command()
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify(directory: Path) -> None:
    """Recompute every file's size and SHA-256 against the manifest (exit 1 on a mismatch)."""
    configure_logging(get_settings().log_level)
    try:
        problems = verify_backup(directory)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    for problem in problems:
        click.echo(f"FAILED {problem}", err=True)
    if problems:
        click.echo(f"backup {directory}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"backup {directory}: ok")


@backup.command()
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Restore into this data folder (default: MLSUITE_DATA_DIR).")
@click.option("--force", is_flag=True,
              help="Restore over a data folder or Redis database that is not empty.")
def restore(directory: Path, data_dir: Path | None, force: bool) -> None:
    """Verify the backup in DIRECTORY, then restore it (files, lake, Redis).

    Redis is MLSUITE_REDIS_URL, or the embedded server of the target data folder.
    Stop the services first; start them again afterwards.
    """
    settings = get_settings()
    configure_logging(settings.log_level)
    if data_dir is not None:
        settings = settings.with_(data_dir=data_dir.expanduser().resolve())
    try:
        report = restore_backup(directory, settings, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {directory} into {settings.data_dir}: {report.summary()}")
