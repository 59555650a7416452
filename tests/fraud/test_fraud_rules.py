"""Rules before and after the model: block lists, hard limits, allow lists, reloading."""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from fraud.lists import Entry, ListSet
from fraud.rules import DEFAULT_RULES, Policy, load_rules, parse_rules
from fraud.schema import Transaction
from mlplatform.errors import ConfigError

RULES = {
    "before": [
        {"name": "blocked_card", "list": "blocked_cards", "action": "decline"},
        {"name": "blocked_country", "list": "blocked_countries", "action": "decline"},
        {"name": "big_amount", "when": ["amount >= 10000"], "action": "review",
         "text": "Amount of 10,000 or more"},
        {"name": "card_burst", "when": ["card_count_1h >= 20"], "action": "decline"},
        {"name": "risky_online_usd", "when": ["channel == online", "currency in USD, CAD",
                                              "merchant_risk_score > 0.9"], "action": "review"},
    ],
    "after": [
        {"name": "trusted_merchant", "list": "trusted_merchants", "when": ["score < 0.99"],
         "action": "approve"},
        {"name": "trusted_card", "list": "trusted_cards", "action": "review",
         "overrides": ["decline", "review"]},
    ],
}


def _tx(i: int = 1, **changes: Any) -> Transaction:
    fields: dict[str, Any] = {"transaction_id": f"t{i}", "timestamp": 1735732800.0,
                              "card_id": "c1", "merchant_id": "m1", "amount": 50.0,
                              "currency": "EUR", "country": "FR", "channel": "online",
                              "device_id": "d1"}
    fields.update(changes)
    return Transaction(**fields)


def _lists(**values: list[str]) -> ListSet:
    return ListSet({name: {v: Entry(v, "test", 1.0) for v in vs} for name, vs in values.items()})


def _one(policy: Policy, tx: Transaction, decision: str, score: float = 0.5,
         x: dict[str, float] | None = None) -> tuple[str, list[str]]:
    [(final, reasons)] = policy.apply([tx], [x or {}], [score], [decision])
    return final, [r["code"] for r in reasons]


POLICY_CASES = [
    # (id, transaction changes, features, lists, model decision, score, final, rule codes)
    ("nothing fires: the model decides", {}, {}, {}, "decline", 0.9, "decline", []),
    ("blocked card declines a model approve", {}, {}, {"blocked_cards": ["c1"]},
     "approve", 0.01, "decline", ["rule:blocked_card"]),
    ("a block wins over a trusted merchant", {}, {},
     {"blocked_cards": ["c1"], "trusted_merchants": ["m1"]}, "decline", 0.5, "decline",
     ["rule:blocked_card"]),
    ("blocked country", {"country": "KP"}, {}, {"blocked_countries": ["KP"]}, "approve", 0.0,
     "decline", ["rule:blocked_country"]),
    ("hard amount limit reviews", {"amount": 25000.0}, {}, {}, "approve", 0.01, "review",
     ["rule:big_amount"]),
    ("a hard limit does not soften a model decline", {"amount": 25000.0}, {}, {}, "decline",
     0.95, "decline", ["rule:big_amount"]),
    ("velocity limit declines", {}, {"card_count_1h": 25.0}, {}, "approve", 0.1, "decline",
     ["rule:card_burst"]),
    ("all conditions must hold", {"currency": "USD"}, {"merchant_risk_score": 0.5}, {},
     "approve", 0.1, "approve", []),
    ("several conditions hold", {"currency": "CAD"}, {"merchant_risk_score": 0.95}, {},
     "approve", 0.1, "review", ["rule:risky_online_usd"]),
    ("trusted merchant approves a model decline", {}, {}, {"trusted_merchants": ["m1"]},
     "decline", 0.9, "approve", ["rule:trusted_merchant"]),
    ("trusted merchant, near-certain score: no override", {}, {},
     {"trusted_merchants": ["m1"]}, "decline", 0.995, "decline", []),
    ("an allow rule leaves a model review alone by default", {}, {},
     {"trusted_merchants": ["m1"]}, "review", 0.5, "review", []),
    ("a before-model review stays a review after an allow", {"amount": 25000.0}, {},
     {"trusted_merchants": ["m1"]}, "decline", 0.9, "review",
     ["rule:big_amount", "rule:trusted_merchant"]),
    ("trusted card turns a decline into a review", {}, {}, {"trusted_cards": ["c1"]},
     "decline", 0.999, "review", ["rule:trusted_card"]),
    ("lists match exact values only", {"card_id": "c10"}, {}, {"blocked_cards": ["c1"]},
     "approve", 0.1, "approve", []),
]


