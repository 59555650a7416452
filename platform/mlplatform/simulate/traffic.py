"""Simulated shoppers and payments against the running services, with the ground truth.

``mlsuite simulate traffic`` drives the real services over HTTP (never by importing
them) for a few minutes and stops by itself:

- **Shoppers** from the simulated shop's hidden world (``ShopWorld``, ``world.npz`` in
  the data folder) arrive at ``rate`` sessions per second (Poisson). A shopper asks the
  recommender for a list (``GET /v1/users/<id>/recommendations``), views what it shows,
  adds each shown item to the cart with the world's probability ``CART_MAX *
  relevance`` (0 when out of stock), buys a carted item with ``BUY_GIVEN_CART``, and
  posts those events (``POST /v1/events``). The truth per variant (the variant the
  response names) is what the shoppers did, plus what they were expected to do given
  their true tastes: the conversion the experiment report should measure.
- **Payments** (optional, ``payments_rate`` per second): the payment simulator's stream
  (``payments/transactions.parquet``: its cards, merchants and labelled fraud) replayed
  in order from a random point, happening now with fresh ids, scored with
  ``POST /v1/transactions/score``; their labels (every fraud, ``LABEL_SHARE`` of the
  others) are posted to ``POST /v1/labels`` a few seconds later, as chargebacks and
  analysts do, for the fraud service's learning and rollouts.

At the end the experiment report is read back from the recommender
(``GET /v1/experiments/<name>``, once its worker has caught up) and returned with the
truth, so measured and true lifts sit side by side.
"""

from __future__ import annotations

import heapq
import http.client
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from mlplatform.errors import MLSuiteError
from mlplatform.simulate._common import progress_bar
from mlplatform.simulate.shopworld import BUY_GIVEN_CART, ShopWorld

__all__ = ["LABEL_SHARE", "TrafficConfig", "TrafficResult", "format_result", "run_traffic"]

log = logging.getLogger(__name__)

LABEL_SHARE = 0.2  # legitimate transactions an analyst confirms (every fraud is charged back)
LABEL_DELAY = (2.0, 6.0)  # seconds from score to label (days in life; seconds here)
TX_FIELDS = ("card_id", "merchant_id", "amount", "currency", "country", "channel", "device_id",
             "is_fraud")


@dataclass(frozen=True)
class TrafficConfig:
    """What to send where, how fast and for how long."""

    recommender_url: str
    data_dir: Path
    minutes: float = 1.0
    rate: float = 10.0  # shopper sessions per second
    fraud_url: str | None = None  # None: no payments
    payments_rate: float = 5.0  # transactions per second
    n: int = 10  # items per recommendation list
    threads: int = 8
    seed: int = 42
    progress: bool = True
    api_key: str | None = None  # sent as "Authorization: Bearer <key>"


