"""The endpoints ``mlsuite bench`` drives, with request payloads taken from the data files.

Ids and transactions come from the simulated (or real) parquet files in the data folder,
read with pyarrow: the bench never imports an app. Each endpoint gets a pool of distinct
requests that the load generator cycles through, so caches see a realistic spread of
users, items and cards rather than one hot key. Transaction ids carry the generator's
``UNIQUE`` marker: the fraud service answers a repeated id from its decision log (a
client retry), which is not the scoring path under test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.bench.loadgen import UNIQUE, Target
from mlplatform.errors import MLSuiteError

__all__ = ["SERVICES", "NEEDS", "Endpoint", "endpoints_for", "pool_size"]

# "baseline-conventions" (opt-in) is the baseline plus mlsuite's HTTP conventions (JSON
# errors, request ids, metrics): between it and the baseline is what the platform costs.
# "baseline-recorded" (opt-in) adds the two Redis script calls a recorded score makes
# (claim and count, then record), with fraud.score's transactions and no scoring: the
# floor under fraud.score.
SERVICES = ("baseline", "baseline-conventions", "baseline-recorded", "recommender", "fraud",
            "graphql")
# What GraphQL needs running behind it (its resolvers call these over HTTP).
NEEDS = {"graphql": ("recommender", "fraud")}
EVENT_MIX = (("view", 0.80), ("add_to_cart", 0.15), ("purchase", 0.05))


@dataclass(frozen=True)
class Endpoint:
    """One endpoint under test: what it is, which service serves it, and its requests."""

    name: str  # short key used in the JSON report, e.g. "recommender.recommendations"
    service: str
    method: str
    route: str  # for people: "GET /v1/users/<id>/recommendations?n=10"
    unit: str  # what items/s counts: "requests", "users", "transactions"
    items_per_request: int
    requests: tuple[tuple[str, bytes | None], ...]  # (path, body)

    def target(self, host: str, port: int, headers: Mapping[str, str] | None = None) -> Target:
        return Target.of(self.name, host, port, self.method, self.requests,
                         self.items_per_request, headers)


def pool_size(n: int) -> int:
    """How many distinct requests to build from ``n`` available rows (at most 4,000)."""
    return max(1, min(n, 4000))


def endpoints_for(services: Sequence[str], data_dir: Path, *, batch_size: int = 100,
                  seed: int = 42) -> list[Endpoint]:
    """The endpoints of ``services``, in the order they are benchmarked."""
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise MLSuiteError(f"unknown service {unknown[0]!r} to bench; expected some of "
                           f"{', '.join(SERVICES)}")
    rng = random.Random(seed)
    out: list[Endpoint] = []
    for service in SERVICES:  # a fixed order: the baseline first, it is the reference
        if service not in services:
            continue
        if service == "baseline":
            out.append(Endpoint("baseline.ping", "baseline", "GET", "GET /ping", "requests", 1,
                                (("/ping", None),)))
        elif service == "baseline-conventions":
            out.append(Endpoint("conventions.ping", service, "GET", "GET /v1/ping (conventions)",
                                "requests", 1, (("/v1/ping", None),)))
        elif service == "baseline-recorded":
            out += _recorded(Path(data_dir) / "payments", batch_size)
        elif service == "recommender":
            out += _recommender(Path(data_dir) / "shop", rng, batch_size)
        elif service == "fraud":
            out += _fraud(Path(data_dir) / "payments", rng, batch_size)
        else:
            out += _graphql(Path(data_dir), rng)
    return out


def _column(path: Path, column: str) -> list[Any]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise MLSuiteError(f"no {path.name} in {path.parent}: simulate the data first "
                           f"(`mlsuite simulate`)")
    return pq.read_table(path, columns=[column]).column(column).to_pylist()  # type: ignore[no-any-return]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _recommender(shop: Path, rng: random.Random, batch_size: int) -> list[Endpoint]:
    users = _column(shop / "users.parquet", "user_id")
    items = _column(shop / "items.parquet", "item_id")
    rng.shuffle(users)
    rng.shuffle(items)
    some_users = users[:pool_size(len(users))]
    some_items = items[:pool_size(len(items))]
    kinds = [k for k, _ in EVENT_MIX]
    weights = [w for _, w in EVENT_MIX]
    batches = [[users[(i * batch_size + j) % len(users)] for j in range(batch_size)]
               for i in range(pool_size(max(1, len(users) // batch_size)))]
    events = [{"user_id": rng.choice(users), "item_id": rng.choice(items),
               "event_type": rng.choices(kinds, weights)[0]} for _ in range(4000)]
    return [
        Endpoint("recommender.recommendations", "recommender", "GET",
                 "GET /v1/users/<id>/recommendations?n=10", "requests", 1,
                 tuple((f"/v1/users/{u}/recommendations?n=10", None) for u in some_users)),
        Endpoint("recommender.batch", "recommender", "POST",
                 f"POST /v1/recommendations/batch ({batch_size} users)", "users", batch_size,
                 tuple(("/v1/recommendations/batch", _json({"user_ids": b, "n": 10}))
                       for b in batches)),
        Endpoint("recommender.similar", "recommender", "GET",
                 "GET /v1/items/<id>/similar?n=10", "requests", 1,
                 tuple((f"/v1/items/{i}/similar?n=10", None) for i in some_items)),
        # Last: events grow users' live histories, which the endpoints above read.
        Endpoint("recommender.events", "recommender", "POST", "POST /v1/events (1 event)",
                 "requests", 1, tuple(("/v1/events", _json(e)) for e in events)),
    ]


TX_FIELDS = ("card_id", "merchant_id", "amount", "currency", "country", "channel", "device_id")
# Distinct transactions in the fraud pools: more than a 10 s measurement sends at the
# single endpoint, a few cycles of the batch one (the simulated month holds 150,000).
FRAUD_POOL = 30_000


def _transactions(payments: Path, n: int) -> list[dict[str, Any]]:
    """The latest ``n`` transactions of the file, in time order, moved so that the last
    one happens now: each card, device and merchant arrives with the history and the
    gaps the file gave it (most cards a transaction or two a day, a few in bursts).

    Stamping every transaction "now" (as the bench did until 2026-12-07) made the pool a
    card-testing attack on every card at once: as the generator cycled the pool, each
    card piled up dozens of transactions at one instant, and the velocity windows, not
    the service, set the figures. A cycle still repeats the pool at the same times, so
    the pool is made larger than a measurement sends where the file allows.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = payments / "transactions.parquet"
    if not path.is_file():
        raise MLSuiteError(f"no transactions.parquet in {payments}: simulate the data first "
                           f"(`mlsuite simulate`)")
    table = pq.read_table(path, columns=["timestamp", *TX_FIELDS])
    table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
    table = table.slice(max(0, table.num_rows - n))
    stamps = [t.timestamp() for t in table.column("timestamp").to_pylist()]
    shift = datetime.now(UTC).timestamp() - (stamps[-1] if stamps else 0.0)
    rows = table.select(list(TX_FIELDS)).to_pylist()
    return [{"timestamp": datetime.fromtimestamp(ts + shift, UTC).strftime(
                 "%Y-%m-%dT%H:%M:%S.%fZ"),
             **{k: v for k, v in row.items() if v is not None}}
            for ts, row in zip(stamps, rows)]


