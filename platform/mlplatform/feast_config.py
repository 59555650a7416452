"""Feast configuration: which feature_store YAML, how Settings reach it, what to apply.

The definitions live in the source tree (``settings.feast_repo``); everything Feast
writes or reads as data lives in the data folder, so the source tree is never written
to and each test can run its own store in a temp folder:

- the YAML files name the data folder as ``${MLSUITE_DATA_DIR}`` (registry, SQLite
  online store) and the Redis online store as ``${MLSUITE_FEAST_REDIS}``. Feast expands
  such variables from the environment (``os.path.expandvars``) when its CLI reads the
  file; here they are filled in from ``Settings`` instead, so no process-wide
  environment is needed. Other ``${VARS}`` (production secrets) still come from the
  environment.
- ``RepoConfig.repo_path`` is the data folder: Feast resolves relative FileSource paths
  (``shop/users.parquet``) against it.
- ``load_definitions`` collects feature_repo/'s objects the way ``feast apply`` does,
  without ``feast apply``'s ``os.chdir`` and without writing bytecode into the repo.

>>> redis_connection_string("redis://:s3cret@cache.internal:6380/2")
'cache.internal:6380,db=2,password=s3cret,socket_connect_timeout=2,socket_timeout=2'
>>> redis_connection_string("rediss://app:pw@cache:6379")
'cache:6379,db=0,username=app,password=pw,ssl=true,socket_connect_timeout=2,socket_timeout=2'
>>> redis_connection_string("unix:///run/redis.sock?db=1")
'localhost:6379,db=1,unix_socket_path=/run/redis.sock,socket_connect_timeout=2,socket_timeout=2'
>>> redis_connection_string("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000")
'10.0.0.1:7000,10.0.0.2:7000,password=pw,socket_connect_timeout=2,socket_timeout=2'
>>> expand("path: ${MLSUITE_DATA_DIR}/feast/registry.db", {"MLSUITE_DATA_DIR": "/srv/data"})
'path: /srv/data/feast/registry.db'
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from mlplatform import feast_untyped
from mlplatform.config import Settings
from mlplatform.errors import ConfigError

if TYPE_CHECKING:
    from feast.repo_config import RepoConfig
    from feast.repo_contents import RepoContents

# Before anything here imports Feast: 6 s less per process (see feast_untyped).
feast_untyped.install()

__all__ = [
    "DATA_DIR_VAR",
    "REDIS_VAR",
    "STORE_FILES",
    "config_file",
    "expand",
    "load_definitions",
    "quiet_feast",
    "redis_connection_string",
    "repo_config",
    "variables",
]

# settings.feast_online_store -> file in settings.feast_repo (anything else is a YAML path).
STORE_FILES = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}
DATA_DIR_VAR = "MLSUITE_DATA_DIR"
REDIS_VAR = "MLSUITE_FEAST_REDIS"
# Seconds before a Redis call gives up: a dead online store must fail a request in
# about a second (503, retryable), not hang it.
REDIS_TIMEOUT_SECONDS = 2

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# Importing feature_repo/ swaps process-wide state (sys.path, sys.modules, bytecode flag).
_IMPORT_LOCK = threading.Lock()


def config_file(settings: Settings) -> Path:
    """The feature_store YAML selected by ``settings.feast_online_store``."""
    name = STORE_FILES.get(settings.feast_online_store)
    path = settings.feast_repo / name if name else Path(settings.feast_online_store)
    if not path.is_file():
        raise ConfigError(
            f"MLSUITE_FEAST_ONLINE_STORE={settings.feast_online_store!r} needs the Feast "
            f"config file {str(path)!r}, which does not exist"
        )
    return path


def variables(settings: Settings) -> dict[str, str]:
    """The ``${VARS}`` the YAML files may use, as these settings define them."""
    values = {DATA_DIR_VAR: str(Path(settings.data_dir).resolve())}
    if settings.redis_url:
        values[REDIS_VAR] = redis_connection_string(settings.redis_url)
    return values


def expand(text: str, values: Mapping[str, str]) -> str:
    """Replace ``$NAME`` / ``${NAME}`` from ``values``, then the environment; leave unknown ones."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in values:
            return values[name]
        return os.environ.get(name, match.group(0))

    return _VAR.sub(repl, text)


