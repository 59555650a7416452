"""The GraphQL service against real servers: recommender, fraud and GraphQL under granian,
a private Redis, Feast, trained models (``graph_stack``).

The outage test stops the fraud server: it is the last test of this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import build_client_schema, build_schema, get_introspection_query, print_schema
from graphql.utilities import lexicographic_sort_schema
from websockets.asyncio.client import connect

from mlplatform import serving
from mlplatform.redisdb import free_port
from mlplatform.stack import Stack

pytestmark = pytest.mark.slow

SDL = Path(__file__).parents[2] / "apps" / "graphapi" / "schema.graphql"
CHECKOUT = """
mutation Checkout($user: ID!, $cart: [ID!]!, $tx: TransactionInput!) {
  checkout(userId: $user, cart: $cart, transaction: $tx, n: 4) {
    userId
    recommendations { itemId score item { category price inStock } }
    decision { transactionId score decision reasons { code text } modelVersion }
  }
}"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tx(payment: dict[str, Any]) -> dict[str, Any]:
    """A new ``TransactionInput`` happening now."""
    return {"transactionId": f"gql-{uuid.uuid4().hex[:12]}", "timestamp": _now(), **payment}


def _rest_tx(tx: dict[str, Any]) -> dict[str, Any]:
    """The same transaction as the REST endpoint's JSON."""
    names = {"transactionId": "transaction_id", "cardId": "card_id",
             "merchantId": "merchant_id"}
    return {names.get(k, k): v for k, v in tx.items()}


def test_one_request_returns_recommendations_and_a_fraud_decision(
        graph_stack: Stack, gql: Callable[..., dict[str, Any]], shop_ids: dict[str, list[str]],
        payment: dict[str, Any], auth: dict[str, str]) -> None:
    user, cart = shop_ids["users"][0], shop_ids["items"][:2]
    tx = _tx(payment)
    body = gql(CHECKOUT, {"user": user, "cart": cart, "tx": tx})
    assert "errors" not in body, body
    checkout = body["data"]["checkout"]
    recs = checkout["recommendations"]
    assert checkout["userId"] == user and 1 <= len(recs) <= 4
    assert not {r["itemId"] for r in recs} & set(cart), "cart items are left out"
    assert all(r["item"]["inStock"] and r["item"]["category"] for r in recs)
    decision = checkout["decision"]
    assert decision["transactionId"] == tx["transactionId"]
    assert 0.0 <= decision["score"] <= 1.0 and decision["decision"] in {"approve", "review",
                                                                        "decline"}
    # The REST endpoint now answers the same transaction with the stored decision.
    rest = httpx.post(f"{graph_stack.urls['fraud']}/v1/transactions/score", timeout=10,
                      json=_rest_tx(tx), headers=auth).json()
    assert rest.get("duplicate") and rest["score"] == decision["score"], rest


def test_the_callers_key_and_its_scopes_apply_upstream(
        gql: Callable[..., dict[str, Any]], shop_ids: dict[str, list[str]],
        payment: dict[str, Any]) -> None:
    variables = {"user": shop_ids["users"][2], "cart": [], "tx": _tx(payment)}
    # A key with the "recommend" scope only: recommendations, but no fraud decision.
    body = gql(CHECKOUT, variables, key="shop")
    assert body["data"]["checkout"]["recommendations"]
    assert body["data"]["checkout"]["decision"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN" and error["extensions"]["service"] == "fraud"
    # No key: each service refuses; GraphQL says which.
    body = gql(CHECKOUT, variables, key=None)
    assert body["data"]["checkout"] == {"userId": variables["user"], "recommendations": None,
                                        "decision": None}
    assert sorted((e["extensions"]["code"], e["extensions"]["service"]) for e in body["errors"]) \
        == [("UNAUTHENTICATED", "fraud"), ("UNAUTHENTICATED", "recommender")]


def test_a_bad_value_is_the_services_error_naming_the_field(
        gql: Callable[..., dict[str, Any]], payment: dict[str, Any]) -> None:
    body = gql("mutation($t: TransactionInput!) { scoreTransaction(transaction: $t) { score } }",
               {"t": {**_tx(payment), "currency": "euro"}})
    [error] = body["errors"]
    assert body["data"] is None
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "service": "fraud", "status": 400,
                                   "field": "currency"}, error
    assert "currency" in error["message"]


