"""Lists over HTTP: put, get, delete, bad input, and a change reaching every replica."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from fraud.app import get_service
from fraud.lists import LISTS, Lists
from fraud.ops_views import get_lists, get_policy
from fraud.schema import Transaction

TX = Transaction("t1", 1735732800.0, "c-listed", "m-listed", 50.0, "EUR", "FR", "online",
                 "d-listed")


def _final(app: Flask, decision: str = "approve", score: float = 0.1) -> tuple[str, list[str]]:
    # The policy sees transactions as parsed: card and device as tokens (fraud.pii).
    pii = get_service(app).pii
    tx = replace(TX, card_id=pii.token("card", TX.card_id),
                 device_id=pii.token("device", TX.device_id or ""))
    [(final, reasons)] = get_policy(app).apply([tx], [{}], [score], [decision])
    return final, [r["code"] for r in reasons]


def _until(done: Callable[[], bool], what: str, timeout: float = 1.0) -> float:
    """Poll ``done`` until it holds; how long that took (fails after ``timeout``)."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, f"{what} not seen within {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_list_change_on_one_replica_applies_on_another_within_1s(
        make_app: Callable[..., Flask]) -> None:
    a, b = make_app(), make_app()
    assert _final(b) == ("approve", [])
    response = a.test_client().put("/v1/lists/blocked_cards/c-listed",
                                   json={"reason": "reported stolen"})
    assert response.status_code == 201, response.get_json()
    took = _until(lambda: _final(b)[0] == "decline", "the block on replica B")
    assert _final(b) == ("decline", ["rule:blocked_card"])
    assert took < 1.0

    # A trusted merchant overrides B's model decline once A lists it...
    assert a.test_client().put("/v1/lists/trusted_merchants/m-listed").status_code == 201
    assert b.test_client().delete("/v1/lists/blocked_cards/c-listed").status_code == 200
    _until(lambda: _final(b, "decline", 0.9)[0] == "approve", "the allow on replica B")
    assert _final(b, "decline", 0.9) == ("approve", ["rule:trusted_merchant"])
    # ...and the removal made through B reaches A too.
    _until(lambda: _final(a, "decline", 0.9)[0] == "approve", "the removal on replica A")


def test_put_get_delete(client: Any) -> None:
    first = client.put("/v1/lists/blocked_countries/KP",
                       json={"reason": "sanctions", "expires_at": "2099-01-01T00:00:00Z"})
    assert first.status_code == 201
    body = first.get_json()
    assert body["list"] == "blocked_countries" and body["value"] == "KP"
    assert body["reason"] == "sanctions" and body["expires_at"] == 4070908800.0
    assert body["created"] is True
    again = client.put("/v1/lists/blocked_countries/KP", json={"reason": "still sanctioned"})
    assert again.status_code == 200 and again.get_json()["created"] is False
    assert client.put("/v1/lists/blocked_cards/c000001").status_code == 201  # no body

    listed = client.get("/v1/lists").get_json()
    assert set(listed["lists"]) == set(LISTS)
    countries = listed["lists"]["blocked_countries"]
    assert countries["count"] == 1 and countries["field"] == "country"
    assert countries["values"][0]["value"] == "KP"
    assert countries["values"][0]["reason"] == "still sanctioned"
    assert countries["values"][0]["expires_at"] is None, "a PUT replaces the whole entry"
    assert listed["lists"]["blocked_cards"]["count"] == 1
    assert listed["lists"]["trusted_cards"] == {"field": "card_id", "kind": "allow",
                                                "count": 0, "values": []}

    gone = client.delete("/v1/lists/blocked_countries/KP")
    assert gone.status_code == 200 and gone.get_json()["deleted"] is True
    missing = client.delete("/v1/lists/blocked_countries/KP")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["field"] == "value"
    assert client.get("/v1/lists").get_json()["lists"]["blocked_countries"]["count"] == 0


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "says"), [
    ("put", "/v1/lists/vip_cards/c1", None, 404, "list", "blocked_cards, blocked_devices"),
    ("delete", "/v1/lists/vip_cards/c1", None, 404, "list", "trusted_merchants"),
    ("put", "/v1/lists/blocked_countries/France", None, 400, "value", "ISO 3166"),
    ("put", "/v1/lists/blocked_cards/-c1", None, 400, "value", "card_id"),
    ("put", "/v1/lists/blocked_cards/c1", {"reason": 5}, 400, "reason", "string"),
    ("put", "/v1/lists/blocked_cards/c1", {"why": "x"}, 400, "why", "reason, expires_at"),
    ("put", "/v1/lists/blocked_cards/c1", {"expires_at": "soon"}, 400, "expires_at", "ISO"),
    ("put", "/v1/lists/blocked_cards/c1", {"expires_at": "2001-01-01T00:00:00Z"}, 400,
     "expires_at", "future"),
    ("put", "/v1/lists/blocked_cards/c1", ["x"], 400, "body", "JSON object"),
], ids=["unknown list", "unknown list delete", "bad country", "bad card id", "reason type",
        "unknown body field", "bad expires_at", "past expires_at", "body not an object"])
def test_bad_list_requests_name_the_field(keyed_client: Any, method: str, path: str, body: Any,
                                          status: int, field: str, says: str) -> None:
    response = getattr(keyed_client, method)(path, json=body) if body is not None \
        else getattr(keyed_client, method)(path)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field
    assert says in error["message"]


def test_a_full_list_refuses_new_values(make_app: Callable[..., Flask]) -> None:
    client = make_app(list_max_values=2).test_client()
    for card in ("c1", "c2"):
        assert client.put(f"/v1/lists/blocked_cards/{card}").status_code == 201
    full = client.put("/v1/lists/blocked_cards/c3")
    assert full.status_code == 409 and "holds 2 values" in full.get_json()["error"]["message"]
    assert client.put("/v1/lists/blocked_cards/c1").status_code == 200  # an update still fits


def test_a_replica_started_later_loads_the_lists_and_a_lost_snapshot_is_rebuilt(
        make_app: Callable[..., Flask], redis_client: Any) -> None:
    a = make_app()
    assert a.test_client().put("/v1/lists/blocked_cards/c-listed").status_code == 201
    assert _final(make_app())[0] == "decline", "a new replica starts with the lists"
    redis_client.delete(get_lists(a).store.key)  # the snapshot key is lost; the hashes stay
    assert _final(make_app())[0] == "decline", "start-up publishes the lists again"


def test_expired_entries_do_not_match_and_are_dropped(make_app: Callable[..., Flask],
                                                      redis_client: Any) -> None:
    app = make_app()
    lists: Lists = get_lists(app)
    soon = time.time() + 0.3
    lists.put("blocked_cards", "c-listed", {"expires_at": soon})
    _until(lambda: _final(app)[0] == "decline", "the block")
    _until(lambda: _final(app)[0] == "approve", "the expiry", timeout=2.0)
    assert app.test_client().get("/v1/lists").get_json()["lists"]["blocked_cards"]["count"] == 0
    lists.put("blocked_cards", "c-other")  # the next change drops the expired entry
    # Redis holds the card's token, never the card id.
    assert redis_client.hkeys(lists.key("blocked_cards")) == [
        get_service(app).pii.token("card", "c-other").encode()]
