"""The HAProxy configuration of the gateway: one front port in front of every pool.

Routes (the prefix is stripped, so a replica sees the paths it serves itself):

==========================  =================================================
``/recommender/...``        recommender pool (``/recommender/v1/...``)
``/fraud/...``              fraud pool (``/fraud/v1/...``)
``/graphql``                the GraphQL service (queries, websockets)
anything else               the console (``/``, ``/api/...``, ``/assets/...``)
==========================  =================================================

Prefixes rather than the services' own ``/v1`` paths, because both services answer
``/v1/model``, ``/readyz`` and ``/metrics``: a prefix reaches every endpoint of either,
and a client that takes a base URL (GraphQL, Locust, the traffic simulator) is pointed
at ``http://gateway/fraud`` unchanged.

Each pool is round robin with an active health check on ``/readyz`` (a replica without
its model or its Redis answers 503 there and leaves the rotation), per-server and global
connection limits (excess requests queue in HAProxy instead of piling onto a busy
server), and retries on another server: always when the connection failed (the request
never reached a server), and when a server closed or timed out without answering only
for the routes that are safe to replay (``RETRY_SAFE``).

The optional per-key limit is a coarse first line: a stick table keyed on a hash of the
Authorization header counts requests per key over 10 s. The services' own per-key GCRA
limits in Redis stay the real ones (exact, per key, shared by every replica and every
gateway); this one only stops a flood before it costs the services a Redis round trip.

>>> text = render(GatewayConfig(port=8080, pools={"fraud": [Server("fraud-1", "127.0.0.1", 9001)]}))
>>> "server fraud-1 127.0.0.1:9001" in text and "backend fraud" in text
True
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlplatform.errors import ConfigError
from mlplatform.lifecycle import preexec_die_with_parent

__all__ = ["Server", "GatewayConfig", "RETRY_SAFE", "PREFIXED", "POOLS", "render",
           "find_haproxy", "check_config", "spawn_haproxy"]

# Pools reached under /<name>/ (prefix stripped); console and graphql have fixed routes.
PREFIXED = ("recommender", "fraud")
POOLS = ("recommender", "fraud", "console", "graphql")

# What a replay does, route by route (read in apps/recommender and apps/fraud), and so
# whether HAProxy may send a request again after a server took it and died or timed
# out without answering ("empty-response", "response-timeout"). Any method not listed
# here keeps only "conn-failure" retries, which are always safe: nothing was sent.
#
# - GET/HEAD/OPTIONS change nothing.
# - PUT (item, user, card, merchant profiles; list entries) sets fields to values:
#   applied twice, the state is the same.
# - recommender POST /v1/recommendations/batch only reads.
# - fraud POST /v1/transactions/score and /score/batch: a transaction_id already
#   decided is not scored again (its velocity is left alone) and the stored decision
#   comes back, flagged "duplicate". A replay that finds the first attempt's claim still
#   pending waits up to 2 s for it, then answers 409 "retry": never a double count.
# - fraud POST /v1/labels: a repeat of a transaction's last label is ignored.
#
# Not replayed:
# - recommender POST /v1/events: events carry no client id (the stream id is made by
#   the server), so a replay records the events twice (history, popularity, attribution).
# - fraud POST /v1/reviews/<id>: the replay of a verdict that closed the case answers
#   409 "already closed" though it succeeded.
# - fraud DELETE /v1/lists/...: the replay of a delete that succeeded answers 404.
# - POST /graphql: a mutation may post events (above).
RETRY_SAFE: dict[str, tuple[str, ...]] = {
    "recommender": ("/v1/recommendations/batch",),
    "fraud": ("/v1/transactions/score", "/v1/transactions/score/batch", "/v1/labels"),
    "console": (),
    "graphql": (),
}
_SAFE_METHODS = "GET HEAD OPTIONS PUT"


@dataclass(frozen=True)
class Server:
    """One replica: its name in HAProxy's stats, and where it listens."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class GatewayConfig:
    """What ``render`` needs: the front address, the pools, the limits."""

    port: int
    pools: Mapping[str, Sequence[Server]]
    host: str = "127.0.0.1"
    # Concurrent connections HAProxy accepts in all; per server, those it forwards at
    # once (the rest wait in HAProxy's queue for up to queue_timeout seconds). A granian
    # worker with one blocking thread serves one request at a time: a few per worker
    # keep it busy without a long queue inside it.
    maxconn: int = 4096
    server_maxconn: int = 32
    # Requests per second per API key over a 10 s window; 0: no gateway limit.
    rate_limit: float = 0.0
    # Health checks: every check_interval seconds; fall failed checks take a server
    # out, rise passing ones bring it back.
    check_interval: float = 1.0
    fall: int = 2
    rise: int = 2
    # 1 s to connect: on loopback or a LAN a dead server refuses at once, a hung one
    # should not hold a request longer than that before it is retried elsewhere.
    connect_timeout: float = 1.0
    server_timeout: float = 30.0
    queue_timeout: float = 5.0
    retries: int = 3
    stats_socket: Path | None = None
    extra_comment: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pools) - set(POOLS))
        if unknown:
            raise ConfigError(f"gateway pools must be among {', '.join(POOLS)}, got "
                              f"{', '.join(unknown)}")
        if not any(self.pools.values()):
            raise ConfigError("gateway needs at least one server in one pool, got none")
        if not 0 < self.port < 65536:
            raise ConfigError(f"gateway port must be in [1, 65535], got {self.port}")
        if self.rate_limit < 0:
            raise ConfigError(f"gateway rate limit must be >= 0 requests/s, got "
                              f"{self.rate_limit}")