@pytest.mark.parametrize("shape", ["list", "aliases"])
def test_n_users_recommendations_are_one_batch_call(
        shape: str, graph_stack: Stack, gql: Callable[..., dict[str, Any]],
        shop_ids: dict[str, list[str]], read_metric: Callable[..., float]) -> None:
    users = shop_ids["users"][10:30]
    fields = "id variant recommendations { model items { itemId score } }"
    if shape == "list":
        query, variables = f"query($ids: [ID!]!) {{ users(ids: $ids) {{ {fields} }} }}", {"ids": users}
    else:
        query = "{ " + " ".join(f'u{i}: user(id: "{u}") {{ {fields} }}'
                                for i, u in enumerate(users)) + " }"
        variables = {}
    rec = graph_stack.urls["recommender"]

    def calls() -> tuple[float, float]:
        return (read_metric(rec, "mlsuite_http_requests_total", service="recommender",
                            endpoint="/v1/recommendations/batch"),
                read_metric(rec, "mlsuite_http_requests_total", service="recommender",
                            endpoint="/v1/users/<user_id>/recommendations"))

    before = calls()
    body = gql(query, variables)
    after = calls()
    assert "errors" not in body, body
    answers = body["data"]["users"] if shape == "list" else list(body["data"].values())
    assert [a["id"] for a in answers] == users
    assert all(a["recommendations"]["items"] and a["variant"] for a in answers)
    # 20 users' recommendations and variants: one batch call, no single-user call.
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


def test_items_catalogue_fields_are_one_feast_read(
        graph_stack: Stack, gql: Callable[..., dict[str, Any]], shop_ids: dict[str, list[str]],
        read_metric: Callable[..., float]) -> None:
    url = graph_stack.urls["graphql"]
    gql('{ item(id: "%s") { category } }' % shop_ids["items"][0])  # Feast opened and warm

    def reads() -> float:
        return read_metric(url, "mlsuite_feast_operation_seconds_count", operation="online_read")

    before = reads()
    body = gql("query($ids: [ID!]!) { items(ids: $ids) { id category price inStock } }",
               {"ids": shop_ids["items"][:15]})
    assert "errors" not in body, body
    assert all(i["category"] and i["price"] > 0 for i in body["data"]["items"])
    assert reads() - before == 1