class _Http:
    """A keep-alive HTTP/1.1 connection per thread to one base URL (stdlib only)."""

    def __init__(self, base_url: str, timeout: float = 10.0, api_key: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise MLSuiteError(f"service URL must look like http://host:port, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or None); one retry on a dropped keep-alive connection."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        headers.update(self.auth)
        for attempt in (0, 1):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self._local.conn = conn
            try:
                conn.request(method, self.prefix + path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, None
        raise AssertionError("unreachable")


@dataclass
class VariantTruth:
    """What the shoppers of one variant did, and what they were expected to do."""

    sessions: int = 0
    users: set[str] = field(default_factory=set)
    converted: set[str] = field(default_factory=set)  # carted at least once
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    # per user: probability of no cart in any session so far (true tastes)
    no_cart: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        users = len(self.users)
        expected = (sum(1.0 - q for q in self.no_cart.values()) / users) if users else None
        return {"sessions": self.sessions, "users": users, "converted": len(self.converted),
                "conversion_rate": round(len(self.converted) / users, 6) if users else None,
                "expected_conversion_rate": None if expected is None else round(expected, 6),
                "carts": self.carts, "purchases": self.purchases,
                "revenue": round(self.revenue, 2),
                "revenue_per_user": round(self.revenue / users, 4) if users else None}


@dataclass
class TrafficResult:
    """The run: shoppers' truth per variant, payments, errors, the measured report."""

    seconds: float = 0.0
    sessions: int = 0
    truth: dict[str, VariantTruth] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # "GET recommendations 503" -> n
    payments: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None
    measured: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        truth = {v: t.to_json() for v, t in sorted(self.truth.items())}
        control = (self.measured or {}).get("control")
        if control in truth and truth[control]["expected_conversion_rate"]:
            base = truth[control]["expected_conversion_rate"]
            for v, t in truth.items():
                rate = t["expected_conversion_rate"]
                t["true_lift"] = None if v == control or rate is None else round(
                    rate / base - 1, 6)
        return {"seconds": round(self.seconds, 1), "sessions": self.sessions,
                "truth": truth, "errors": dict(self.errors), "payments": self.payments,
                "experiment": self.experiment, "measured": self.measured}


class Shoppers:
    """Shopper sessions from the world's true tastes and purchase model."""

    def __init__(self, world: ShopWorld, prices: dict[str, float], http: _Http, n: int,
                 result: TrafficResult, lock: threading.Lock) -> None:
        self.world, self.prices, self.http, self.n = world, prices, http, n
        self.result, self.lock = result, lock
        self.users = [str(u) for u in world.user_ids.tolist()]

    def session(self, user: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        status, body = self.http.request(
            "GET", f"/v1/users/{quote(user)}/recommendations?n={self.n}")
        if status != 200 or not isinstance(body, dict):
            self._error(f"GET recommendations {status}")
            return
        items = [str(i["item_id"]) for i in body.get("items", [])]
        variant = str(body.get("variant"))
        carts: list[str] = []
        buys: list[str] = []
        p_cart = np.zeros(0)
        if items:
            # The world's chance of a purchase once shown, over that of a cart's purchase:
            # CART_MAX * relevance, 0 out of stock.
            p_cart = self.world.purchase_probability(user, items) / BUY_GIVEN_CART
            carted = rng.random(len(items)) < p_cart
            bought = carted & (rng.random(len(items)) < BUY_GIVEN_CART)
            carts = [i for i, c in zip(items, carted, strict=True) if c]
            buys = [i for i, b in zip(items, bought, strict=True) if b]
            events = ([{"user_id": user, "item_id": i, "event_type": "view"} for i in items]
                      + [{"user_id": user, "item_id": i, "event_type": "add_to_cart"}
                         for i in carts]
                      + [{"user_id": user, "item_id": i, "event_type": "purchase"}
                         for i in buys])
            status, _ = self.http.request("POST", "/v1/events", {"events": events})
            if status != 201:
                self._error(f"POST events {status}")
                return
        with self.lock:
            t = self.result.truth.setdefault(variant, VariantTruth())
            t.sessions += 1
            t.users.add(user)
            t.no_cart[user] = t.no_cart.get(user, 1.0) * float(np.prod(1.0 - p_cart))
            if carts:
                t.converted.add(user)
            t.carts += len(carts)
            t.purchases += len(buys)
            t.revenue += sum(self.prices.get(i, 0.0) for i in buys)
            self.result.sessions += 1

    def _error(self, what: str) -> None:
        with self.lock:
            self.result.errors[what] = self.result.errors.get(what, 0) + 1


class Payments:
    """Transactions modelled on the simulated stream, scored now, labelled later."""

    def __init__(self, rows: list[dict[str, Any]], http: _Http, result: TrafficResult,
                 lock: threading.Lock) -> None:
        self.rows, self.http, self.result, self.lock = rows, http, result, lock
        self.cursor = 0
        self.run_id = uuid.uuid4().hex[:8]
        self.pending: list[tuple[float, str, bool]] = []  # (due, transaction id, is_fraud)
        self.stats: dict[str, Any] = {"scored": 0, "labels": 0, "decisions": {},
                                      "fraud_sent": 0}

    def pay(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with self.lock:  # in stream order: a fraud burst arrives as a burst
            row = dict(self.rows[self.cursor % len(self.rows)])
            self.cursor += 1
        is_fraud = bool(row.pop("is_fraud"))
        tx_id = f"sim-{self.run_id}-{int(rng.integers(1 << 62)):016x}"
        body = {"transaction_id": tx_id, "timestamp": _now_iso(),
                **{k: v for k, v in row.items() if v is not None}}
        status, answer = self.http.request("POST", "/v1/transactions/score", body)
        with self.lock:
            if status != 200 or not isinstance(answer, dict):
                key = f"POST transactions/score {status}"
                self.result.errors[key] = self.result.errors.get(key, 0) + 1
                return
            self.stats["scored"] += 1
            self.stats["fraud_sent"] += int(is_fraud)
            decisions = self.stats["decisions"]
            decision = str(answer.get("decision"))
            decisions[decision] = decisions.get(decision, 0) + 1
            if is_fraud or rng.random() < LABEL_SHARE:
                due = time.monotonic() + float(rng.uniform(*LABEL_DELAY))
                heapq.heappush(self.pending, (due, tx_id, is_fraud))

    def post_due(self, everything: bool = False) -> None:
        """Post the labels that have come due (all of them when ``everything``)."""
        now = time.monotonic()
        with self.lock:
            due: list[dict[str, Any]] = []
            while self.pending and (everything or self.pending[0][0] <= now) and len(due) < 500:
                _, tx_id, is_fraud = heapq.heappop(self.pending)
                due.append({"transaction_id": tx_id, "is_fraud": is_fraud,
                            "labelled_at": _now_iso()})
        if not due:
            return
        status, _ = self.http.request("POST", "/v1/labels", {"labels": due})
        with self.lock:
            if status == 202:
                self.stats["labels"] += len(due)
            else:
                key = f"POST labels {status}"
                self.result.errors[key] = self.result.errors.get(key, 0) + 1


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _transactions(data_dir: Path, seed: int, n: int = 20_000) -> list[dict[str, Any]]:
    """``n`` consecutive transactions of the simulated stream from a random point: replayed
    in order (time compressed), card-testing bursts and takeovers keep their shape."""
    import pyarrow.parquet as pq

    path = data_dir / "payments" / "transactions.parquet"
    if not path.is_file():
        raise MLSuiteError(f"{path} not found: payments traffic is modelled on the simulated "
                           "stream (`mlsuite simulate` writes it)")
    table = pq.read_table(path, columns=list(TX_FIELDS))
    start = int(np.random.default_rng(seed).integers(max(1, table.num_rows - n)))
    return table.slice(start, n).to_pylist()  # type: ignore[no-any-return]


def _prices(data_dir: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "shop" / "items.parquet", columns=["item_id", "price"])
    return {str(i): float(p) for i, p in zip(table.column("item_id").to_pylist(),
                                             table.column("price").to_pylist(), strict=True)
            if p is not None}


def _check(http: _Http, name: str) -> None:
    try:
        status, _ = http.request("GET", "/readyz")
    except OSError as exc:
        raise MLSuiteError(f"{name} at http://{http.host}:{http.port} is not answering "
                           f"({exc}); start it (`mlsuite demo`) or pass its URL") from None
    if status != 200:
        raise MLSuiteError(f"{name} at http://{http.host}:{http.port} is not ready "
                           f"(/readyz answered {status})")


def run_traffic(config: TrafficConfig, say: Callable[[str], None] = print) -> TrafficResult:
    """Run shoppers (and payments) for ``config.minutes``, then read back the report."""
    shop_dir = config.data_dir / "shop"
    if not (shop_dir / "world.npz").is_file():
        raise MLSuiteError(f"{shop_dir / 'world.npz'} not found: the shoppers need the "
                           "simulated shop the recommender was trained on (`mlsuite simulate`)")
    world = ShopWorld.load(shop_dir)
    rec = _Http(config.recommender_url, api_key=config.api_key)
    _check(rec, "the recommender")
    result, lock = TrafficResult(), threading.Lock()
    shoppers = Shoppers(world, _prices(config.data_dir), rec, config.n, result, lock)
    payments = None
    if config.fraud_url and config.payments_rate > 0:
        fraud = _Http(config.fraud_url, api_key=config.api_key)
        _check(fraud, "the fraud service")
        payments = Payments(_transactions(config.data_dir, config.seed), fraud, result, lock)
    _, model = rec.request("GET", "/v1/model")
    experiment = ((model or {}).get("experiment") or {}).get("name")
    result.experiment = experiment
    say(f"traffic: {config.rate:g} shoppers/s"
        + (f" and {config.payments_rate:g} payments/s" if payments else "")
        + f" for {config.minutes:g} min against {config.recommender_url}"
        + (f" and {config.fraud_url}" if payments else "")
        + (f" (experiment {experiment})" if experiment else " (no experiment served)"))

    rng = np.random.default_rng(config.seed)
    seconds = config.minutes * 60
    started = time.monotonic()
    futures: list[Future[None]] = []
    shop_next = started + float(rng.exponential(1 / config.rate)) if config.rate > 0 else np.inf
    pay_next = (started + float(rng.exponential(1 / config.payments_rate))
                if payments else np.inf)
    with ThreadPoolExecutor(config.threads, thread_name_prefix="shopper") as pool, \
            progress_bar(int(round(seconds)), "simulated traffic", config.progress,
                         unit="s") as bar:
        shown = 0
        while True:
            now = time.monotonic()
            if now - started >= seconds:
                break
            if now >= shop_next:
                user = shoppers.users[int(rng.integers(len(shoppers.users)))]
                futures.append(pool.submit(shoppers.session, user, int(rng.integers(1 << 31))))
                shop_next += float(rng.exponential(1 / config.rate))
            elif now >= pay_next and payments is not None:
                futures.append(pool.submit(payments.pay, int(rng.integers(1 << 31))))
                pay_next += float(rng.exponential(1 / config.payments_rate))
            else:
                if payments is not None:
                    payments.post_due()
                elapsed = int(now - started)
                if elapsed > shown:
                    bar.update(elapsed - shown)
                    shown = elapsed
                    with lock:
                        bar.set_postfix(sessions=result.sessions,
                                        errors=sum(result.errors.values()))
                time.sleep(min(0.005, max(0.0, min(shop_next, pay_next) - now)))
            futures = [f for f in futures if not f.done()]
        bar.update(int(round(seconds)) - shown)
    result.seconds = time.monotonic() - started
    if payments is not None:
        while payments.pending:  # the last labels come due after the shoppers left
            time.sleep(0.05)
            payments.post_due(everything=time.monotonic() - started > seconds + LABEL_DELAY[1])
        result.payments = payments.stats
    if experiment:
        result.measured = _settled_report(rec, experiment)
    return result


def _settled_report(http: _Http, experiment: str, timeout: float = 20.0) -> dict[str, Any] | None:
    """The recommender's report once its worker has caught up (two equal reads)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    body: Any = None
    while time.monotonic() < deadline:
        status, body = http.request("GET", f"/v1/experiments/{quote(experiment)}")
        if status != 200 or not isinstance(body, dict):
            log.warning("experiment report unavailable (HTTP %s): %s", status, body)
            return None
        counts = {v: (d["exposures"], d.get("conversion_events")) for v, d in
                  body["variants"].items()}
        if counts == last:
            return body  # type: ignore[no-any-return]
        last = counts
        time.sleep(0.5)
    return body  # type: ignore[no-any-return]


def format_result(body: dict[str, Any]) -> str:
    """The human summary of ``TrafficResult.to_json()``: truth, measured report, payments."""
    lines = [f"{body['sessions']} shopper sessions in {body['seconds']:g} s; errors: "
             f"{body['errors'] or 'none'}",
             "true conversion per variant (shoppers' own carts; expected from true tastes):",
             f"  {'variant':<12}{'users':>7}{'conv.':>7}{'rate':>8}{'expected':>10}"
             f"{'true lift':>11}{'purchases':>11}{'rev/user':>10}"]
    for v, t in body["truth"].items():
        lift = t.get("true_lift")
        lines.append(f"  {v:<12}{t['users']:>7}{t['converted']:>7}"
                     f"{(t['conversion_rate'] or 0) * 100:>7.2f}%"
                     f"{(t['expected_conversion_rate'] or 0) * 100:>9.2f}%"
                     f"{'-' if lift is None else f'{lift * 100:+.1f}%':>11}"
                     f"{t['purchases']:>11}{t['revenue_per_user'] or 0:>10.2f}")
    if body.get("measured"):
        from mlplatform.experiments.report import format_report

        lines += ["measured by the experiment report:", format_report(body["measured"])]
    if body.get("payments"):
        p = body["payments"]
        lines.append(f"payments: {p['scored']} scored ({p['fraud_sent']} fraudulent), "
                     f"decisions {p['decisions']}, {p['labels']} labels posted")
    return "\n".join(lines)