def _singles(txs: list[dict[str, Any]], path: str) -> tuple[tuple[str, bytes], ...]:
    """One request per transaction of the pool, each with an id of its own."""
    return tuple((path, _json({"transaction_id": f"bench-{UNIQUE}", **t})) for t in txs)


def _batches(txs: list[dict[str, Any]], path: str, batch_size: int
             ) -> tuple[tuple[str, bytes], ...]:
    """The pool in batches of ``batch_size``, each transaction with an id of its own."""
    out = []
    for b in range(max(1, len(txs) // batch_size)):
        chunk = [{"transaction_id": f"bench-{UNIQUE}-{k}", **txs[(b * batch_size + k) % len(txs)]}
                 for k in range(batch_size)]
        out.append((path, _json({"transactions": chunk})))
    return tuple(out)


def _recorded(payments: Path, batch_size: int) -> list[Endpoint]:
    txs = _transactions(payments, FRAUD_POOL)
    return [
        Endpoint("recorded.record", "baseline-recorded", "POST",
                 "POST /v1/record (claim + count, record: two Redis scripts)", "requests", 1,
                 _singles(txs, "/v1/record")),
        Endpoint("recorded.batch", "baseline-recorded", "POST",
                 f"POST /v1/record/batch ({batch_size} transactions)", "transactions",
                 batch_size, _batches(txs, "/v1/record/batch", batch_size)),
    ]


def _fraud(payments: Path, rng: random.Random, batch_size: int) -> list[Endpoint]:
    txs = _transactions(payments, FRAUD_POOL)
    singles = _singles(txs, "/v1/transactions/score")
    batches = _batches(txs, "/v1/transactions/score/batch", batch_size)
    return [
        Endpoint("fraud.score", "fraud", "POST", "POST /v1/transactions/score", "requests", 1,
                 singles),
        Endpoint("fraud.batch", "fraud", "POST",
                 f"POST /v1/transactions/score/batch ({batch_size} transactions)",
                 "transactions", batch_size, batches),
    ]


# The same work as recommender.recommendations and fraud.score, asked through GraphQL:
# the report sets each row's ratio to its REST twin (``report.REST_TWIN``).
_GQL_RECOMMEND = ("query R($u: ID!) { user(id: $u) { recommendations(n: 10) "
                  "{ model items { itemId score } } } }")
_GQL_SCORE = ("mutation S($t: TransactionInput!) { scoreTransaction(transaction: $t) "
              "{ transactionId score decision reasons { code text } modelVersion } }")
_CAMEL = {"card_id": "cardId", "merchant_id": "merchantId", "device_id": "deviceId"}


def _graphql(data_dir: Path, rng: random.Random) -> list[Endpoint]:
    users = _column(data_dir / "shop" / "users.parquet", "user_id")
    rng.shuffle(users)
    txs = _transactions(data_dir / "payments", 4000)
    recommend = tuple(("/graphql", _json({"query": _GQL_RECOMMEND, "variables": {"u": u}}))
                      for u in users[:pool_size(len(users))])
    score = tuple(("/graphql", _json({"query": _GQL_SCORE, "variables": {"t": {
        "transactionId": f"bench-gql-{UNIQUE}", **{_CAMEL.get(k, k): v for k, v in t.items()}}}}))
        for t in txs)
    return [
        Endpoint("graphql.recommendations", "graphql", "POST",
                 "POST /graphql user.recommendations(n: 10)", "requests", 1, recommend),
        Endpoint("graphql.score", "graphql", "POST", "POST /graphql scoreTransaction",
                 "requests", 1, score),
    ]