REFUSED = {
    "costly": ("query($ids: [ID!]!) { users(ids: $ids) { recommendations(n: 50) { items { item "
               "{ similar(n: 50) { items { itemId } } } } } } }", "QUERY_TOO_COSTLY"),
    "deep": ('{ item(id: "i00001") { similar(n: 1) { items { item { similar(n: 1) { items { item '
             "{ similar(n: 1) { items { itemId } } } } } } } } } }", "depth"),
    "aliases": ("{ " + " ".join(f'a{i}: user(id: "u{i}") {{ id }}' for i in range(60)) + " }",
                "aliases"),
    "batch": ("mutation($t: [TransactionInput!]!) { scoreTransactions(transactions: $t) "
              "{ score } }", "BATCH_TOO_LARGE"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_costly_deep_or_oversized_requests_are_refused_before_any_upstream_call(
        case: str, graph_stack: Stack, gql: Callable[..., dict[str, Any]],
        shop_ids: dict[str, list[str]], payment: dict[str, Any],
        read_metric: Callable[..., float]) -> None:
    query, expected = REFUSED[case]
    variables = {"ids": shop_ids["users"][:30],
                 "t": [_tx(payment) for _ in range(graph_stack.settings.graphql_max_batch + 1)]}
    variables = {k: v for k, v in variables.items() if f"${k}" in query}
    graphql_url = graph_stack.urls["graphql"]
    before = read_metric(graphql_url, "mlsuite_graphql_upstream_requests_total")
    for _ in range(2):  # the second time its parse and validation come from the caches
        body = gql(query, variables)
        assert body.get("data") is None and body["errors"], body
        error = body["errors"][0]
        assert expected in (error.get("extensions") or {}).get("code", "") + error["message"], \
            error
    assert read_metric(graphql_url, "mlsuite_graphql_upstream_requests_total") == before
    if case == "batch":  # the same document with a short list is served: cost is per request
        body = gql(query, {"t": [_tx(payment)]})
        assert "errors" not in body and len(body["data"]["scoreTransactions"]) == 1, body


def test_the_served_schema_is_the_committed_sdl(gql: Callable[..., dict[str, Any]]) -> None:
    body = gql(get_introspection_query(descriptions=True, specified_by_url=True,
                                       directive_is_repeatable=True))
    live = lexicographic_sort_schema(build_client_schema(body["data"]))
    committed = lexicographic_sort_schema(build_schema(SDL.read_text()))
    assert print_schema(live) == print_schema(committed), \
        "the served schema differs from schema.graphql: run `python -m graphapi.sdl`"


def test_introspection_can_be_turned_off(graph_stack: Stack,
                                         gql: Callable[..., dict[str, Any]]) -> None:
    settings = graph_stack.settings.with_(graphql_introspection=False)
    port = free_port(settings.host)
    proc = serving.spawn("graphql", settings, port=port, workers=1, server="granian",
                         redis_url=str(settings.redis_url))
    url = f"http://{settings.host}:{port}"
    try:
        serving.wait_ready(url, timeout=120, proc=proc)
        body = gql("{ __schema { types { name } } }", url=url)
        assert body["data"] is None and "introspection" in body["errors"][0]["message"].lower()
        assert "errors" not in gql('{ user(id: "u000001") { id } }', url=url)
    finally:
        serving.stop_process(proc)


def _ws_url(stack: Stack) -> str:
    return stack.urls["graphql"].replace("http://", "ws://") + "/graphql"


async def _subscribe(ws: Any, key: str | None, query: str,
                     variables: dict[str, Any] | None = None) -> None:
    """Open the connection (the API key in connection_init, as browsers must) and subscribe."""
    payload = {"Authorization": f"Bearer {key}"} if key else {}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe",
                              "payload": {"query": query, "variables": variables or {}}}))


