"""Pipeline thresholds: defaults here, overrides from ``MLSUITE_PIPELINE_*`` variables.

Every data-quality bound and the gate's tolerance has a default that suits the simulated
shop and payment flow; a deployment tightens or loosens one with its variable
(``MLSUITE_PIPELINE_MAX_NULL_RATE=0.05``), a run with ``with_`` (the CLI's ``--tolerance``).
A malformed value raises ``ConfigError`` naming the variable and the range it expects.

>>> PipelineConfig.from_env({"MLSUITE_PIPELINE_TOLERANCE": "0.02"}).tolerance
0.02
>>> PipelineConfig.from_env({"MLSUITE_PIPELINE_MAX_NULL_RATE": "lots"})
Traceback (most recent call last):
...
mlplatform.errors.ConfigError: MLSUITE_PIPELINE_MAX_NULL_RATE must be a number in [0, 1], got 'lots'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from mlplatform.errors import ConfigError

__all__ = ["PipelineConfig", "PREFIX"]

PREFIX = "MLSUITE_PIPELINE_"


@dataclass(frozen=True)
class PipelineConfig:
    """Data-quality bounds, held-out slice sizing and the gate's tolerance of one run."""

    # Gate: the candidate's primary metric may trail production's by at most this (absolute).
    tolerance: float = 0.01
    # Share of rows per source allowed to be null / malformed (ids not matching
    # mlplatform.http.ID_PATTERN, unknown categories) before the run is refused. Rows
    # within the tolerated share are dropped before training.
    max_null_rate: float = 0.01
    max_invalid_rate: float = 0.01
    # Timestamps: none later than now + skew (clocks of producers drift a little), none
    # older than max_age_days (a unit mix-up such as milliseconds read as seconds).
    max_future_rate: float = 0.0
    future_skew_seconds: float = 300.0
    max_old_rate: float = 0.0
    max_age_days: float = 3650.0
    # Rows per source (and in all) against the last run whose checks passed: a drop means
    # lost partitions, a jump duplicated ones.
    min_volume_ratio: float = 0.5
    max_volume_ratio: float = 20.0
    # Label rate per source (share of positives) and its change against the last run.
    min_label_rate: float = 0.0001
    max_label_rate: float = 0.5
    max_label_rate_change: float = 3.0  # a factor: within [1/x, x] of the previous rate
    # Held-out slice: the newest share of the rows newer than production's data cutoff.
    held_out_fraction: float = 0.5
    min_held_out_rows: int = 50

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelineConfig:
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        values = {k[len(PREFIX):].lower(): v for k, v in env.items() if k.startswith(PREFIX)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{PREFIX}{unknown[0].upper()} is not a pipeline setting; "
                              f"expected one of {', '.join(PREFIX + n.upper() for n in sorted(known))}")
        return cls(**{name: _parse(name, text) for name, text in values.items()})

    def with_(self, **changes: Any) -> PipelineConfig:
        """A copy with some values changed (validated like the variables)."""
        return replace(self, **{k: _parse(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_RATES = {"tolerance", "max_null_rate", "max_invalid_rate", "max_future_rate", "max_old_rate",
          "min_label_rate", "max_label_rate"}
_POSITIVE = {"future_skew_seconds": (0.0, 86400.0), "max_age_days": (1.0, 36500.0),
             "min_volume_ratio": (0.0, 1.0), "max_volume_ratio": (1.0, 1e6),
             "max_label_rate_change": (1.0, 1e6), "held_out_fraction": (0.01, 0.99)}


def _parse(name: str, value: Any) -> Any:
    var = PREFIX + name.upper()
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = float("nan")
    if name == "min_held_out_rows":
        if not (number == number and number == int(number) and 1 <= number <= 10**9):
            raise ConfigError(f"{var} must be an integer in [1, 1000000000], got {value!r}")
        return int(number)
    lo, hi = (0.0, 1.0) if name in _RATES else _POSITIVE.get(name, (None, None))
    if lo is None or hi is None:
        raise ConfigError(f"{var} is not a pipeline setting")
    if not lo <= number <= hi:  # NaN fails too
        raise ConfigError(f"{var} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return number
