"""Settings: defaults for the embedded setup, and a clear stop on every bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlplatform.config import Settings
from mlplatform.errors import ConfigError


def test_defaults_are_the_embedded_setup() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None
    assert s.feast_online_store == "sqlite"
    assert (s.feast_repo / "feature_store.yaml").is_file()
    assert s.workers >= 1 and s.data_dir.is_absolute()


def test_values_are_parsed(tmp_path: Path) -> None:
    s = Settings.from_env({
        "MLSUITE_DATA_DIR": str(tmp_path), "MLSUITE_REDIS_URL": "redis://h:6380/2",
        "MLSUITE_WORKERS": "4", "MLSUITE_FRAUD_PORT": "9000", "MLSUITE_LOG_LEVEL": "debug",
        "MLSUITE_SERVER": "gunicorn", "MLSUITE_OTHER_TOOL_SETTING": "ignored",
    })
    assert (s.data_dir, s.redis_url, s.workers, s.fraud_port, s.log_level, s.server) == (
        tmp_path, "redis://h:6380/2", 4, 9000, "DEBUG", "gunicorn")


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("MLSUITE_WORKERS", "many", "MLSUITE_WORKERS must be an integer in [1, 64], got 'many'"),
    ("MLSUITE_WORKERS", "0", "MLSUITE_WORKERS must be an integer in [1, 64]"),
    ("MLSUITE_RECOMMENDER_PORT", "70000", "MLSUITE_RECOMMENDER_PORT must be an integer in [0, 65535]"),
    ("MLSUITE_REDIS_URL", "localhost:6379", "MLSUITE_REDIS_URL must be a redis://"),
    ("MLSUITE_SERVER", "uwsgi", "MLSUITE_SERVER must be one of granian, gunicorn"),
    ("MLSUITE_LOG_LEVEL", "loud", "MLSUITE_LOG_LEVEL must be one of"),
    ("MLSUITE_FEAST_ONLINE_STORE", "dynamo", "MLSUITE_FEAST_ONLINE_STORE must be 'sqlite', 'redis'"),
    ("MLSUITE_FEAST_REPO", "/nonexistent", "MLSUITE_FEAST_REPO must be a Feast repo folder"),
    ("MLSUITE_MAX_REQUEST_BYTES", "10", "MLSUITE_MAX_REQUEST_BYTES must be an integer >= 1024"),
    ("MLSUITE_MODEL_POLL_SECONDS", "-1", "MLSUITE_MODEL_POLL_SECONDS must be a number of seconds"),
    ("MLSUITE_EXPERIMENTS_FILE", "/nope.toml", "MLSUITE_EXPERIMENTS_FILE must be an existing TOML file"),
], ids=lambda v: str(v)[:30])
def test_bad_value_names_the_setting(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({var: value})
    assert expected in str(err.value)


def test_cli_stops_with_the_message_and_status_2() -> None:
    env = {"MLSUITE_WORKERS": "lots", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "mlplatform", "models", "list"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "configuration error: MLSUITE_WORKERS must be an integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_as_env_round_trips(tmp_path: Path) -> None:
    s = Settings.from_env({"MLSUITE_DATA_DIR": str(tmp_path), "MLSUITE_WORKERS": "3"})
    assert Settings.from_env(s.as_env()) == s