async def _next(ws: Any, deadline: float) -> dict[str, Any]:
    """The next ``next`` message's data before ``deadline`` (monotonic)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if message["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
            continue
        assert message["type"] == "next" and "errors" not in message["payload"], message
        return message["payload"]["data"]  # type: ignore[no-any-return]


def test_decision_subscription_receives_a_score_within_one_second(
        graph_stack: Stack, payment: dict[str, Any], read_metric: Callable[..., float],
        wait_for: Callable[..., Any], auth: dict[str, str], api_keys: dict[str, str]) -> None:
    graphql_url, fraud_url = graph_stack.urls["graphql"], graph_stack.urls["fraud"]
    listening = read_metric(graphql_url, "mlsuite_graphql_subscribers", stream="fraud:decisions")

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(_ws_url(graph_stack), subprotocols=["graphql-transport-ws"]) as ws:
            await _subscribe(ws, api_keys["admin"], "subscription { decisions(minScore: 0) "
                                 "{ transactionId score decision modelVersion } }")
            await asyncio.to_thread(wait_for, "the subscription to listen", lambda: read_metric(
                graphql_url, "mlsuite_graphql_subscribers", stream="fraud:decisions") > listening)
            tx = _rest_tx(_tx(payment))
            scored_at = time.monotonic()
            async with httpx.AsyncClient(headers=auth) as client:
                rest = (await client.post(f"{fraud_url}/v1/transactions/score", json=tx)).json()
            while True:  # within 1 s of the score request
                data = (await _next(ws, scored_at + 1.0))["decisions"]
                if data["transactionId"] == tx["transaction_id"]:
                    return rest, data

    rest, pushed = asyncio.run(run())
    assert pushed == {"transactionId": rest["transaction_id"], "score": rest["score"],
                      "decision": rest["decision"], "modelVersion": rest["model_version"]}


@pytest.mark.parametrize("key", [None, "shop"])
def test_decision_subscription_needs_the_review_scope(
        key: str | None, graph_stack: Stack, api_keys: dict[str, str]) -> None:
    async def run() -> dict[str, Any]:
        async with connect(_ws_url(graph_stack), subprotocols=["graphql-transport-ws"]) as ws:
            await _subscribe(ws, api_keys[key] if key else None,
                             "subscription { decisions { transactionId } }")
            return json.loads(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[no-any-return]

    message = asyncio.run(run())
    [error] = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert error["extensions"]["service"] == "fraud"
    assert error["extensions"]["code"] == ("FORBIDDEN" if key else "UNAUTHENTICATED")


def test_recommendations_subscription_pushes_when_the_users_events_change_them(
        graph_stack: Stack, gql: Callable[..., dict[str, Any]],
        shop_ids: dict[str, list[str]], api_keys: dict[str, str]) -> None:
    user = shop_ids["users"][40]

    async def run() -> tuple[list[str], list[str]]:
        async with connect(_ws_url(graph_stack), subprotocols=["graphql-transport-ws"]) as ws:
            await _subscribe(ws, api_keys["admin"],
                             "subscription($u: ID!) { recommendations(userId: $u, n: 5) "
                                 "{ items { itemId } } }", {"u": user})
            first = [i["itemId"] for i in
                     (await _next(ws, time.monotonic() + 30))["recommendations"]["items"]]
            # Buying what was recommended: seen items are left out of the next list.
            events = [{"userId": user, "itemId": i, "eventType": "purchase"} for i in first]
            result = await asyncio.to_thread(
                gql, "mutation($e: [EventInput!]!) { recordEvents(events: $e) { accepted } }",
                {"e": events})
            assert result["data"]["recordEvents"]["accepted"] == len(first), result
            pushed = await _next(ws, time.monotonic() + 30)
            return first, [i["itemId"] for i in pushed["recommendations"]["items"]]

    first, second = asyncio.run(run())
    assert len(first) == 5 and len(second) == 5
    assert not set(first) & set(second)


def test_fraud_down_gives_partial_data_and_a_typed_error(
        graph_stack: Stack, gql: Callable[..., dict[str, Any]], shop_ids: dict[str, list[str]],
        payment: dict[str, Any], wait_for: Callable[..., Any]) -> None:
    os.kill(graph_stack.pid("fraud"), signal.SIGTERM)
    wait_for("the fraud server to stop", lambda: "fraud" not in graph_stack.alive(), timeout=30)

    body = gql(CHECKOUT, {"user": shop_ids["users"][1], "cart": [], "tx": _tx(payment)})
    checkout = body["data"]["checkout"]
    assert len(checkout["recommendations"]) == 4 and checkout["decision"] is None
    [error] = body["errors"]
    assert error["path"] == ["checkout", "decision"]
    assert error["extensions"] == {"code": "UPSTREAM_UNAVAILABLE", "service": "fraud"}

    body = gql('{ r: model(service: RECOMMENDER) { model } f: model(service: FRAUD) { model } }')
    assert body["data"]["r"]["model"] and body["data"]["f"] is None
    assert [e["extensions"]["service"] for e in body["errors"]] == ["fraud"]

    ready = httpx.get(f"{graph_stack.urls['graphql']}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["unavailable"] == ["fraud"], ready.text
