"""Settings: read once per process from ``MLSUITE_*`` environment variables.

Every setting has a default for the embedded setup (a laptop, no services running).
A malformed value raises ``ConfigError`` naming the variable and what it expects, so a
bad deployment stops at start-up instead of failing on the first request.

>>> s = Settings.from_env({"MLSUITE_WORKERS": "3"})
>>> s.workers, s.redis_url is None
(3, True)
>>> Settings.from_env({"MLSUITE_WORKERS": "many"})
Traceback (most recent call last):
...
mlplatform.errors.ConfigError: MLSUITE_WORKERS must be an integer in [1, 64], got 'many'
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlplatform.errors import ConfigError

__all__ = ["Settings", "get_settings", "PREFIX", "source_root", "duration_seconds"]

PREFIX = "MLSUITE_"
SERVERS = ("granian", "gunicorn")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def source_root() -> Path:
    """The checkout this package runs from (platform/mlplatform -> repo root)."""
    return Path(__file__).resolve().parents[2]


def _default_feast_repo() -> Path:
    return source_root() / "feature_repo"


@dataclass(frozen=True)
class Settings:
    """Process-wide settings; build with ``Settings.from_env`` or ``get_settings``."""

    data_dir: Path = Path("data")
    redis_url: str | None = None
    feast_repo: Path = Path("feature_repo")
    # "sqlite" (embedded default), "redis" (Redis online store on redis_url), or a YAML path.
    feast_online_store: str = "sqlite"
    host: str = "127.0.0.1"
    recommender_port: int = 8001
    fraud_port: int = 8002
    # The monitoring console and the GraphQL service (they call the two services over HTTP).
    console_port: int = 8000
    graphql_port: int = 8003
    # Where the console and GraphQL find the services; unset: http://host:<service>_port.
    recommender_url: str | None = None
    fraud_url: str | None = None
    # The console posts each new alert here (JSON) when set.
    alert_webhook: str | None = None
    # API keys: on by default; off only for local work (a warning says so at start).
    auth: bool = True
    # Whether /metrics needs a key too (Prometheus then sends one; off: open like /healthz).
    metrics_auth: bool = False
    # The key mlsuite's own clients send: the console, bench, load tests, the traffic
    # simulator. A demo, bench or load test run makes one for itself when unset.
    api_key: str | None = field(default=None, repr=False)
    # GraphQL limits: introspection can be turned off in production; depth, cost and
    # batch size bound what one query may ask of the services.
    graphql_introspection: bool = True
    graphql_max_depth: int = 8
    graphql_max_cost: int = 5_000
    graphql_max_batch: int = 100
    workers: int = 2
    # Request threads per worker: more than 1 overlaps waits on Redis within a process.
    threads: int = 1
    server: str = "granian"
    log_level: str = "INFO"
    max_request_bytes: int = 1_048_576
    experiments_file: Path | None = None
    seed: int = 42
    # Seconds between checks of the model registry for a moved alias (hot swap).
    model_poll_seconds: float = 1.0
    # Streams: entries older than this (or beyond stream_maxlen) are archived to the
    # lake and trimmed from Redis by the worker; 0 length = no length cap.
    stream_retention_seconds: float = 3_600.0
    stream_maxlen: int = 1_000_000
    # How often the worker runs retention (archive + trim) on each stream.
    archive_interval_seconds: float = 10.0
    # Scheduling priority added to worker processes (os.nice): on a machine shared with
    # request workers, background work takes the CPU they leave.
    worker_nice: int = 10
    # Seconds between scheduled runs of the retraining pipeline in the worker; 0 = off.
    retrain_interval: float = 0.0
    # The lake (parquet archive of every stream); unset: <data_dir>/lake. A shared volume
    # when workers run on several machines.
    lake_dir: Path | None = None
    # Signing key of pickled model checkpoints (HMAC); unset: <data_dir>/secret.key.
    secret_key: str | None = field(default=None, repr=False)
    # Key of the HMAC tokens that replace card, device and user ids at the edge
    # (mlplatform.security.pii); unset: <data_dir>/pii.key.
    pii_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = {k[len(PREFIX):].lower(): v for k, v in env.items() if k.startswith(PREFIX)}
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            "data_dir": Path("data").resolve(),
            "feast_repo": _default_feast_repo(),
        }
        for name, text in raw.items():
            if name not in known:
                continue  # other MLSUITE_* variables belong to other tools (e.g. tests)
            values[name] = _parse(name, text)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        # lazily: settings load without redis-py
        from mlplatform.redisdb import cluster_nodes, is_cluster_url, redact_url

        if self.redis_url is not None:
            scheme = urlparse(self.redis_url).scheme
            if is_cluster_url(self.redis_url):
                try:
                    cluster_nodes(self.redis_url)
                except ConfigError as exc:
                    raise ConfigError(f"MLSUITE_REDIS_URL: {exc}") from None
            elif scheme not in ("redis", "rediss", "unix"):
                raise ConfigError(
                    f"MLSUITE_REDIS_URL must be a redis://, rediss://, unix:// or "
                    f"redis+cluster://host:port,host:port URL, "
                    f"got {redact_url(self.redis_url)!r}"
                )
        if self.feast_online_store not in ("sqlite", "redis") and not Path(
            self.feast_online_store
        ).is_file():
            raise ConfigError(
                "MLSUITE_FEAST_ONLINE_STORE must be 'sqlite', 'redis' or the path of a "
                f"feature_store YAML file, got {self.feast_online_store!r}"
            )
        if not (self.feast_repo / "feature_store.yaml").is_file():
            raise ConfigError(
                f"MLSUITE_FEAST_REPO must be a Feast repo folder with a feature_store.yaml, "
                f"got {str(self.feast_repo)!r}"
            )
        if self.experiments_file is not None and not self.experiments_file.is_file():
            raise ConfigError(
                f"MLSUITE_EXPERIMENTS_FILE must be an existing TOML file, "
                f"got {str(self.experiments_file)!r}"
            )

    def service_url(self, service: str) -> str:
        """Base URL of the recommender or fraud service, as the console and GraphQL call it."""
        configured = getattr(self, f"{service}_url", None)
        if configured:
            return str(configured).rstrip("/")
        return f"http://{self.host}:{getattr(self, f'{service}_port')}"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (tests, CLI flags)."""
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """These settings as MLSUITE_* variables, to hand to worker processes."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[PREFIX + f.name.upper()] = str(value)
        return env


def _parse(name: str, text: str) -> Any:
    var = PREFIX + name.upper()
    text = text.strip()

    def integer(lo: int, hi: int | None = None) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ConfigError(f"{var} must be an integer {rng}, got {text!r}")
        return value

    match name:
        case "data_dir" | "feast_repo":
            if not text:
                raise ConfigError(f"{var} must be a folder path, got an empty value")
            return Path(text).expanduser().resolve()
        case "experiments_file" | "lake_dir":
            return Path(text).expanduser().resolve() if text else None
        case "redis_url" | "alert_webhook" | "api_key":
            return text or None
        case "recommender_url" | "fraud_url":
            if text and urlparse(text).scheme not in ("http", "https"):
                raise ConfigError(f"{var} must be an http:// or https:// URL, got {text!r}")
            return text or None
        case "recommender_port" | "fraud_port" | "console_port" | "graphql_port":
            return integer(0, 65535)
        case "graphql_introspection" | "auth" | "metrics_auth":
            if text.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                raise ConfigError(f"{var} must be true or false, got {text!r}")
            return text.lower() in ("1", "true", "on", "yes")
        case "graphql_max_depth" | "graphql_max_cost" | "graphql_max_batch":
            return integer(1)
        case "workers" | "threads":
            return integer(1, 64)
        case "max_request_bytes":
            return integer(1024)
        case "seed":
            return integer(0)
        case "model_poll_seconds":
            try:
                seconds = float(text)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= 3600:
                raise ConfigError(f"{var} must be a number of seconds in (0, 3600], got {text!r}")
            return seconds
        case "stream_retention_seconds" | "archive_interval_seconds" | "retrain_interval":
            parsed = duration_seconds(text)
            low = 0.0 if name == "retrain_interval" else 0.001
            if parsed is None or not low <= parsed <= 10 * 365 * 86400:
                raise ConfigError(f"{var} must be a duration such as 90, 90s, 15m, 6h or 7d"
                                  f"{' (0: off)' if name == 'retrain_interval' else ''}, "
                                  f"got {text!r}")
            return parsed
        case "stream_maxlen":
            return integer(0)
        case "worker_nice":
            return integer(0, 19)
        case "secret_key" | "pii_key":
            if text and len(text) < 16:
                raise ConfigError(f"{var} must be at least 16 characters (a random secret)")
            return text or None
        case "server":
            if text not in SERVERS:
                raise ConfigError(f"{var} must be one of {', '.join(SERVERS)}, got {text!r}")
            return text
        case "log_level":
            if text.upper() not in LOG_LEVELS:
                raise ConfigError(f"{var} must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
            return text.upper()
        case "host":
            if not text:
                raise ConfigError(f"{var} must be a host name or address, got an empty value")
            return text
        case _:
            return text


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str) -> float | None:
    """Seconds in a duration such as ``90``, ``90s``, ``15m``, ``6h``, ``7d``; None if malformed.

    >>> duration_seconds("15m"), duration_seconds("2.5"), duration_seconds("soon")
    (900.0, 2.5, None)
    """
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in ("s", "m", "h", "d") else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        return None
    return value * _UNITS[unit] if value >= 0 else None


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read from the environment once."""
    return Settings.from_env()
