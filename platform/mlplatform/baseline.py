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


# The two round trips a recorded score cannot do without (fraud.service): claim the id
# and count it in one atomic step, then record the decision before answering. Here the
# count is one INCR and the record the request's own body: what remains of fraud.score's
# Redis work once the velocity windows, the model, the rules and the reasons are gone.
# KEYS: claim, counter. ARGV: claim value, ttl. Reply: the count, or false (claimed).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"""
# KEYS: stream, claim. ARGV: record, ttl. Reply: the stream id.
_RECORD = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '100000', '*', 'record', ARGV[1])
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
return id
"""
_PREFIX = "baseline:recorded:"


def create_recorded_app(settings: Settings | None = None) -> Flask:
    """The conventions app plus ``POST /v1/record``: a JSON object with ``transaction_id``
    and ``card_id`` (strings), claimed and counted (the card's count; on a cluster, within
    the transaction's partition) by one script call, then recorded by another, as
    ``fraud.score`` does; no model, features, rules or reasons. A bench
    service (``mlsuite bench --services baseline,baseline-recorded,fraud``): between it
    and the baseline is what the platform's conventions and two Redis round trips cost;
    between it and ``fraud.score`` is what the scoring itself costs. Needs Redis."""
    app = create_service_app("baseline", settings)
    client = get_redis(app)
    # One connection per thread, hiredis framing: the fraud scorer's scoring calls.
    commands: Any = client if is_cluster(client) else DirectCommands(client)
    shas = {name: client.register_script(src).sha
            for name, src in (("claim", _CLAIM), ("record", _RECORD))}
    sources = {"claim": _CLAIM, "record": _RECORD}
    # On a cluster a script's keys share one slot: a transaction's claim, count and
    # stream carry its partition's hash tag, as the fraud decision log's do.
    partitions = partition_count(client)

    def call(name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return commands.execute_command("EVALSHA", shas[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a restarted Redis: nothing ran
            shas[name] = client.script_load(sources[name])
            return commands.execute_command("EVALSHA", shas[name], len(keys), *keys, *args)

    @app.post("/v1/record")
    @requires(None)
    def record():  # type: ignore[no-untyped-def]
        body = json_body()
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object with transaction_id and card_id",
                             field="body")
        ids = {}
        for field in ("transaction_id", "card_id"):
            value = body.get(field)
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{field} must be a non-empty string", field=field)
            ids[field] = value
        tid = ids["transaction_id"]
        tag = partition_tag(partition(tid, partitions), partitions) + _PREFIX
        claim = f"{tag}tx:{tid}"
        count = call("claim", [claim, f"{tag}n:{ids['card_id']}"], ["?", 3600])
        if count is None:
            return jsonify({"transaction_id": tid, "duplicate": True})
        entry = call("record", [f"{tag}stream", claim], [app.json.dumps(body), 3600])
        return jsonify({"transaction_id": tid, "count": count,
                        "recorded": entry.decode() if isinstance(entry, bytes) else entry})

    return app