def _ms(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _error_json(code: str, message: str, field_name: str | None = None) -> str:
    # The services' error shape (mlplatform.http), so a client parses one format
    # whether the gateway or a replica answered. Single quotes delimit it in the config.
    fields = f'"code": "{code}", "message": "{message}"'
    if field_name:
        fields += f', "field": "{field_name}"'
    return "'{\"error\": {" + fields + "}}'"


def render(config: GatewayConfig) -> str:
    """The haproxy.cfg text for ``config`` (checked with ``check_config``)."""
    window = 10
    lines = [
        "# mlsuite gateway (HAProxy), written by `mlsuite gateway config` / `mlsuite up`.",
        *(f"# {line}" for line in config.extra_comment.splitlines()),
        "global",
        f"    maxconn {config.maxconn}",
        "    log stderr format raw local0 warning",
    ]
    if config.stats_socket is not None:
        # `show stat` / `show servers state` / `disable server` for operators and tests.
        lines.append(f"    stats socket {config.stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        f"    timeout connect {_ms(config.connect_timeout)}",
        "    timeout client 60s",
        f"    timeout server {_ms(config.server_timeout)}",
        f"    timeout queue {_ms(config.queue_timeout)}",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        # GraphQL subscriptions hold a websocket open.
        "    timeout tunnel 1h",
        f"    timeout check {_ms(max(config.check_interval, 1.0))}",
        # Each retry goes to another server (redispatch 1), with no turn-around delay:
        # a dead replica refuses at once, the next one answers.
        # The whole request body is read before a server is chosen: a request can only
        # be replayed from HAProxy's buffer once all of it is there (a client that sends
        # headers and body in two writes was otherwise never retried), and a slow client
        # holds no replica's worker. A body larger than the buffer (tune.bufsize, 16 kB:
        # a score batch of more than about 50 transactions) is streamed instead, and then
        # only retried when the connection failed.
        "    option http-buffer-request",
        f"    retries {config.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        # A replica that refuses connections is taken out at the first few errors,
        # without waiting for its health checks to fail.
        f"    default-server inter {_ms(config.check_interval)} "
        f"fastinter {_ms(config.check_interval / 2)} downinter {_ms(config.check_interval)} "
        f"fall {config.fall} rise {config.rise} maxconn {config.server_maxconn} "
        "observe layer4 error-limit 3 on-error mark-down",
        "    http-error status 502 content-type application/json string "
        + _error_json("bad_gateway", "no valid answer from any replica of this service"),
        "    http-error status 503 content-type application/json string "
        + _error_json("unavailable", "no replica of this service is ready; retry"),
        "    http-error status 504 content-type application/json string "
        + _error_json("gateway_timeout", "the replica did not answer in time"),
        "",
        "frontend mlsuite",
        f"    bind {config.host}:{config.port}",
        # One id per request, kept when the caller sent one: the replicas log it and
        # return it in every error body.
        "    unique-id-format %[uuid()]",
        "    http-request set-header X-Request-ID %[unique-id] "
        "unless { req.hdr(x-request-id) -m found }",
    ]
    if config.rate_limit > 0:
        # Keyed on a SHA-256 of the header: the table (readable on the stats socket)
        # never holds a key. Requests without one are not counted here: they reach only
        # the open endpoints or get the services' 401.
        limit = max(1, round(config.rate_limit * window))
        lines += [
            f"    stick-table type binary len 32 size 100k expire {window * 3}s "
            f"store http_req_rate({window}s)",
            "    acl has_key req.hdr(authorization) -m found",
            "    http-request track-sc0 req.hdr(authorization),sha2(256) if has_key",
            "    http-request deny status 429 content-type application/json string "
            + _error_json("rate_limited",
                          f"more than {limit} requests in {window} s with this API key at "
                          "the gateway; slow down", "Authorization")
            + f" hdr Retry-After {window} if has_key {{ sc_http_req_rate(0) gt {limit} }}",
        ]
    routes, acls, uses = [], [], []
    for name in PREFIXED:
        if config.pools.get(name):
            routes.append(f"/{name}/")
            # Two lines of one name are ORed (an "or" inside one line would be a pattern).
            acls += [f"    acl to_{name} path /{name}", f"    acl to_{name} path_beg /{name}/"]
            uses.append(f"    use_backend {name} if to_{name}")
    if config.pools.get("graphql"):
        routes.append("/graphql")
        acls.append("    acl to_graphql path /graphql /graphql/")
        uses.append("    use_backend graphql if to_graphql")
    lines += acls
    if config.pools.get("console"):
        uses.append("    default_backend console")
    else:  # otherwise HAProxy's 503 would blame replicas for a path nothing serves
        routed = " ".join(f"!to_{n}" for n in POOLS if n != "console" and config.pools.get(n))
        lines.append("    http-request deny status 404 content-type application/json string "
                     + _error_json("not_found", f"no route for this path at the gateway; "
                                   f"routes: {', '.join(routes)}", "path")
                     + f" if {routed}")
    lines += uses
    for name in POOLS:
        servers = config.pools.get(name) or ()
        if servers:
            lines += ["", *_backend(name, servers)]
    return "\n".join(lines) + "\n"


def _backend(name: str, servers: Sequence[Server]) -> list[str]:
    lines = [
        f"backend {name}",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
    ]
    if name in PREFIXED:
        lines.append(f"    http-request replace-path ^/{name}/?(.*) /\\1")
    # After the prefix is gone: the paths below are the service's own.
    safe_paths = RETRY_SAFE.get(name, ())
    lines.append(f"    acl replay_safe method {_SAFE_METHODS}")
    if safe_paths:
        lines.append("    acl replay_safe_post method POST")
        lines.append(f"    acl replay_safe_path path {' '.join(safe_paths)}")
        lines.append("    http-request disable-l7-retry "
                     "unless replay_safe or replay_safe_post replay_safe_path")
    else:
        lines.append("    http-request disable-l7-retry unless replay_safe")
    lines += [f"    server {s.name} {s.host}:{s.port} check" for s in servers]
    return lines


def find_haproxy() -> str | None:
    """The haproxy binary: on PATH, else Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which("haproxy")
    if found:
        return found
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn_haproxy(config_path: Path, haproxy: str | None = None) -> subprocess.Popen[bytes]:
    """Run HAProxy on ``config_path`` in the foreground, as a child that dies with us."""
    binary = haproxy or find_haproxy()
    if binary is None:
        raise ConfigError("haproxy not found on PATH or in /usr/sbin: install it "
                          "(apt-get install haproxy) to run the gateway")
    parent = os.getpid()
    return subprocess.Popen([binary, "-db", "-f", str(config_path)],
                            preexec_fn=lambda: preexec_die_with_parent(parent))


def check_config(text: str, haproxy: str | None = None) -> None:
    """Run ``haproxy -c`` on ``text``; ``ConfigError`` with HAProxy's message if it is
    invalid or draws a warning (``-dW``: a warning is usually a rule that does not do
    what its place in the file suggests)."""
    binary = haproxy or find_haproxy()
    if binary is None:
        raise ConfigError("haproxy not found on PATH or in /usr/sbin: install it "
                          "(apt-get install haproxy) to check or run the gateway")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", prefix="mlsuite-gateway-") as fh:
        fh.write(text)
        fh.flush()
        result = subprocess.run([binary, "-c", "-dW", "-f", fh.name], capture_output=True,
                                text=True, timeout=30, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise ConfigError(f"haproxy rejected the gateway configuration: {detail}")
