"""The HAProxy gateway: a configuration haproxy accepts, routes, retries only what is
safe to replay, the per-key limit, and failover between two real fraud replicas.

Real haproxy (Debian's /usr/sbin/haproxy; the tests skip, saying so, where it is
missing). The routing and retry tests put it in front of small real HTTP servers that
report what they received (one of them drops every request without answering, as a
replica killed mid-request does); the failover test runs ``mlsuite up``'s ``ScaleOut``
with two fraud replicas under steady load, SIGKILLs one and starts it again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.errors import ConfigError
from mlplatform.gateway import GatewayConfig, Server, check_config, find_haproxy, render
from mlplatform.gateway.cli import gateway
from mlplatform.gateway.haproxy import spawn_haproxy
from mlplatform.gateway.stats import show_stat
from mlplatform.gateway.up import ScaleOut
from mlplatform.monitoring.scrape import parse, total
from mlplatform.redisdb import free_port

HAPROXY = find_haproxy()
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy not installed (looked on PATH and in /usr/sbin): "
                            "apt-get install haproxy")


# -- small real upstreams -------------------------------------------------------------------

@dataclass
class Upstream:
    """A real HTTP server standing for one replica: answers what it received, as JSON."""

    name: str
    drop: bool = False  # close every request but /readyz without answering
    seen: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/readyz":
                upstream.seen.append((self.command, self.path))
                if upstream.drop:  # a replica dying with the request: no answer at all
                    self.close_connection = True
                    return
            body = json.dumps({"server": upstream.name, "method": self.command,
                               "path": self.path,
                               "request_id": self.headers.get("X-Request-ID")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    running: list[ThreadingHTTPServer] = []

    def start(name: str, *, drop: bool = False) -> Upstream:
        upstream = Upstream(name, drop=drop)
        upstream.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream))
        threading.Thread(target=upstream.server.serve_forever, daemon=True).start()
        running.append(upstream.server)
        return upstream

    yield start
    for server in running:
        server.shutdown()
        server.server_close()


@pytest.fixture
def run_gateway(tmp_path: Path) -> Iterator[Callable[[GatewayConfig], str]]:
    """Start haproxy on a config; its base URL once it answers. Stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: GatewayConfig) -> str:
        path = tmp_path / f"haproxy-{len(procs)}.cfg"
        path.write_text(render(config))
        proc = spawn_haproxy(path, HAPROXY)
        procs.append(proc)
        url = f"http://127.0.0.1:{config.port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"haproxy exited with status {proc.returncode}"
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                return url
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"haproxy on {url} did not answer in 20 s")

    yield start
    for proc in procs:
        serving.stop_process(proc)


def _servers(*upstreams: Upstream) -> list[Server]:
    return [Server(u.name, "127.0.0.1", u.port) for u in upstreams]


# -- the configuration ---------------------------------------------------------------------

@needs_haproxy
@pytest.mark.parametrize("rate_limit", [0.0, 50.0], ids=["no-limit", "per-key-limit"])
def test_every_pool_renders_a_config_haproxy_accepts_without_warnings(
        rate_limit: float, tmp_path: Path) -> None:
    pools = {"recommender": [Server("recommender-1", "127.0.0.1", 9101),
                             Server("recommender-2", "127.0.0.1", 9102)],
             "fraud": [Server("fraud-1", "127.0.0.1", 9103)],
             "console": [Server("console", "127.0.0.1", 9104)],
             "graphql": [Server("graphql", "127.0.0.1", 9105)]}
    text = render(GatewayConfig(port=9100, pools=pools, rate_limit=rate_limit,
                                stats_socket=tmp_path / "stats.sock"))
    check_config(text)  # haproxy -c -dW: a warning fails too
    assert "retry-on conn-failure empty-response response-timeout" in text
    assert "option redispatch 1" in text
    assert text.count("option httpchk GET /readyz") == 4
    assert ("sc_http_req_rate(0) gt 500" in text) == (rate_limit > 0)


@needs_haproxy
def test_haproxy_rejects_what_render_did_not_write() -> None:
    with pytest.raises(ConfigError, match="haproxy rejected"):
        check_config("frontend x\n    bind 127.0.0.1:1\n    use_backend nowhere\n")


