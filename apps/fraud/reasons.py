"""Reason codes: a stable code and a sentence a person can read for every reason.

A model's reason is a feature that pushed the score up (``predictors.Reason``: feature,
value, contribution); a raw feature name means little to an analyst or a payment team,
so every feature maps to a code from ``CODES`` and a sentence built from its value (and,
when known, its typical value). A rule that fired is a reason too: ``rule:<name>``.

``describe`` runs for about three reasons per transaction on the request path: one dict
lookup and one string format, no regular expressions.

>>> describe("card_count_1h", 7.0, 0.4)["text"]
'7 transactions on this card in the last hour; usually 0.4'
>>> describe("card_count_1h", 7.0, 0.4)["code"]
'card_velocity_1h'
>>> describe("amount", 1234.5, None)
{'code': 'amount', 'text': 'Amount of 1,234.50', 'feature': 'amount', 'value': 1234.5}
>>> describe("mcat=jewelry", 1.0, None)["text"]
'Merchant category: jewelry'
>>> describe("card_new_device", 1.0, 0.1)["text"]
'First transaction of this card on this device'
>>> rule_reason("blocked_card", "Card c1 is on the blocked_cards list")["code"]
'rule:blocked_card'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from fraud.features import CATEGORY_PREFIX

__all__ = ["describe", "rule_reason", "CODES", "RULE_PREFIX", "EXTRA_PREFIX", "OTHER"]

RULE_PREFIX = "rule:"
EXTRA_PREFIX = "extra:"  # + the declared request field (``x_<field>`` features)
OTHER = "other"
_NO_PREVIOUS = 30 * 86400.0  # velocity.NO_PREVIOUS: "no earlier transaction" cap


def _number(v: float) -> str:
    """A count or ratio as people write it: 7, 0.4, 2.95, 1,250.

    >>> [_number(v) for v in (7.0, 0.4, 2.951, 12.34, 1250.0, 0.0)]
    ['7', '0.4', '2.95', '12.3', '1,250', '0']
    """
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1000 or v == int(v):
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _money(v: float) -> str:
    return f"{v:,.2f}" if math.isfinite(v) else str(v)


def _duration(v: float) -> str:
    """Seconds as a readable span.

    >>> [_duration(s) for s in (12.0, 300.0, 9000.0, 172800.0)]
    ['12 s', '5 min', '2.5 h', '2 days']
    """
    if not math.isfinite(v):
        return str(v)
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    if v < 172800:
        return f"{_number(round(v / 3600, 1))} h"
    return f"{_number(round(v / 86400, 1))} days"


def _days(v: float) -> str:
    return f"{_number(round(v, 1))} days"


def _hour(v: float) -> str:
    return f"{int(v) % 24:02d}:00 UTC" if math.isfinite(v) else str(v)


class _Spec(NamedTuple):
    code: str
    text: str  # "{}" takes the formatted value; a flag's text when its value is 1
    fmt: Callable[[float], str] | None  # None: a flag (0/1), or no value worth showing
    off: str = ""  # a flag's text when its value is 0


_WINDOW_WORDS = {"1m": "minute", "1h": "hour", "24h": "24 hours"}


def _specs() -> dict[str, _Spec]:
    s: dict[str, _Spec] = {
        "amount": _Spec("amount", "Amount of {}", _money),
        "channel_online": _Spec("online_payment", "Online (card-not-present) payment", None,
                                "Card-present payment"),
        "has_device": _Spec("device_fingerprint", "A device fingerprint was sent", None,
                            "No device fingerprint was sent"),
        "hour_of_day": _Spec("time_of_day", "Made at {}", _hour),
        "hour_sin": _Spec("time_of_day", "Made at an unusual time of day", None,
                          "Made at an unusual time of day"),
        "hour_cos": _Spec("time_of_day", "Made at an unusual time of day", None,
                          "Made at an unusual time of day"),
        "card_profile_missing": _Spec("card_profile_missing", "No profile is known for this card",
                                      None, "This card has a known profile"),
        "card_age_days": _Spec("card_age", "Card is {} old", _days),
        "card_avg_amount": _Spec("card_average_amount", "This card's average amount is {}",
                                 _money),
        "amount_vs_card_avg": _Spec("amount_vs_card_average",
                                    "Amount is {} times this card's average", _number),
        "foreign_country": _Spec("foreign_country",
                                 "Paid in a country other than the card's home country", None,
                                 "Paid in the card's home country"),
        "merchant_profile_missing": _Spec("merchant_profile_missing",
                                          "No profile is known for this merchant", None,
                                          "This merchant has a known profile"),
        "merchant_risk_score": _Spec("merchant_risk", "Merchant risk score {}", _number),
        "merchant_cross_border": _Spec("merchant_cross_border",
                                       "Merchant is outside the card's home country", None,
                                       "Merchant is in the card's home country"),
        "card_distinct_merchants_24h": _Spec(
            "card_merchants_24h", "{} different merchants on this card in the last 24 hours",
            _number),
        "card_distinct_countries_24h": _Spec(
            "card_countries_24h", "{} different countries on this card in the last 24 hours",
            _number),
        "card_secs_since_prev": _Spec("card_time_since_previous",
                                      "Previous transaction on this card {} earlier", _duration),
        "card_amount_vs_usual": _Spec("amount_vs_card_usual",
                                      "Amount is {} times this card's usual amount", _number),
        "card_history_count": _Spec("card_history", "{} earlier transactions on this card",
                                    _number),
        "card_new_device": _Spec("card_new_device",
                                 "First transaction of this card on this device", None,
                                 "Device already used with this card"),
        "card_new_country": _Spec("card_new_country",
                                  "First transaction of this card in this country", None,
                                  "Card already used in this country"),
        "card_new_merchant_24h": _Spec("card_new_merchant",
                                       "First transaction of this card at this merchant in "
                                       "24 hours", None,
                                       "Card already used at this merchant in the last 24 hours"),
        "device_distinct_cards_24h": _Spec(
            "device_cards_24h", "{} other cards used on this device in the last 24 hours",
            _number),
    }
    for window, words in _WINDOW_WORDS.items():
        s[f"card_count_{window}"] = _Spec(
            f"card_velocity_{window}", f"{{}} transactions on this card in the last {words}",
            _number)
        s[f"card_amount_{window}"] = _Spec(
            f"card_spend_{window}", f"{{}} spent on this card in the last {words}", _money)
        s[f"merchant_count_{window}"] = _Spec(
            f"merchant_velocity_{window}",
            f"{{}} transactions at this merchant in the last {words}", _number)
        if window != "1m":
            s[f"device_count_{window}"] = _Spec(
                f"device_velocity_{window}",
                f"{{}} transactions from this device in the last {words}", _number)
    return s


_SPECS = _specs()

# Code -> what it means (the README's table; a test checks every base feature has one).
CODES: dict[str, str] = {spec.code: spec.text.replace("{}", "N") for spec in _SPECS.values()}
CODES.update({
    "time_of_day": "Made at an unusual time of day (hour in UTC)",
    "merchant_category": "The merchant's category (one-hot feature mcat=<category>)",
    f"{EXTRA_PREFIX}<field>": "A declared extra request field (MLSUITE_FRAUD_EXTRA_FIELDS)",
    f"{RULE_PREFIX}<name>": "A rule of the rules file fired (see the rule's text)",
    OTHER: "Any other model feature (named in the reason's feature)",
})


def describe(feature: str, value: float, typical: float | None = None,
             contribution: float | None = None) -> dict[str, Any]:
    """The reason for ``feature`` at ``value``: ``{"code", "text", "feature", "value"}``
    and, when given, ``contribution`` (rounded to 4 places); ``typical`` (e.g. the
    training mean or median), when given, ends the sentence."""
    spec = _SPECS.get(feature)
    if spec is None:
        out = _unlisted(feature, value, typical)
        if contribution is not None:
            out["contribution"] = round(contribution, 4)
        return out
    fmt = spec.fmt
    if fmt is None:
        text = spec.text if value >= 0.5 else spec.off
    elif feature == "card_secs_since_prev" and value >= _NO_PREVIOUS:
        text = "No earlier transaction on this card in 30 days"
    else:
        text = spec.text.format(fmt(value))
        if typical is not None and math.isfinite(typical):
            text += _usually(feature, fmt, typical)
    if contribution is None:
        return {"code": spec.code, "text": text, "feature": feature, "value": round(value, 4)}
    return {"code": spec.code, "text": text, "feature": feature, "value": round(value, 4),
            "contribution": round(contribution, 4)}


# "; usually <typical>" per (feature, typical): a model's typical values are few and
# fixed, and formatting them again for every reason of every request costs a few us each.
_USUALLY: dict[tuple[str, float], str] = {}


def _usually(feature: str, fmt: Callable[[float], str], typical: float) -> str:
    key = (feature, typical)
    text = _USUALLY.get(key)
    if text is None:
        if len(_USUALLY) >= 4096:  # typical values of many models since the start
            _USUALLY.clear()
        text = _USUALLY[key] = "; usually " + fmt(typical)
    return text


def _unlisted(feature: str, value: float, typical: float | None) -> dict[str, Any]:
    if feature.startswith(CATEGORY_PREFIX):
        category = feature[len(CATEGORY_PREFIX):]
        return {"code": "merchant_category", "text": f"Merchant category: {category}",
                "feature": feature, "value": round(value, 4)}
    if feature.startswith("x_"):
        name = feature[2:]
        code, text = EXTRA_PREFIX + name, f"{name.replace('_', ' ').capitalize()} is "
    else:
        code, text = OTHER, f"Model signal {feature} is "
    text += _number(value)
    if typical is not None and math.isfinite(typical):
        text += "; usually " + _number(typical)
    return {"code": code, "text": text, "feature": feature, "value": round(value, 4)}


def rule_reason(name: str, text: str, **details: Any) -> dict[str, Any]:
    """The reason of rule ``name`` that fired: code ``rule:<name>``; ``details`` (e.g.
    ``feature``, ``value``, ``list``) are added as they are."""
    return {"code": RULE_PREFIX + name, "text": text, "rule": name, **details}

