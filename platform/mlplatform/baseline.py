"""Baseline apps: the ceiling any Flask endpoint can reach on this machine and server.

``create_app`` is a bare Flask endpoint (no conventions, no metrics), what ``mlsuite bench``
compares the services with. ``create_conventions_app`` adds only mlsuite's HTTP
conventions (errors, request ids, metrics), to show what the conventions cost and to
test serving with several worker processes. ``create_recorded_app`` adds the least Redis
work a recorded score needs, with no model or features: the floor under ``fraud.score``.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, jsonify

from mlplatform import lifecycle
from mlplatform.config import Settings
from mlplatform.errors import BadRequest
from mlplatform.http import create_service_app, get_redis, json_body
from mlplatform.redisdb import DirectCommands, is_cluster, partition
from mlplatform.security import requires
from mlplatform.streams import partition_count, partition_tag

__all__ = ["create_app", "create_conventions_app", "create_recorded_app"]


def create_app() -> Flask:
    app = Flask("baseline")
    # Its /ping is its readiness: it names the server start, as /readyz does elsewhere, so
    # a supervisor never takes another process on the port for this one.
    answer = {"ok": True, "instance": lifecycle.instance()}

    @app.get("/ping")
    def ping():  # type: ignore[no-untyped-def]
        return jsonify(answer)

    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True, "size": len(app.json.dumps(json_body()))})

    return app


def create_conventions_app(settings: Settings | None = None) -> Flask:
    app = create_service_app("baseline", settings)

    @app.get("/v1/ping")
    @requires(None)  # the floor of the conventions: what a request costs before any logic
    def ping():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    return app


# The two round trips a recorded score cannot do without (fraud.service): claim each id
# and count it in one atomic step, then record the decisions before answering. Here the
# count is one INCR and the record the transaction's own JSON: what remains of
# fraud.score's Redis work once the velocity windows, the model, the rules and the
# reasons are gone. Both take any number of transactions, as the fraud scripts do.
# KEYS: (claim, counter) per transaction. ARGV: claim value, ttl. Reply: per transaction
# its count, or false (claimed already).
_CLAIM = """
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'EX', ARGV[2]) then
    out[#out + 1] = redis.call('INCR', KEYS[i + 1])
  else
    out[#out + 1] = false
  end
end
return out
"""
# KEYS: stream, then a claim per transaction. ARGV: ttl, then a record per transaction.
# Reply: the stream ids.
_RECORD = """
local ids = {}
for i = 2, #KEYS do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '100000', '*', 'record', ARGV[i])
  redis.call('SET', KEYS[i], id, 'EX', ARGV[1])
  ids[#ids + 1] = id
end
return ids
"""
_PREFIX = "baseline:recorded:"
_TTL = 3600


def create_recorded_app(settings: Settings | None = None) -> Flask:
    """The conventions app plus ``POST /v1/record`` (a JSON object with ``transaction_id``
    and ``card_id``, strings) and ``POST /v1/record/batch`` (``{"transactions": [...]}``
    of such objects): each transaction claimed and counted (the card's count; on a
    cluster, within the transaction's partition) by one script call for the request, then
    recorded by another, as ``fraud.score`` does; no model, features, rules or reasons.

    A bench service (``mlsuite bench --services baseline,baseline-recorded,fraud``): between
    it and the baseline is what the platform's conventions and two Redis round trips cost;
    between it and the fraud rows is what the scoring itself costs. Needs Redis."""
    app = create_service_app("baseline", settings)
    client = get_redis(app)
    # One connection per thread, hiredis framing: the fraud scorer's scoring calls.
    commands: Any = None if is_cluster(client) else DirectCommands(client)
    sources = {"claim": _CLAIM, "record": _RECORD}
    shas = {name: client.register_script(src).sha for name, src in sources.items()}
    # On a cluster a script's keys share one slot: a transaction's claim, count and
    # stream carry its partition's hash tag, as the fraud decision log's do, and a
    # request makes one call per partition (pipelined).
    partitions = partition_count(client)

    def call(name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        for attempt in (0, 1):
            try:
                if commands is not None:
                    [(keys, args)] = calls
                    return [commands.execute_command("EVALSHA", shas[name], len(keys),
                                                     *keys, *args)]
                pipe = client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", shas[name], len(keys), *keys, *args)
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:  # a restarted Redis: nothing ran
                if attempt:
                    raise
                shas[name] = client.script_load(sources[name])
        raise AssertionError("unreachable")

    def record(bodies: list[Any], where: str) -> list[dict[str, Any]]:
        ids: list[tuple[str, str]] = []
        for n, body in enumerate(bodies):
            name = f"{where}[{n}]" if where else "body"
            at = f"{name}." if where else ""
            if not isinstance(body, dict):
                raise BadRequest(f"{name} must be a JSON object with transaction_id and "
                                 "card_id", field=name)
            tid, card = (body.get(f) for f in ("transaction_id", "card_id"))
            for field, value in (("transaction_id", tid), ("card_id", card)):
                if not isinstance(value, str) or not value:
                    raise BadRequest(f"{at}{field} must be a non-empty string",
                                     field=f"{at}{field}")
            ids.append((tid, card))  # type: ignore[arg-type]
        if len({tid for tid, _ in ids}) < len(ids):
            raise BadRequest(f"{where}: a transaction_id appears twice", field=where)
        groups: dict[str, list[int]] = {}
        for n, (tid, _) in enumerate(ids):
            tag = partition_tag(partition(tid, partitions), partitions) + _PREFIX
            groups.setdefault(tag, []).append(n)
        claims = call("claim", [
            ([k for n in members for k in (f"{tag}tx:{ids[n][0]}", f"{tag}n:{ids[n][1]}")],
             ["?", _TTL]) for tag, members in groups.items()])
        out: list[dict[str, Any]] = [{} for _ in bodies]
        fresh: dict[str, list[tuple[int, int]]] = {}
        for (tag, members), counts in zip(groups.items(), claims):
            for n, count in zip(members, counts):
                if count is None:
                    out[n] = {"transaction_id": ids[n][0], "duplicate": True}
                else:
                    fresh.setdefault(tag, []).append((n, count))
        if fresh:
            dumps = app.json.dumps
            recorded = call("record", [
                ([f"{tag}stream", *(f"{tag}tx:{ids[n][0]}" for n, _ in kept)],
                 [_TTL, *(dumps(bodies[n]) for n, _ in kept)])
                for tag, kept in fresh.items()])
            for kept, entries in zip(fresh.values(), recorded):
                for (n, count), entry in zip(kept, entries):
                    out[n] = {"transaction_id": ids[n][0], "count": count,
                              "recorded": entry.decode() if isinstance(entry, bytes) else entry}
        return out

    @app.post("/v1/record")
    @requires(None)
    def record_one():  # type: ignore[no-untyped-def]
        return jsonify(record([json_body()], "")[0])

    @app.post("/v1/record/batch")
    @requires(None)
    def record_batch():  # type: ignore[no-untyped-def]
        body = json_body()
        txs = body.get("transactions") if isinstance(body, dict) else None
        if not isinstance(txs, list) or not txs:
            raise BadRequest("body must be {\"transactions\": [...]} with at least one "
                             "transaction", field="transactions")
        return jsonify({"results": record(txs, "transactions"), "count": len(txs)})

    return app