def redis_connection_string(url: str) -> str:
    """A Redis URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``) as a
    Feast connection string.

    Feast's Redis online store takes ``host:port,key=value,...`` instead of a URL; a
    cluster's is its nodes, ``host:port,host:port,...`` (no ``db``: a cluster has one),
    and the store runs with ``redis_type: redis_cluster`` (``repo_config``).
    """
    from mlplatform.redisdb import cluster_nodes, is_cluster_url

    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if is_cluster_url(url):
        nodes, options = cluster_nodes(url)
        head = ",".join(f"{h}:{p}" for h, p in nodes)
        params = [f"{k}={v}" for k, v in options.items()]
    elif parsed.scheme == "unix":
        params = [f"db={int(query.get('db', 0))}", f"unix_socket_path={parsed.path}"]
        head = "localhost:6379"  # ignored by redis-py when unix_socket_path is set
    elif parsed.scheme in ("redis", "rediss"):
        path_db = parsed.path.lstrip("/")
        db = path_db or query.get("db", "0")
        if not db.isdigit():
            raise ConfigError(f"MLSUITE_REDIS_URL database must be a number, got {db!r} in {url!r}")
        head = f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"
        params = [f"db={int(db)}"]
        if parsed.username:
            params.append(f"username={unquote(parsed.username)}")
        if parsed.password:
            params.append(f"password={unquote(parsed.password)}")
        if parsed.scheme == "rediss":
            params.append("ssl=true")
    else:
        raise ConfigError(
            f"MLSUITE_REDIS_URL must be a redis://, rediss://, unix:// or redis+cluster:// "
            f"URL, got {url!r}"
        )
    params += [f"socket_connect_timeout={REDIS_TIMEOUT_SECONDS}",
               f"socket_timeout={REDIS_TIMEOUT_SECONDS}"]
    # Feast splits the string on "," and each parameter on the first "=": a comma in a
    # value cannot be expressed.
    for param in params:
        if "," in param:
            raise ConfigError(
                f"MLSUITE_REDIS_URL: Feast's Redis connection string cannot carry a ',' "
                f"(in {param.split('=', 1)[0]}); choose a password without commas"
            )
    return ",".join([head, *params])


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast ``RepoConfig`` for these settings: the YAML, filled in, rooted in the data folder."""
    from feast.repo_config import RepoConfig

    path = config_file(settings)
    raw: dict[str, Any] = yaml.safe_load(expand(path.read_text(), variables(settings)))
    leftover = sorted(_unresolved(raw))
    if leftover:
        hint = " (the Redis online store needs MLSUITE_REDIS_URL)" if REDIS_VAR in leftover else ""
        raise ConfigError(
            f"Feast config {str(path)!r} uses {', '.join(leftover)}, which is not set{hint}"
        )
    data_dir = Path(settings.data_dir).resolve()
    online = raw.get("online_store")
    if (isinstance(online, dict) and online.get("type") == "redis"
            and "redis_type" not in online and _is_cluster(settings.redis_url)):
        # The same YAML serves a single server and a cluster: the URL says which.
        raw["online_store"] = {**online, "redis_type": "redis_cluster"}
    try:
        return RepoConfig(**{**raw, "repo_path": data_dir})
    except Exception as exc:  # pydantic's ValidationError, with every bad field listed
        raise ConfigError(f"Feast config {str(path)!r} is invalid: {exc}") from exc


def _is_cluster(url: str | None) -> bool:
    from mlplatform.redisdb import is_cluster_url

    return is_cluster_url(url)


def _unresolved(value: Any) -> set[str]:
    """Names of ``${VARS}`` left in the parsed config's values (comments don't count)."""
    if isinstance(value, str):
        return {m.group(1) or m.group(2) for m in _VAR.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(_unresolved(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_unresolved(v) for v in value))
    return set()


def load_definitions(repo: Path, project: str) -> RepoContents:
    """The Feast objects defined in ``repo``'s .py files, as ``feast apply`` collects them.

    Like Feast, each file is imported as a top-level module (so ``from entities import
    user`` works in the repo); unlike Feast, without changing the working directory,
    without writing bytecode into the source tree, and fresh on every call (Feast
    objects are mutated by apply, so they must not be shared between stores).
    """
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView, Project
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents
    from feast.repo_operations import get_repo_files
    from feast.stream_feature_view import StreamFeatureView

    files = get_repo_files(repo)  # honours .feastignore, like `feast apply`
    names = [".".join(f.relative_to(repo.resolve()).with_suffix("").parts) for f in files]
    found: list[Any] = []
    with _IMPORT_LOCK:
        saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
        bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        sys.path.insert(0, str(repo))
        importlib.invalidate_caches()
        try:
            for name in names:
                module = importlib.import_module(name)
                for value in vars(module).values():
                    if not any(value is seen for seen in found):
                        found.append(value)
        except Exception as exc:
            raise ConfigError(f"cannot load Feast definitions from {str(repo)!r}: {exc}") from exc
        finally:
            sys.path.remove(str(repo))
            sys.dont_write_bytecode = bytecode
            for name in names:
                sys.modules.pop(name, None)
            sys.modules.update(saved)

    def of(kind: type) -> list[Any]:
        return [o for o in found if isinstance(o, kind)]

    sources = of(DataSource)
    for obj in [*sources, *of(FeatureView)]:
        for attr in ("batch_source", "stream_source"):
            inner = getattr(obj, attr, None)
            if inner is not None and not any(inner is s for s in sources):
                sources.append(inner)
    projects = of(Project) or [Project(name=project)]
    return RepoContents(
        projects=projects,
        data_sources=sources,
        feature_views=[v for v in of(FeatureView) if not isinstance(v, StreamFeatureView)],
        on_demand_feature_views=of(OnDemandFeatureView),
        stream_feature_views=of(StreamFeatureView),
        label_views=[],
        # Feast registers this placeholder for entity-less views on every apply;
        # listing it keeps the diff from deleting it each time.
        entities=[*of(Entity), DUMMY_ENTITY],
        feature_services=of(FeatureService),
        permissions=[],
    )


def quiet_feast() -> None:
    """Silence Feast's import-time and per-call warnings that say nothing to an operator."""
    # Feast's loggers narrate at INFO/WARNING for routine calls (configure_logging caps
    # them too); ours say what matters.
    for name in ("feast", "feast.infra", "feast.feature_store"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"feast(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"feast(\.|$)")
