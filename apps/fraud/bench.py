"""``mlsuite fraud bench``: scoring latency and throughput, in process and over HTTP.

Measures, on real simulated transactions (unique ids per run):

- ``inproc.service``: ``FraudService.score`` for one transaction (no Flask);
- ``inproc.single`` / ``inproc.batch``: the Flask app through its test client;
- ``http.single``: one client, keep-alive, sequential requests to a real server (the
  production WSGI server, several workers) on a free port: latency;
- ``http.single_concurrent``: several client threads: throughput;
- ``http.batch``: ``/score/batch`` requests: transactions per second.

Everything runs on the configured Redis (or an embedded one) under a private key prefix
that is deleted afterwards, so a bench never touches the service's velocity state,
decision log or label stream. The production model is trained first if there is none.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from mlplatform.config import Settings

__all__ = ["run_bench", "print_report", "summarise"]

T = TypeVar("T")


def summarise(latencies: Sequence[float], elapsed: float, per_request: int = 1) -> dict[str, Any]:
    """p50/p99/mean (ms) of ``latencies`` (s) and throughput over ``elapsed`` seconds.

    >>> summarise([0.001] * 99 + [0.01], 0.109)["p99_ms"]
    1.09
    """
    lat = np.asarray(latencies, dtype=float) * 1000.0
    n = len(lat)
    return {
        "requests": n,
        "transactions": n * per_request,
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mean_ms": round(float(lat.mean()), 3),
        "requests_per_s": round(n / elapsed, 1),
        "transactions_per_s": round(n * per_request / elapsed, 1),
    }


def _timed(call: Callable[[T], Any], items: Sequence[T]) -> dict[str, Any]:
    """``call(item)`` for each item, one after the other, timing each."""
    latencies = []
    start = time.perf_counter()
    for item in items:
        t = time.perf_counter()
        call(item)
        latencies.append(time.perf_counter() - t)
    return summarise(latencies, time.perf_counter() - start)


def _bodies(settings: Settings, n: int, run: str) -> list[dict[str, Any]]:
    """``n`` transactions of the simulated stream (cycled), with ids unique to this run."""
    from fraud.schema import read_transactions

    frame = read_transactions(settings.data_dir / "payments" / "transactions.parquet")
    frame = frame.iloc[-min(len(frame), max(n, 1000)):]  # the latest: profiles are warm
    columns = ["card_id", "merchant_id", "amount", "currency", "country", "channel",
               "device_id"]
    rows = frame[columns].to_dict("records")
    stamps = frame["ts"].tolist()
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        if row["device_id"] is None:
            del row["device_id"]
        row["transaction_id"] = f"bench-{run}-{i}"
        row["timestamp"] = stamps[i % len(stamps)] + 86400.0 * 40 * (i // len(rows))
        out.append(row)
    return out


def run_bench(settings: Settings, *, n_single: int = 2000, batch_size: int = 1000,
              batches: int = 10, http: bool = True, server: str = "granian",
              workers: int = 2, concurrency: int = 4) -> dict[str, Any]:
    from fraud.cli import ensure_trained
    from fraud.config import FraudConfig
    from mlplatform.redisdb import EmbeddedRedis, connect

    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir)
    redis_url = settings.redis_url or embedded.start()  # type: ignore[union-attr]
    settings = settings.with_(redis_url=redis_url)
    run = uuid.uuid4().hex[:8]
    prefix = f"fraudbench:{run}:"
    client = connect(redis_url)
    try:
        _ensure_features(settings)
        ensure_trained(settings, FraudConfig.from_env())
        bodies = _bodies(settings, 200 + 100 * workers + 4 * n_single + 2 * batch_size * batches,
                         run)
        take = _Taker(bodies)
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            "settings": {"n_single": n_single, "batch_size": batch_size, "batches": batches,
                         "server": server, "workers": workers, "concurrency": concurrency},
        }
        report["inproc"] = _inproc(settings, prefix, take, n_single, batch_size, batches)
        report["model"] = report["inproc"].pop("model")
        if http:
            report["http"] = _http(settings, prefix, take, n_single, batch_size, batches,
                                   server, workers, concurrency)
        return report
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.unlink(key)
        client.close()
        if embedded is not None:
            embedded.stop()


class _Taker:
    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self._bodies, self._i, self._lock = bodies, 0, threading.Lock()

    def __call__(self, n: int = 1) -> list[dict[str, Any]]:
        with self._lock:
            out = self._bodies[self._i:self._i + n]
            self._i += n
        if len(out) < n:
            raise RuntimeError("bench ran out of prepared transactions")
        return out


def _ensure_features(settings: Settings) -> None:
    from mlplatform.errors import MLSuiteError
    from mlplatform.features import FeatureStoreAdapter

    store = FeatureStoreAdapter.from_settings(settings)
    try:
        store.ping()
    except MLSuiteError:
        store.apply()
        store.materialize()


def _inproc(settings: Settings, prefix: str, take: _Taker, n: int, batch_size: int,
            batches: int) -> dict[str, Any]:
    from contextlib import ExitStack

    from fraud.app import create_app, get_service
    from fraud.schema import parse_transaction
    from mlplatform.redisdb import connect
    from mlplatform.security.keys import run_key

    app = create_app(settings, {"FRAUD": {"key_prefix": prefix}})
    service = get_service(app)
    with ExitStack() as cleanup:
        cleanup.callback(service.close)
        redis_client = connect(settings.redis_url or "")
        cleanup.callback(redis_client.close)
        key = cleanup.enter_context(run_key(redis_client, "mlsuite fraud bench",
                                            enabled=settings.auth))
        client = app.test_client()
        if key:  # as a real client sends it: the key check is part of the cost
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        for body in take(200):  # warm up: model load, profile cache, code paths
            client.post("/v1/transactions/score", json=body)
        extra = service.config.extra_fields
        txs = [parse_transaction(b, extra_fields=extra) for b in take(n)]
        out: dict[str, Any] = {"model": service.model.state().label}
        out["service"] = _timed(lambda t: service.score([t]), txs)
        out["single"] = _timed(
            lambda b: _ok(client.post("/v1/transactions/score", json=b)), take(n))
        batch = _timed(
            lambda b: _ok(client.post("/v1/transactions/score/batch", json={"transactions": b})),
            [take(batch_size) for _ in range(batches)])
        out["batch"] = _per_batch(batch, batch_size)
        return out


def _per_batch(summary: dict[str, Any], size: int) -> dict[str, Any]:
    summary["transactions"] = summary["requests"] * size
    summary["transactions_per_s"] = round(summary["requests_per_s"] * size, 1)
    summary["batch_size"] = size
    return summary


def _ok(response: Any) -> None:
    status = getattr(response, "status_code", 200)
    if status != 200:
        body = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
        raise RuntimeError(f"bench request failed with {status}: {body[:300]}")


def _http(settings: Settings, prefix: str, take: _Taker, n: int, batch_size: int, batches: int,
          server: str, workers: int, concurrency: int) -> dict[str, Any]:
    import requests

    from mlplatform import serving
    from mlplatform.redisdb import connect, free_port
    from mlplatform.security.keys import bearer, run_key

    port = free_port(settings.host)
    os.environ["MLSUITE_FRAUD_KEY_PREFIX"] = prefix  # the server inherits it
    try:
        proc = serving.spawn("fraud", settings, port=port, workers=workers, server=server,
                             redis_url=settings.redis_url or "")
    finally:
        del os.environ["MLSUITE_FRAUD_KEY_PREFIX"]
    url = f"http://{settings.host}:{port}"
    client = connect(settings.redis_url or "")
    try:
        with run_key(client, "mlsuite fraud bench", enabled=settings.auth) as key:
            serving.wait_ready(url, timeout=120, proc=proc)
            session = requests.Session()
            session.headers.update(bearer(key))
            score = f"{url}/v1/transactions/score"
            for body in take(100 * workers):  # each worker loads and warms up
                _ok(session.post(score, json=body, timeout=30))
            out: dict[str, Any] = {"url": url}
            out["single"] = _timed(lambda b: _ok(session.post(score, json=b, timeout=30)),
                                   take(n))
            out["single_concurrent"] = _concurrent(score, take, n, concurrency, bearer(key))
            batch_url = f"{url}/v1/transactions/score/batch"
            batch = _timed(
                lambda b: _ok(session.post(batch_url, json={"transactions": b}, timeout=60)),
                [take(batch_size) for _ in range(batches)])
            out["batch"] = _per_batch(batch, batch_size)
            return out
    finally:
        serving.stop_process(proc)
        client.close()


def _concurrent(url: str, take: _Taker, n: int, threads: int,
                headers: dict[str, str]) -> dict[str, Any]:
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    per_thread = max(1, n // threads)
    work = [take(per_thread) for _ in range(threads)]

    def client(bodies: list[dict[str, Any]]) -> None:
        session = requests.Session()
        session.headers.update(headers)
        mine = []
        for body in bodies:
            t = time.perf_counter()
            response = session.post(url, json=body, timeout=30)
            mine.append(time.perf_counter() - t)
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
        latencies.extend(mine)

    pool = [threading.Thread(target=client, args=(w,)) for w in work]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    summary = summarise(latencies, time.perf_counter() - start)
    summary["threads"] = threads
    summary["errors"] = len(errors)
    if errors:
        summary["first_error"] = errors[0]
    return summary


def print_report(report: dict[str, Any]) -> None:
    import click

    click.echo(f"fraud bench: model {report['model']}, {report['machine']['cpus']} cpus, "
               f"load average {report['machine']['load_average']}")
    header = f"{'measurement':<26}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}{'tx/s':>11}"
    click.echo(header)
    for section in ("inproc", "http"):
        for name, m in report.get(section, {}).items():
            if not isinstance(m, dict):
                continue
            click.echo(f"{section + '.' + name:<26}{m['p50_ms']:>9.3f}{m['p99_ms']:>9.3f}"
                       f"{m['requests_per_s']:>10.1f}{m['transactions_per_s']:>11.1f}")
