"""The `mlsuite` command line: every command answers --help; the registry commands work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlplatform.cli import cli
from mlplatform.registry import ModelRegistry


def _all_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, ctx, (*prefix, name))


def test_every_command_has_help() -> None:
    runner = CliRunner()
    ctx = click.Context(cli)
    paths = [path for path, _ in _all_commands(cli, ctx)]
    assert {("serve",), ("simulate",), ("demo",), ("models", "promote")} <= set(paths)
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and "(unavailable" not in result.output, path


def test_models_promote_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    for payload in ("a", "b"):
        reg.register("m", writer=lambda d, p=payload: (d / "x").write_text(p), params={},
                     metrics={"auc": 0.5}, data_fingerprint="f")
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path)}

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "mlplatform", "models", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    run("promote", "m", "1")
    assert "production -> v2" in run("promote", "m", "2")
    assert "rolled back to v1" in run("rollback", "m")
    assert "<- production" in run("list", "m").splitlines()[1]


@pytest.mark.parametrize("args", [["serve", "nope"], ["demo", "--services", "nope"]],
                         ids=["serve", "demo"])
def test_unknown_service_is_a_clear_error(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "MLSUITE_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "mlplatform", *args], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown service 'nope'" in out.stderr and "Traceback" not in out.stderr
