"""``mlsuite recommender bench``: how fast recommendations are, in-process and over HTTP.

Measured on the production model of the data folder (trained first if there is none),
with a real Redis (``MLSUITE_REDIS_URL`` or the embedded server) and random known users:

- in-process: the engine alone (``Engine.recommend``: Redis read, fold-in, scoring,
  filters) and the whole WSGI app through Flask's test client, one request at a time;
  the batch path as users/s;
- over HTTP: the service under its production server (granian, ``--workers``) on a free
  port, driven by ``mlplatform.bench.loadgen``: one connection (latency without
  queueing), then enough connections to saturate it (throughput, latency under load),
  then batch requests (users/s); and a bare Flask endpoint under the same server and
  load, the reference the service's req/s is compared with.

Every latency is kept, so p50/p99 are exact. The JSON report is printed last.
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable
from typing import Any

from mlplatform.bench.loadgen import Target, latency_summary, run_load
from mlplatform.config import Settings
from mlplatform.redisdb import EmbeddedRedis

__all__ = ["format_report", "run_bench"]

N = 10  # items per recommendation list, as a product page asks


def _timed(calls: int, fn: Callable[[int], object]) -> dict[str, float]:
    latencies = array("q")
    for i in range(calls):
        start = time.perf_counter_ns()
        fn(i)
        latencies.append(time.perf_counter_ns() - start)
    summary = latency_summary(array("q", sorted(latencies)))
    total = sum(latencies) / 1e9
    return {**summary, "requests": calls, "requests_per_s": round(calls / total, 1)}


def run_bench(settings: Settings, *, n_requests: int = 2000, batch_size: int = 500,
              http: bool = True, workers: int | None = None, duration: float = 5.0,
              progress: bool = True) -> dict[str, Any]:
    """Run every measurement; the report as a JSON-ready dict."""
    from recommender.app import create_app
    from recommender.cli import ensure_model

    say: Callable[[str], None] = (lambda m: print(f"bench: {m}", flush=True)) if progress \
        else (lambda m: None)
    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir)
    if embedded is not None:
        settings = settings.with_(redis_url=embedded.start())
    try:
        ensure_model(settings)
        # What a running worker keeps published: the catalogue and live popularity.
        from mlplatform.redisdb import connect
        from recommender.worker import publish_snapshots

        publish_snapshots(settings, connect(str(settings.redis_url)))
        app = create_app(settings)
        engine = app.extensions["recommender.engine"]
        serving = engine.current()
        rng = random.Random(settings.seed)
        known = [str(u) for u in serving.bundle.users.ids.tolist()]
        users = [rng.choice(known) for _ in range(max(n_requests, batch_size))]
        report: dict[str, Any] = {
            "model": serving.version.label, "variants": serving.bundle.variants,
            "catalogue_size": len(serving.bundle.items), "item_features": serving.items.source,
            "n": N,
        }

        say("in-process: engine")
        for u in users[:200]:  # warm caches and code paths
            engine.recommend([u], n=N)
        engine_stats = _timed(n_requests, lambda i: engine.recommend([users[i]], n=N))
        say("in-process: WSGI app (Flask test client)")
        client = app.test_client()
        wsgi_stats = _timed(n_requests, lambda i: client.get(
            f"/v1/users/{users[i]}/recommendations?n={N}"))
        say(f"in-process: batches of {batch_size} users")
        rounds = max(3, n_requests // batch_size)
        span = len(users) - batch_size + 1
        batch = _timed(rounds, lambda i: engine.recommend(
            users[(i * batch_size) % span:][:batch_size], n=N))
        users_per_s = batch_size * batch["requests_per_s"]
        report["in_process"] = {
            "engine": engine_stats,
            "wsgi": wsgi_stats,
            "batch": {"batch_size": batch_size, "p50_ms": batch["p50_ms"],
                      "p99_ms": batch["p99_ms"], "users_per_s": round(users_per_s, 1)},
        }
        engine.stop()
        if http:
            report["http"] = _bench_http(settings, users, batch_size=min(batch_size, 100),
                                         workers=workers or settings.workers,
                                         duration=duration, say=say)
        return report
    finally:
        if embedded is not None:
            embedded.stop()


def _bench_http(settings: Settings, users: list[str], *, batch_size: int, workers: int,
                duration: float, say: Callable[[str], None]) -> dict[str, Any]:
    import json

    from mlplatform import serving
    from mlplatform.redisdb import free_port

    port = free_port(settings.host)
    proc = serving.spawn("recommender", settings, port=port, workers=workers,
                         server=settings.server, redis_url=settings.redis_url or "")
    try:
        serving.wait_ready(f"http://{settings.host}:{port}", timeout=120, proc=proc)
        single = Target.of("recommendations", settings.host, port, "GET",
                           [(f"/v1/users/{u}/recommendations?n={N}", None) for u in users[:1000]])
        bodies = [("/v1/recommendations/batch",
                   json.dumps({"user_ids": users[i:i + batch_size], "n": N}).encode())
                  for i in range(0, max(len(users) - batch_size, 1), batch_size)][:50]
        batch = Target.of("batch", settings.host, port, "POST", bodies,
                          items_per_request=batch_size)
        out: dict[str, Any] = {"server": settings.server, "workers": workers}
        say(f"http: 1 connection, {duration:.0f}s")
        out["one_connection"] = run_load(single, connections=1, duration=duration,
                                         warmup=1.0).summary()
        say(f"http: {4 * workers} connections (saturated), {duration:.0f}s")
        out["saturated"] = run_load(single, connections=4 * workers, duration=duration,
                                    warmup=1.0).summary()
        say(f"http: batches of {batch_size} users, {2 * workers} connections, {duration:.0f}s")
        out["batch"] = run_load(batch, connections=2 * workers, duration=duration,
                                warmup=1.0).summary()
    finally:
        serving.stop_process(proc)
    # The reference the service is held to: a bare Flask endpoint, same server, same load.
    port = free_port(settings.host)
    proc = serving.spawn("baseline", settings, port=port, workers=workers,
                         server=settings.server, redis_url=settings.redis_url or "")
    try:
        # The bare app has no /readyz: its one endpoint answering is readiness.
        serving.wait_ready(f"http://{settings.host}:{port}", timeout=60, proc=proc, path="/ping")
        say(f"http: bare Flask /ping, {4 * workers} connections, {duration:.0f}s")
        bare = Target.of("bare", settings.host, port, "GET", [("/ping", None)])
        out["bare_flask"] = run_load(bare, connections=4 * workers, duration=duration,
                                     warmup=1.0).summary()
    finally:
        serving.stop_process(proc)
    bare_rps = out["bare_flask"]["requests_per_s"]
    out["share_of_bare_flask"] = round(out["saturated"]["requests_per_s"] / bare_rps, 3) \
        if bare_rps else None
    return out


def format_report(report: dict[str, Any]) -> str:
    """The figures that matter, as a few aligned lines."""
    head = (f"model {report['model']} ({', '.join(report['variants'])}), "
            f"{report['catalogue_size']} items, item features from {report['item_features']}, "
            f"n={report['n']}")
    lines = [head]
    row = "{:<36}{:>10}{:>10}{:>12}"
    lines.append(row.format("", "p50 ms", "p99 ms", "req/s"))
    ip = report["in_process"]
    for name, key in (("in-process engine", "engine"), ("in-process WSGI (test client)", "wsgi")):
        s = ip[key]
        lines.append(row.format(name, s["p50_ms"], s["p99_ms"], s["requests_per_s"]))
    b = ip["batch"]
    lines.append(row.format(f"in-process batch of {b['batch_size']}", b["p50_ms"], b["p99_ms"],
                            f"{b['users_per_s']:.0f} u/s"))
    for name, key in (("http, 1 connection", "one_connection"), ("http, saturated", "saturated"),
                      ("http batch", "batch"), ("http bare Flask /ping", "bare_flask")):
        s = report.get("http", {}).get(key)
        if s:
            rate = f"{s['items_per_s']:.0f} u/s" if key == "batch" else s["requests_per_s"]
            lines.append(row.format(f"{name} ({s['connections']} conn)", s["p50_ms"], s["p99_ms"],
                                    rate))
    share = report.get("http", {}).get("share_of_bare_flask")
    if share is not None:
        lines.append(f"saturated req/s as a share of bare Flask's: {share:.0%}")
    return "\n".join(lines)
