"""Fraud-service configuration: defaults here, overrides from ``MLSUITE_FRAUD_*`` or a TOML file.

Platform settings (data folder, Redis, ports) stay in ``mlplatform.config.Settings``; this
holds only what is specific to fraud scoring. Resolution order: the defaults below, then
the TOML file named by ``MLSUITE_FRAUD_CONFIG`` (keys as the field names), then the
``MLSUITE_FRAUD_<FIELD>`` variables. A malformed value raises ``ConfigError`` naming it.

>>> FraudConfig.from_env({"MLSUITE_FRAUD_REVIEW_FPR": "0.05"}).review_fpr
0.05
>>> FraudConfig.from_env({"MLSUITE_FRAUD_EXTRA_FIELDS": "risk_hint, basket_size"}).extra_fields
('risk_hint', 'basket_size')
>>> FraudConfig.from_env({"MLSUITE_FRAUD_FAIL_MODE": "Open"}).fail_mode
'open'
>>> FraudConfig.from_env({"MLSUITE_FRAUD_FAIL_MODE": "approve"})
Traceback (most recent call last):
...
mlplatform.errors.ConfigError: MLSUITE_FRAUD_FAIL_MODE must be closed or open, got 'approve'
>>> FraudConfig.from_env({"MLSUITE_FRAUD_DECLINE_FPR": "2"})
Traceback (most recent call last):
...
mlplatform.errors.ConfigError: MLSUITE_FRAUD_DECLINE_FPR must be a number in (0, 1), got '2'
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mlplatform.errors import ConfigError

__all__ = ["FAIL_MODES", "FraudConfig", "PREFIX"]

PREFIX = "MLSUITE_FRAUD_"
FAIL_MODES = ("closed", "open")  # scoring while Redis is down: FraudConfig.fail_mode
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class FraudConfig:
    """Settings of the fraud service and its commands."""

    # Registry name of the model served and learned online, and the alias served.
    model_name: str = "fraud-online"
    model_alias: str = "production"
    # The variant `fraud train` registers under model_name (fraud.models.VARIANTS):
    # trees refitted on schedule plus an online layer, or "online-lr" alone.
    model_kind: str = "hybrid-gbm"
    # Target false-positive rates used to choose thresholds on validation data.
    review_fpr: float = 0.02
    decline_fpr: float = 0.005
    # Fixed thresholds, when set, override the ones stored with the model.
    review_threshold: float | None = None
    decline_threshold: float | None = None
    # Optional numeric request fields (declared here, absent -> 0.0), e.g. "basket_size".
    extra_fields: tuple[str, ...] = ()
    # How many reasons a decision carries.
    top_reasons: int = 3
    # Largest batch accepted by /score/batch and /labels.
    max_batch: int = 5000
    # How long a decision (with its features) stays joinable to a late label: from Redis
    # while the decision stream holds it, then from the lake (the stream's archive).
    decision_ttl_seconds: int = 30 * 86400
    # Feast profiles are cached in process for this long (never a Feast call per transaction).
    profile_cache_seconds: float = 300.0
    profile_cache_size: int = 200_000
    # Longest wait of the worker's learner for new labels (bounds label -> model latency).
    learner_block_ms: int = 100
    # The learner's lease: a standby worker takes over this long after the holder died.
    learner_lease_seconds: float = 10.0
    # How often request workers look for a new model or profile snapshot.
    follow_seconds: float = 0.25
    # Positive-class weight of the online model's log loss (class imbalance).
    positive_weight: float = 5.0
    # Every Redis key of the service starts with this (lets a bench or test run beside prod).
    key_prefix: str = "fraud:"
    # Rules before and after the model (TOML); empty: the rules.toml shipped in the package.
    rules_file: str = ""
    # How often a request worker looks at the rules file's mtime (never a read per request).
    rules_check_seconds: float = 1.0
    # Most values one list (blocked_cards, trusted_merchants, ...) may hold.
    list_max_values: int = 100_000
    # Open review cases older than this are counted as overdue (metric, GET /v1/reviews).
    review_max_age_seconds: int = 4 * 3600
    # Largest transaction amount accepted (400 beyond it), in any currency unless
    # max_amounts names it: TOML ``[fraud.max_amounts] JPY = 150000000`` or
    # ``MLSUITE_FRAUD_MAX_AMOUNTS="JPY=150000000,KRW=1300000000"``.
    max_amount: float = 1_000_000.0
    max_amounts: Mapping[str, float] = field(default_factory=dict)
    # What scoring does while Redis is down. "closed": 503 naming redis with Retry-After,
    # no decision (the payment flow's own policy decides, as for a timeout). "open": the
    # model decides on what the request carries (velocity features at their training
    # means), the response says so ("degraded") and that the decision is not recorded:
    # no audit entry, no label can join it, a retry is scored again.
    fail_mode: str = "closed"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FraudConfig:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = env.get(PREFIX + "CONFIG", "").strip()
        if path:
            values.update(_read_file(Path(path)))
        known = {f.name for f in fields(cls)}
        for key, text in env.items():
            if not key.startswith(PREFIX) or key == PREFIX + "CONFIG":
                continue
            name = key[len(PREFIX):].lower()
            if name in known:  # others (e.g. MLSUITE_FRAUD_PORT) belong to the platform
                values[name] = text
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FraudConfig:
        parsed = {name: _parse(name, value) for name, value in values.items()}
        config = cls(**parsed)
        config.validate()
        return config

    def with_(self, **changes: Any) -> FraudConfig:
        config = replace(self, **{k: _parse(k, v) for k, v in changes.items()})
        config.validate()
        return config

    def validate(self) -> None:
        if self.decline_fpr > self.review_fpr:
            raise ConfigError(
                f"{PREFIX}DECLINE_FPR ({self.decline_fpr}) must not exceed "
                f"{PREFIX}REVIEW_FPR ({self.review_fpr}): declines are the stricter band"
            )
        if (
            self.review_threshold is not None
            and self.decline_threshold is not None
            and self.decline_threshold < self.review_threshold
        ):
            raise ConfigError(
                f"{PREFIX}DECLINE_THRESHOLD must be >= {PREFIX}REVIEW_THRESHOLD, got "
                f"{self.decline_threshold} < {self.review_threshold}"
            )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{PREFIX}CONFIG must name a readable TOML file, got {str(path)!r}: {exc}"
        ) from exc
    section = data.get("fraud", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [fraud] must be a table")
    return dict(section)


_FLOATS = {
    "review_fpr": (0.0, 1.0),
    "decline_fpr": (0.0, 1.0),
    "profile_cache_seconds": (0.0, 86400.0),
    "learner_lease_seconds": (0.0, 3600.0),
    "follow_seconds": (0.0, 60.0),
    "positive_weight": (0.0, 1e6),
    "rules_check_seconds": (0.0, 3600.0),
    # Above 1e12 a card's milli-unit total could reach its cap after a few thousand.
    "max_amount": (0.0, 1e12 + 1),
}
_INTS = {
    "top_reasons": (0, 50),
    "max_batch": (1, 1_000_000),
    "decision_ttl_seconds": (60, 10 * 365 * 86400),
    "profile_cache_size": (0, 10**9),
    "learner_block_ms": (1, 60_000),
    "list_max_values": (1, 10_000_000),
    "review_max_age_seconds": (1, 365 * 86400),
}


def _parse(name: str, value: Any) -> Any:
    var = PREFIX + name.upper()
    text = value.strip() if isinstance(value, str) else value
    if name in _FLOATS:
        lo, hi = _FLOATS[name]
        number = _number(text)
        if number is None or not lo < number < hi:
            raise ConfigError(f"{var} must be a number in ({lo:g}, {hi:g}), got {value!r}")
        return number
    if name in _INTS:
        lo, hi = _INTS[name]
        number = _number(text)
        if number is None or number != int(number) or not lo <= number <= hi:
            raise ConfigError(f"{var} must be an integer in [{lo}, {hi}], got {value!r}")
        return int(number)
    if name in ("review_threshold", "decline_threshold"):
        if text in (None, ""):
            return None
        number = _number(text)
        if number is None or not 0.0 <= number <= 1.0:
            raise ConfigError(f"{var} must be a probability in [0, 1], got {value!r}")
        return number
    if name == "extra_fields":
        items = text.split(",") if isinstance(text, str) else list(text)
        names = tuple(str(i).strip() for i in items if str(i).strip())
        for n in names:
            if not _NAME.match(n):
                raise ConfigError(
                    f"{var} must list snake_case field names, got {n!r} in {value!r}"
                )
        return names
    if name in ("model_name", "model_alias", "key_prefix"):
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{var} must be a non-empty string, got {value!r}")
        return text
    if name == "max_amounts":
        return _amounts(var, text)
    if name == "fail_mode":
        mode = text.lower() if isinstance(text, str) else text
        if mode not in FAIL_MODES:
            raise ConfigError(f"{var} must be {' or '.join(FAIL_MODES)}, got {value!r}")
        return mode
    if name == "rules_file":  # empty: the shipped default (checked when the rules load)
        if not isinstance(text, str):
            raise ConfigError(f"{var} must be a path to a TOML rules file, got {value!r}")
        return text
    raise ConfigError(f"{var} is not a fraud setting")


def _amounts(var: str, value: Any) -> dict[str, float]:
    """Currency -> largest amount, from a TOML table or ``"JPY=150000000, KRW=1.3e9"``.

    >>> _amounts("X", "JPY=150000000, KRW=1.3e9")
    {'JPY': 150000000.0, 'KRW': 1300000000.0}
    """
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for item in (i.strip() for i in value.split(",")):
            if item:
                code, sep, number = item.partition("=")
                if not sep:
                    raise ConfigError(f"{var} must list CURRENCY=amount pairs, got {item!r}")
                pairs.append((code.strip(), number.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise ConfigError(f"{var} must map currencies to amounts, got {value!r}")
    out: dict[str, float] = {}
    for code, number in pairs:
        amount = _number(number)
        if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code):
            raise ConfigError(f"{var}: {code!r} is not an ISO 4217 code (3 upper-case letters)")
        if amount is None or not 0.0 < amount <= 1e12:
            raise ConfigError(f"{var}: {code} must be a number in (0, 1e12], got {number!r}")
        out[code] = amount
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
