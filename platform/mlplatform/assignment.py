"""A/B assignment and canary rollout from one deterministic hash.

``bucket(salt, unit_id)`` is SHA-256 of ``"salt:unit_id"``, so the same user lands in the
same bucket in every process, on every machine and after every restart, with nothing
stored. Variants own contiguous ranges of buckets in proportion to their weights; a
canary takes the first ``fraction`` of buckets, so its users never flip between versions
while the fraction only grows.

>>> bucket("exp-1", "u42") == bucket("exp-1", "u42")
True
>>> exp = Experiment("demo", "salt", {"a": 0.5, "b": 0.5})
>>> exp.assign("u42") in ("a", "b")
True
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter

from mlplatform.config import source_root
from mlplatform.errors import ConfigError

__all__ = ["BUCKETS", "bucket", "Experiment", "load_experiments", "in_rollout", "EXPOSURES"]

BUCKETS = 10_000

EXPOSURES = Counter(
    "mlsuite_ab_exposures_total", "Units exposed to an experiment variant",
    ["experiment", "variant"],
)


def bucket(salt: str, unit_id: str, buckets: int = BUCKETS) -> int:
    """The unit's bucket in [0, buckets) for this salt; identical everywhere."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def in_rollout(salt: str, unit_id: str, fraction: float) -> bool:
    """Whether the unit is in the first ``fraction`` of buckets (a canary's share).

    >>> in_rollout("canary", "u1", 0.0), in_rollout("canary", "u1", 1.0)
    (False, True)
    """
    return bucket(salt, unit_id) < round(fraction * BUCKETS)


@dataclass(frozen=True)
class Experiment:
    """Variants with weights; ``assign`` gives a unit its variant and counts the exposure."""

    name: str
    salt: str
    variants: dict[str, float]
    _bounds: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError(f"experiment {self.name!r} must have at least one variant")
        bad = {k: w for k, w in self.variants.items() if not isinstance(w, int | float) or w < 0}
        total = sum(w for w in self.variants.values() if isinstance(w, int | float))
        if bad or total <= 0:
            raise ConfigError(
                f"experiment {self.name!r}: variant weights must be numbers >= 0 with a positive "
                f"sum, got {dict(self.variants)}"
            )
        bounds, cumulative = [], 0.0
        for variant, weight in self.variants.items():
            cumulative += weight / total
            bounds.append((round(cumulative * BUCKETS), variant))
        object.__setattr__(self, "_bounds", tuple(bounds))

    def variant_of(self, unit_id: str) -> str:
        """The unit's variant, without counting an exposure."""
        b = bucket(self.salt, unit_id)
        for upper, variant in self._bounds:
            if b < upper:
                return variant
        return self._bounds[-1][1]

    def assign(self, unit_id: str) -> str:
        variant = self.variant_of(unit_id)
        EXPOSURES.labels(self.name, variant).inc()
        return variant


def load_experiments(path: Path | None = None) -> dict[str, Experiment]:
    """Experiments from a TOML file: one table per experiment with ``salt`` and ``variants``.

    The default is ``config/experiments.toml`` in the source tree.
    """
    path = path or source_root() / "config" / "experiments.toml"
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"experiments file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"experiments file {str(path)!r} is not valid TOML: {exc}") from None
    experiments = {}
    for name, table in data.items():
        if not isinstance(table, dict) or "variants" not in table:
            raise ConfigError(f"{path}: [{name}] must have a 'variants' table of weights")
        experiments[name] = Experiment(name, str(table.get("salt", name)), dict(table["variants"]))
    return experiments
