"""What an experiment is for its analysis: variants and weights, control, window, limits.

Read from the same TOML file as ``mlplatform.assignment.load_experiments`` (one table
per experiment); the analysis adds optional keys to a table:

=====================  ==========================================================
``control``            the variant the others are compared with (default: a
                       variant named ``control`` or ``popularity``, else the first)
``attribution_window`` how long after an exposure a cart or purchase of a shown
                       item counts for it (``30m``, ``1h``, seconds; default 1h)
``max_error_rate``     guardrail: errors / requests of a variant (default 0.01)
``max_p99_ms``         guardrail: p99 latency of a variant in ms (default 250)
=====================  ==========================================================

>>> from mlplatform.assignment import Experiment
>>> d = ExperimentDefinition.of(Experiment("e", "s", {"als": 0.5, "popularity": 0.5}))
>>> d.control, d.window_seconds
('popularity', 3600.0)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.assignment import Experiment, load_experiments
from mlplatform.config import duration_seconds, source_root
from mlplatform.errors import ConfigError

__all__ = ["DEFAULT_WINDOW_SECONDS", "ExperimentDefinition", "load_definitions"]

DEFAULT_WINDOW_SECONDS = 3600.0
CONTROL_NAMES = ("control", "popularity")


@dataclass(frozen=True)
class ExperimentDefinition:
    """An experiment as the analysis sees it (``experiment`` assigns the units)."""

    experiment: Experiment
    control: str
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.experiment.variants)

    @classmethod
    def of(cls, experiment: Experiment, table: dict[str, Any] | None = None
           ) -> ExperimentDefinition:
        """The definition of ``experiment`` with the analysis keys of its TOML ``table``."""
        table = table or {}
        where = f"experiment {experiment.name!r}"
        variants = list(experiment.variants)
        control = table.get("control")
        if control is None:
            control = next((v for v in CONTROL_NAMES if v in variants), variants[0])
        elif control not in variants:
            raise ConfigError(f"{where}: control must be one of its variants "
                              f"({', '.join(variants)}), got {control!r}")
        raw_window = table.get("attribution_window", DEFAULT_WINDOW_SECONDS)
        window = (duration_seconds(raw_window) if isinstance(raw_window, str)
                  else float(raw_window) if isinstance(raw_window, int | float) else None)
        if window is None or window <= 0:
            raise ConfigError(f"{where}: attribution_window must be a duration such as "
                              f"'30m' or seconds > 0, got {raw_window!r}")
        limits = {}
        for key, default in (("max_error_rate", 0.01), ("max_p99_ms", 250.0)):
            value = table.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}: {key} must be a number >= 0, got {value!r}")
            limits[key] = float(value)
        return cls(experiment, str(control), window, **limits)


def load_definitions(path: Path | None = None) -> dict[str, ExperimentDefinition]:
    """Every experiment of the TOML file (default ``config/experiments.toml``)."""
    path = Path(path or source_root() / "config" / "experiments.toml")
    experiments = load_experiments(path)
    tables = tomllib.loads(path.read_text())
    return {name: ExperimentDefinition.of(exp, tables.get(name))
            for name, exp in experiments.items()}
