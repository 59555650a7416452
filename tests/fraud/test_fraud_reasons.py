"""Reason codes: every feature maps to a stable code and a sentence; rules are reasons."""

from __future__ import annotations

import doctest
import importlib

import pytest

from fraud.features import BASE_FEATURES
from fraud.reasons import CODES, EXTRA_PREFIX, OTHER, describe, rule_reason
from fraud.velocity import VELOCITY_FEATURES


@pytest.mark.parametrize("feature", BASE_FEATURES)
def test_every_base_feature_has_its_own_code_in_the_codes_table(feature: str) -> None:
    reason = describe(feature, 3.0, 1.0)
    assert reason["code"] != OTHER, f"{feature} falls back to the generic code"
    assert reason["code"] in CODES, f"{feature}'s code {reason['code']} is not documented"
    assert reason["feature"] == feature and reason["value"] == 3.0
    assert feature not in reason["text"], f"the raw feature name is the text: {reason['text']}"


@pytest.mark.parametrize("feature", VELOCITY_FEATURES)
def test_velocity_reasons_say_the_value(feature: str) -> None:
    text = describe(feature, 7.0, 0.4)["text"]
    flag = feature.startswith("card_new_")
    assert flag or "7" in text, text


@pytest.mark.parametrize(("feature", "value", "typical", "code", "text"), [
    ("card_count_1h", 7.0, 0.4, "card_velocity_1h",
     "7 transactions on this card in the last hour; usually 0.4"),
    ("card_amount_24h", 1250.0, 80.0, "card_spend_24h",
     "1,250.00 spent on this card in the last 24 hours; usually 80.00"),
    ("device_distinct_cards_24h", 4.0, None, "device_cards_24h",
     "4 other cards used on this device in the last 24 hours"),
    ("card_secs_since_prev", 12.0, 7200.0, "card_time_since_previous",
     "Previous transaction on this card 12 s earlier; usually 2 h"),
    ("card_secs_since_prev", 30 * 86400.0, None, "card_time_since_previous",
     "No earlier transaction on this card in 30 days"),
    ("hour_of_day", 3.0, 14.0, "time_of_day", "Made at 03:00 UTC; usually 14:00 UTC"),
    ("card_new_device", 1.0, 0.05, "card_new_device",
     "First transaction of this card on this device"),
    ("has_device", 0.0, None, "device_fingerprint", "No device fingerprint was sent"),
    ("amount_vs_card_avg", 8.24, 1.1, "amount_vs_card_average",
     "Amount is 8.24 times this card's average; usually 1.1"),
    ("mcat=jewelry", 1.0, None, "merchant_category", "Merchant category: jewelry"),
    ("x_basket_size", 12.0, 3.0, EXTRA_PREFIX + "basket_size", "Basket size is 12; usually 3"),
    ("a_future_feature", 0.5, None, OTHER, "Model signal a_future_feature is 0.5"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_reason_sentences(feature: str, value: float, typical: float | None, code: str,
                          text: str) -> None:
    assert describe(feature, value, typical) == {
        "code": code, "text": text, "feature": feature, "value": round(value, 4)}


def test_a_rule_reason_has_the_rule_code_and_its_details() -> None:
    reason = rule_reason("blocked_card", "card c1 is on the blocked_cards list",
                         action="decline", list="blocked_cards", value="c1")
    assert reason == {"code": "rule:blocked_card", "text": "card c1 is on the blocked_cards list",
                      "rule": "blocked_card", "action": "decline", "list": "blocked_cards",
                      "value": "c1"}


def test_non_finite_values_do_not_break_a_sentence() -> None:
    assert describe("amount", float("inf"), float("nan"))["text"] == "Amount of inf"


@pytest.mark.parametrize("name", ["reasons", "rules", "lists", "reviews"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"fraud.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"fraud.{name} has no examples"
    assert result.failed == 0