@pytest.mark.parametrize(("changes", "x", "lists", "decision", "score", "final", "codes"),
                         [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_policy(changes: dict[str, Any], x: dict[str, float], lists: dict[str, list[str]],
                decision: str, score: float, final: str, codes: list[str]) -> None:
    policy = Policy(parse_rules(RULES, "test"), _lists(**lists))
    assert _one(policy, _tx(**changes), decision, score, x) == (final, codes)


def test_rule_reasons_say_what_fired_and_why() -> None:
    policy = Policy(parse_rules(RULES, "test"),
                    ListSet({"blocked_cards": {"c1": Entry("c1", "reported stolen", 1.0)}}))
    [(_, reasons)] = policy.apply([_tx(amount=20000.0)], [{}], [0.1], ["approve"])
    by_code = {r["code"]: r for r in reasons}
    assert by_code["rule:blocked_card"]["text"] == \
        "card_id c1 is on the blocked_cards list (reported stolen)"
    assert by_code["rule:blocked_card"]["action"] == "decline"
    assert by_code["rule:big_amount"] == {"code": "rule:big_amount", "rule": "big_amount",
                                          "text": "Amount of 10,000 or more",
                                          "action": "review", "feature": "amount",
                                          "value": 20000.0}


def test_an_expired_list_entry_no_longer_matches() -> None:
    now = time.time()
    lists = ListSet({"blocked_cards": {"c1": Entry("c1", "", now - 10, now - 1),
                                       "c2": Entry("c2", "", now - 10, now + 60)}})
    policy = Policy(parse_rules(RULES, "test"), lists)
    assert _one(policy, _tx(card_id="c1"), "approve")[0] == "approve"
    assert _one(policy, _tx(card_id="c2"), "approve")[0] == "decline"


def test_a_whole_batch_is_decided_row_by_row() -> None:
    policy = Policy(parse_rules(RULES, "test"), _lists(blocked_cards=["c2"]))
    txs = [_tx(i, card_id=f"c{i}") for i in range(1, 4)]
    out = policy.apply(txs, [{}, {}, {"card_count_1h": 30.0}], [0.1, 0.1, 0.1],
                       ["approve", "approve", "approve"])
    assert [d for d, _ in out] == ["approve", "decline", "decline"]


def test_rule_hits_are_counted_by_rule_and_action() -> None:
    def hits() -> float:
        return REGISTRY.get_sample_value("mlsuite_fraud_rule_hits_total",
                                         {"rule": "big_amount", "action": "review"}) or 0.0

    policy = Policy(parse_rules(RULES, "test"))
    before = hits()
    policy.apply([_tx(1, amount=20000.0), _tx(2), _tx(3, amount=10000.0)], [{}, {}, {}],
                 [0.1] * 3, ["approve"] * 3)
    assert hits() == before + 2


BAD_RULES = [
    ("unknown table", {"rules": []}, "unknown table"),
    ("unknown key", {"before": [{"name": "a", "when": ["amount > 1"], "action": "review",
                                 "acton": "x"}]}, "unknown key(s) acton"),
    ("bad action before", {"before": [{"name": "a", "when": ["amount > 1"],
                                       "action": "approve"}]}, "action must be one of decline"),
    ("allow list before", {"before": [{"name": "a", "list": "trusted_cards",
                                       "action": "decline"}]}, "allow lists go in [[after]]"),
    ("block list after", {"after": [{"name": "a", "list": "blocked_cards",
                                     "action": "approve"}]}, "block lists go in [[before]]"),
    ("unknown list", {"before": [{"name": "a", "list": "vip", "action": "decline"}]},
     "list must be one of blocked_cards"),
    ("unknown field", {"before": [{"name": "a", "when": ["amout > 1"], "action": "review"}]},
     "unknown field 'amout'"),
    ("score before the model", {"before": [{"name": "a", "when": ["score > 0.5"],
                                            "action": "review"}]}, "only after the model"),
    ("not a number", {"before": [{"name": "a", "when": ["amount > lots"],
                                  "action": "review"}]}, "amount is a number"),
    ("text compared as a number", {"before": [{"name": "a", "when": ["country > FR"],
                                               "action": "review"}]}, "country is text"),
    ("unreadable condition", {"before": [{"name": "a", "when": ["amount"],
                                          "action": "review"}]}, "must read"),
    ("nothing to test", {"before": [{"name": "a", "action": "review"}]}, "needs a list"),
    ("duplicate name", {"before": [{"name": "a", "when": ["amount > 1"], "action": "review"},
                                   {"name": "a", "when": ["amount > 2"], "action": "review"}]},
     "used twice"),
    ("bad overrides", {"after": [{"name": "a", "list": "trusted_cards", "action": "approve",
                                  "overrides": ["approve"]}]}, "overrides must list"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD_RULES],
                         ids=[c[0] for c in BAD_RULES])
def test_a_bad_rules_file_is_refused_naming_the_rule(data: dict[str, Any], message: str
                                                     ) -> None:
    with pytest.raises(ConfigError, match="test") as info:
        parse_rules(data, "test")
    assert message in str(info.value)


def test_the_shipped_rules_load_and_ship_with_the_package() -> None:
    rules = load_rules(DEFAULT_RULES)
    assert {r.name for r in rules.before} >= {"blocked_card", "blocked_device",
                                               "blocked_merchant", "blocked_country"}
    assert {r.list for r in rules.after} == {"trusted_merchants", "trusted_cards"}
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "rules.toml" in pyproject["tool"]["setuptools"]["package-data"]["fraud"]


def _write(path: Path, rules: str) -> None:
    """Write the rules file with a new mtime (a coarse filesystem clock may not tick)."""
    path.write_text(rules)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _until(done: Callable[[], bool], what: str, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, f"waited {timeout}s for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


LIMIT = '[[before]]\nname = "limit"\nwhen = ["amount > {}"]\naction = "review"\n'


def test_a_changed_rules_file_applies_within_a_second_and_a_broken_one_is_ignored(
        tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    path = tmp_path / "rules.toml"
    _write(path, LIMIT.format(1000))
    app = make_app(rules_file=str(path), rules_check_seconds=0.2)
    policy: Policy = app.extensions["fraud.policy"]
    client = app.test_client()
    assert client.get("/v1/rules").get_json()["before"] == [
        {"name": "limit", "stage": "before", "action": "review", "when": ["amount > 1000"]}]
    assert _one(policy, _tx(amount=500.0), "approve")[0] == "approve"

    _write(path, LIMIT.format(100))
    took = _until(lambda: _one(policy, _tx(amount=500.0), "approve")[0] == "review",
                  "the new limit")
    assert took < 1.0

    _write(path, LIMIT.format(100).replace("amount", "amonut"))  # a typo: refused
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # several checks go by; the old rules stay
        assert _one(policy, _tx(amount=500.0), "approve")[0] == "review"
        time.sleep(0.05)
    assert client.get("/v1/rules").get_json()["before"][0]["when"] == ["amount > 100"]


def test_a_policy_looks_at_the_file_at_most_once_per_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, LIMIT.format(1000))
    policy = Policy(load_rules(path), path=path, check_seconds=60.0)
    _write(path, LIMIT.format(10))
    for _ in range(100):
        assert _one(policy, _tx(amount=500.0), "approve")[0] == "approve"
    assert policy.reload() is True  # an explicit check sees it at once
    assert _one(policy, _tx(amount=500.0), "approve")[0] == "review"


def test_a_missing_rules_file_stops_start_up_naming_it(tmp_path: Path,
                                                       make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        make_app(rules_file=str(tmp_path / "nope.toml"))