@pytest.mark.parametrize("pools, expected", [
    ({"payments": [Server("p", "127.0.0.1", 1)]}, "pools must be among"),
    ({"fraud": []}, "at least one server"),
], ids=["unknown-pool", "no-server"])
def test_bad_pools_are_refused_naming_the_problem(pools: dict[str, list[Server]],
                                                  expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        GatewayConfig(port=8080, pools=pools)


@needs_haproxy
def test_cli_writes_a_checked_config(tmp_path: Path) -> None:
    out = tmp_path / "haproxy.cfg"
    result = CliRunner().invoke(gateway, ["config", "--port", "9200", "--fraud", "127.0.0.1:9201",
                                          "--fraud", "127.0.0.1:9202", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "server fraud-1 127.0.0.1:9201 check" in text
    assert "server fraud-2 127.0.0.1:9202 check" in text
    assert "backend recommender" not in text
    bad = CliRunner().invoke(gateway, ["config", "--fraud", "fraud-host"])
    assert bad.exit_code == 2 and "--fraud must be HOST:PORT" in bad.output


# -- routes, retries, limits ----------------------------------------------------------------

@needs_haproxy
def test_routes_strip_the_prefix_and_round_robin(
        upstreams: Callable[..., Upstream], run_gateway: Callable[[GatewayConfig], str]) -> None:
    rec = [upstreams(f"recommender-{i}") for i in (1, 2)]
    fraud = [upstreams(f"fraud-{i}") for i in (1, 2)]
    console, graphql = upstreams("console"), upstreams("graphql")
    url = run_gateway(GatewayConfig(port=free_port(), pools={
        "recommender": _servers(*rec), "fraud": _servers(*fraud),
        "console": _servers(console), "graphql": _servers(graphql)}))
    with httpx.Client(base_url=url, timeout=5) as client:
        answers = [client.get("/fraud/v1/model").json() for _ in range(4)]
        assert {a["path"] for a in answers} == {"/v1/model"}
        assert sorted(a["server"] for a in answers) == ["fraud-1", "fraud-1", "fraud-2", "fraud-2"]
        assert client.get("/recommender/v1/model").json()["server"].startswith("recommender-")
        assert client.post("/graphql", json={}).json()["server"] == "graphql"
        for path in ("/", "/api/overview", "/assets/console.js"):
            reply = client.get(path).json()
            assert (reply["server"], reply["path"]) == ("console", path)
        # The gateway names each request for the replicas' logs, unless the caller did.
        assert answers[0]["request_id"]
        assert client.get("/fraud/x", headers={"X-Request-ID": "mine"}).json()["request_id"] == "mine"


@needs_haproxy
def test_a_dead_replica_is_skipped_for_every_request(
        upstreams: Callable[..., Upstream], run_gateway: Callable[[GatewayConfig], str]) -> None:
    live = upstreams("recommender-2")
    dead = Server("recommender-1", "127.0.0.1", free_port())  # nothing listens there
    url = run_gateway(GatewayConfig(port=free_port(), check_interval=30.0,
                                    pools={"recommender": [dead, *_servers(live)]}))
    # The connection was refused: nothing was sent, so even events (not safe to replay)
    # go to the other replica.
    with httpx.Client(base_url=url, timeout=5) as client:
        codes = [client.post("/recommender/v1/events", json={}).status_code for _ in range(6)]
    assert codes == [200] * 6
    assert len(live.seen) == 6


@needs_haproxy
def test_only_replay_safe_requests_are_sent_again_after_a_replica_drops_them(
        upstreams: Callable[..., Upstream], run_gateway: Callable[[GatewayConfig], str]) -> None:
    dropping, live = upstreams("fraud-1", drop=True), upstreams("fraud-2")
    # Long check interval and no error limit reached: the dropping replica stays in.
    url = run_gateway(GatewayConfig(port=free_port(), check_interval=30.0,
                                    pools={"fraud": _servers(dropping, live)}))
    cases = [("POST", "/v1/reviews/t1", False), ("DELETE", "/v1/lists/cards/c1", False),
             ("POST", "/v1/transactions/score", True),
             ("POST", "/v1/transactions/score/batch", True), ("POST", "/v1/labels", True),
             ("PUT", "/v1/cards/c1", True), ("GET", "/v1/model", True)]
    for method, path, safe in cases:
        # Two in a row: round robin sends one of them to the dropping replica. A new
        # connection each: on a kept-alive one, HAProxy answers a request it does not
        # replay by closing the connection (so that the client may retry), not with a 502.
        codes = [httpx.request(method, f"{url}/fraud{path}", json={}, timeout=10).status_code
                 for _ in range(2)]
        expected = [200, 200] if safe else [200, 502]
        assert sorted(codes) == expected, f"{method} {path}: {codes}"
        assert (method, path) in dropping.seen, f"{method} {path} never reached fraud-1"
    replies = httpx.post(f"{url}/fraud/v1/reviews/t2", json={}, timeout=10), \
        httpx.post(f"{url}/fraud/v1/reviews/t3", json={}, timeout=10)
    failed = [r for r in replies if r.status_code == 502]
    assert failed and failed[0].json()["error"]["code"] == "bad_gateway"


@needs_haproxy
def test_the_per_key_limit_answers_429_naming_the_header(
        upstreams: Callable[..., Upstream], run_gateway: Callable[[GatewayConfig], str]) -> None:
    fraud = upstreams("fraud-1")
    url = run_gateway(GatewayConfig(port=free_port(), rate_limit=1.0,  # 10 per 10 s
                                    pools={"fraud": _servers(fraud)}))
    with httpx.Client(base_url=url, timeout=5) as client:
        noisy = [client.get("/fraud/v1/model", headers={"Authorization": "Bearer noisy"})
                 for _ in range(13)]
        other = client.get("/fraud/v1/model", headers={"Authorization": "Bearer other"})
        anonymous = client.get("/fraud/v1/model")
    assert [r.status_code for r in noisy] == [200] * 10 + [429] * 3
    error = noisy[-1].json()["error"]
    assert error["code"] == "rate_limited" and error["field"] == "Authorization"
    assert noisy[-1].headers["Retry-After"] == "10"
    assert other.status_code == 200 and anonymous.status_code == 200
    assert len(fraud.seen) == 12


@needs_haproxy
def test_a_path_nothing_serves_is_a_404_naming_the_routes(
        upstreams: Callable[..., Upstream], run_gateway: Callable[[GatewayConfig], str]) -> None:
    fraud = upstreams("fraud-1")
    url = run_gateway(GatewayConfig(port=free_port(), pools={"fraud": _servers(fraud)}))
    reply = httpx.get(f"{url}/recommender/v1/model", timeout=5)
    assert reply.status_code == 404
    assert reply.json()["error"]["field"] == "path" and "/fraud/" in reply.json()["error"]["message"]


# -- failover between two real fraud replicas -----------------------------------------------

COLUMNS = ["transaction_id", "card_id", "merchant_id", "amount", "currency", "country",
           "channel", "device_id"]
SCORE = "/v1/transactions/score"
RATE = 40.0  # requests per second, steady, from a pool of client threads


@pytest.fixture(scope="module")
def scale(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    """Two fraud replicas (one granian worker each), their worker and HAProxy, API keys
    on, a private Redis: what `mlsuite up --replicas 2 --services fraud` starts."""
    if HAPROXY is None:
        pytest.skip("haproxy not installed (looked on PATH and in /usr/sbin)")
    data_dir = tmp_path_factory.mktemp("gateway") / "data"
    shutil.copytree(sim_data_dir, data_dir)
    settings = Settings.from_env({}).with_(data_dir=data_dir, redis_url=None, auth=True)
    run = ScaleOut(settings, replicas=2, services=["fraud"], gateway_port=free_port(),
                   server="granian", workers=1, name="gateway-test", private_redis=True,
                   restart=False, say=lambda _: None)
    with run:
        yield run


@pytest.fixture(scope="module")
def bodies(sim_data_dir: Path) -> list[dict[str, Any]]:
    """Simulated transactions as request bodies, under fresh ids."""
    frame = pd.read_parquet(sim_data_dir / "payments" / "transactions.parquet")
    frame = frame.sort_values("timestamp").tail(3000)
    rows = frame[COLUMNS].to_dict("records")
    for row, ts in zip(rows, frame["timestamp"].tolist()):
        row["transaction_id"] = f"gw-{row['transaction_id']}"
        row["timestamp"] = ts.isoformat()
        if row["device_id"] is None:
            del row["device_id"]
    return rows  # type: ignore[no-any-return]


@dataclass
class Load:
    """Scoring requests at a fixed rate through the gateway; each outcome with its time."""

    url: str
    headers: dict[str, str]
    bodies: list[dict[str, Any]]
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _one(self, client: httpx.Client, body: dict[str, Any]) -> None:
        at = time.monotonic()
        try:
            reply = client.post(f"{self.url}/fraud{SCORE}", json=body)
            outcome = "ok" if reply.status_code == 200 else f"{reply.status_code} {reply.text[:200]}"
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        self.outcomes.append((at, outcome))

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=15) as client, \
                ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            for n, body in enumerate(self.bodies):
                if self._stop.is_set():
                    break
                # Fixed rate: the n-th request leaves at n / RATE, however long others take.
                delay = started + n / RATE - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                pool.submit(self._one, client, body)

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        return [o for t, o in list(self.outcomes) if since <= t < until and o != "ok"]

    def count(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, _ in list(self.outcomes) if since <= t < until)


def _served(url: str) -> float:
    """Scoring requests a replica answered, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return total(parse(text), "mlsuite_http_requests_total",
                 lambda labels: labels["endpoint"] == SCORE) or 0.0


@pytest.mark.slow
def test_a_killed_replica_costs_no_request_and_takes_traffic_again_once_back(
        scale: ScaleOut, bodies: list[dict[str, Any]], wait_for: Callable[..., Any]) -> None:
    assert scale.gateway_url and scale.stats_socket and scale.auth_headers
    first, second = scale.replica("fraud-1"), scale.replica("fraud-2")
    load = Load(scale.gateway_url, scale.auth_headers, bodies)
    load.start()
    try:
        wait_for("both replicas to score through the gateway",
                 lambda: _served(first.url) >= 20 and _served(second.url) >= 20, timeout=30)
        killed_at = time.monotonic()
        os.kill(scale.pid("fraud-2"), signal.SIGKILL)  # its request workers die with it
        wait_for("HAProxy to mark fraud-2 down",
                 lambda: show_stat(scale.stats_socket)["fraud-2"].status.startswith("DOWN"),
                 timeout=15)
        down_after = time.monotonic() - killed_at
        left_alone = time.monotonic()  # steady load on the one replica left: 2 s of it
        wait_for("2 s of requests on the one replica left",
                 lambda: load.count(since=left_alone) >= 2 * RATE, timeout=30)
        restarting_at = time.monotonic()
        scale.restart_replica("fraud-2")
        wait_for("HAProxy to mark fraud-2 up again",
                 lambda: show_stat(scale.stats_socket)["fraud-2"].status == "UP", timeout=30)
        back_at = time.monotonic()
        served_before = _served(second.url)
        wait_for("fraud-2 to take traffic again",
                 lambda: _served(second.url) >= served_before + 20, timeout=30)
    finally:
        load.stop()
    stats = show_stat(scale.stats_socket)
    during = load.failures(killed_at, back_at)
    report = (f"{load.count()} requests at {RATE:g}/s; {load.count(killed_at, back_at)} from "
              f"the kill to fraud-2 up again ({back_at - killed_at:.1f} s; marked down after "
              f"{down_after:.1f} s, restarted in {back_at - restarting_at:.1f} s): "
              f"{len(during)} failed; gateway retries {sum(s.retries for s in stats.values())}, "
              f"redispatches {sum(s.redispatches for s in stats.values())}")
    print(report)
    assert load.count(killed_at, back_at) >= RATE * 2, report
    assert during == [], f"{report}: {during[:5]}"
    assert load.failures() == [], load.failures()[:5]
    # What an operator reads: both replicas up, each sent requests.
    result = CliRunner().invoke(gateway, ["stats", "--socket", str(scale.stats_socket), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["server"]: r for r in json.loads(result.output)}
    assert {n: (r["status"], r["sessions"] > 20) for n, r in rows.items()} == {
        "fraud-1": ("UP", True), "fraud-2": ("UP", True)}


@pytest.mark.parametrize("module", ["mlplatform.gateway.haproxy", "mlplatform.gateway.stats"])
def test_doctests(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0, module
