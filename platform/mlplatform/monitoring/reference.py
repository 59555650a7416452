"""Training reference profiles: what each input feature looked like when a model version was trained.

A trainer writes ``reference.json`` into the version's folder (``with_reference`` wraps
the registry writer), so the profile lives and dies with the version. Per feature:

- numeric: a seeded sample of up to ``SAMPLE_SIZE`` values (6 significant digits), the
  row count, mean, standard deviation and quartiles;
- categorical (text values, or numbers with at most ``MAX_CATEGORIES_AS_NUMBERS``
  distinct values, as Evidently decides): the count of every category over all rows.

The profile also carries its ``source``: where live traffic of this model's inputs is
found and how one live record becomes the same features (``featurise``). The app's
trainer writes it, so the platform reads the decision or event stream of any app without
importing it, and training and live rows go through one function (no skew). Keys:

- ``stream``: the Redis stream (archived to the lake under the same name);
- ``json_field``: the stream field holding a JSON record (else the fields are the row);
- ``vector``: the key of the row holding a ``{feature: number}`` dict (all features);
- ``onehot``: ``{prefix: name}``: keys ``<prefix><value>`` of the vector folded into one
  categorical feature ``name`` (``"(none)"`` when no such key is set);
- ``fields``: row fields taken as they are;
- ``lookups``: ``{name: {"field", "table", "missing"}}``: ``table[row[field]]``;
- ``counts``: ``{name: {"by", "time", "seconds"}}``: rows of the same ``by`` within the
  last ``seconds`` (by the ``time`` field), this one included;
- ``clock``: features that follow the time of day (an hour, its sine and cosine): drift
  reports judge them only on windows of a day or more (``driftreport``).

>>> rows = [{"v": {"amount": 10.0, "mcat=food": 1.0}}, {"v": {"amount": 30.0}}]
>>> featurise(rows, {"vector": "v", "onehot": {"mcat=": "merchant_category"}})
[{'merchant_category': 'food', 'amount': 10.0}, {'merchant_category': '(none)', 'amount': 30.0}]
>>> p = build_profile(featurise(rows, {"vector": "v", "onehot": {"mcat=": "merchant_category"}}),
...                   source={}, service="fraud")
>>> p["features"]["merchant_category"]["counts"], p["features"]["amount"]["kind"]
({'(none)': 1, 'food': 1}, 'categorical')
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.registry import ModelRegistry, ModelVersion

__all__ = [
    "REFERENCE_FILE",
    "SAMPLE_SIZE",
    "featurise",
    "category_key",
    "build_profile",
    "with_reference",
    "load_reference",
    "served_reference",
]

REFERENCE_FILE = "reference.json"
SAMPLE_SIZE = 5000
MAX_CATEGORIES_AS_NUMBERS = 5  # Evidently: a numeric column with <= 5 values is categorical
NONE = "(none)"
MISSING = "(missing)"

Row = Mapping[str, Any]
Features = dict[str, float | str]


def category_key(value: Any) -> str:
    """The text a categorical value is counted under, the same in training and live.

    >>> category_key(1.0), category_key(3), category_key("web"), category_key(None)
    ('1', '3', 'web', '(missing)')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return f"{float(value):g}"
    return str(value)


def featurise(rows: Sequence[Row], source: Mapping[str, Any]) -> list[Features]:
    """The input features of each row as ``source`` describes them (rows in time order
    when ``counts`` are asked for)."""
    vector, onehot = source.get("vector"), dict(source.get("onehot") or {})
    fields = list(source.get("fields") or [])
    lookups = dict(source.get("lookups") or {})
    counts = {name: _rolling_counts(rows, spec) for name, spec in
              dict(source.get("counts") or {}).items()}
    prefix_of: dict[str, str | None] = {}  # vector key -> its one-hot prefix, if any
    # Per vector layout (its keys in order: a service logs the same layout row after
    # row), its plain keys and its one-hot keys (key, feature, prefix length); None when
    # a plain key is also a one-hot feature's name (then the keys go one by one, in order).
    layouts: dict[tuple[str, ...], tuple[tuple[str, ...], list[tuple[str, str, int]]] | None] = {}
    out: list[Features] = []
    for n, row in enumerate(rows):
        x: Features = {}
        if vector is not None:
            for name in onehot.values():
                x[name] = NONE
            values = row.get(vector) or {}
            keys = tuple(values)
            if keys not in layouts:
                layouts[keys] = _layout(keys, onehot, prefix_of)
            layout = layouts[keys]
            if layout is not None:
                plain, folded = layout
                x.update(zip(plain, map(values.__getitem__, plain)))
                for key, name, cut in folded:
                    if values[key]:
                        x[name] = key[cut:]
            else:
                for key, value in values.items():
                    folded_prefix = prefix_of[key]
                    if folded_prefix is None:
                        x[key] = value
                    elif value:
                        x[onehot[folded_prefix]] = key[len(folded_prefix):]
        for name in fields:
            x[name] = row.get(name, MISSING)
        for name, spec in lookups.items():
            found = spec["table"].get(str(row.get(spec["field"])), spec.get("missing", MISSING))
            if found is not None:  # a lookup whose "missing" is null leaves the row out
                x[name] = found
        for name, values in counts.items():
            x[name] = float(values[n])
        out.append(x)
    return out


def _layout(keys: tuple[str, ...], onehot: Mapping[str, str],
            prefix_of: dict[str, str | None]) -> tuple[tuple[str, ...],
                                                      list[tuple[str, str, int]]] | None:
    """``featurise``'s plan for a vector with ``keys``: its plain keys, and its one-hot
    keys as (key, feature, prefix length); None when a plain key is also a one-hot
    feature's name (the order of the assignments then decides)."""
    for key in keys:
        if key not in prefix_of:
            prefix_of[key] = next((p for p in onehot if key.startswith(p)), None)
    plain = tuple(k for k in keys if prefix_of[k] is None)
    if set(plain) & set(onehot.values()):
        return None
    return plain, [(k, onehot[p], len(p)) for k in keys if (p := prefix_of[k]) is not None]


def _rolling_counts(rows: Sequence[Row], spec: Mapping[str, Any]) -> list[int]:
    """Per row: rows with the same ``by`` value in the ``seconds`` up to its ``time``."""
    seconds, by, time_field = float(spec["seconds"]), spec["by"], spec["time"]
    recent: dict[str, deque[float]] = {}
    out = []
    for row in rows:
        t = float(row[time_field])
        times = recent.setdefault(str(row[by]), deque())
        times.append(t)
        while times and times[0] <= t - seconds:
            times.popleft()
        out.append(len(times))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_profile(rows: Sequence[Features], *, source: Mapping[str, Any], service: str,
                  served: bool = True, sample_size: int = SAMPLE_SIZE,
                  seed: int = 42) -> dict[str, Any]:
    """The reference profile of featurised training ``rows`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names: dict[str, None] = {}
    for x in rows:
        names.update(dict.fromkeys(x))
    features: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [x[name] for x in rows if name in x]
        numeric = all(_is_number(v) for v in values)
        array = np.array(values, dtype=float) if numeric else np.zeros(0)
        if numeric:
            array = array[np.isfinite(array)]
        if numeric and len(np.unique(array)) > MAX_CATEGORIES_AS_NUMBERS:
            sample = array if len(array) <= sample_size else rng.choice(
                array, sample_size, replace=False)
            features[name] = {
                "kind": "numeric", "rows": int(len(array)),
                "mean": float(array.mean()), "std": float(array.std()),
                "quantiles": [float(q) for q in np.quantile(array, [0.0, 0.25, 0.5, 0.75, 1.0])],
                "sample": [float(f"{v:.6g}") for v in sample],
            }
        else:
            table: dict[str, int] = {}
            for v in values:
                key = category_key(v)
                table[key] = table.get(key, 0) + 1
            features[name] = {"kind": "categorical", "rows": len(values),
                              "counts": dict(sorted(table.items()))}
    return {"format": 1, "service": service, "served": served, "rows": len(rows),
            "sample_size": sample_size, "seed": seed, "source": dict(source),
            "features": features}


def with_reference(writer: Callable[[Path], None], profile: Mapping[str, Any]
                   ) -> Callable[[Path], None]:
    """A registry writer that also stores ``profile`` as ``reference.json`` in the version."""
    def write(folder: Path) -> None:
        writer(folder)
        (Path(folder) / REFERENCE_FILE).write_text(json.dumps(profile, separators=(",", ":"),
                                                              default=_json_default))
    return write


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a reference profile")


def load_reference(version: ModelVersion) -> dict[str, Any] | None:
    """The reference profile stored with ``version``; None if it was registered without.

    Versions never change once registered, so a profile is parsed once per process (the
    worker reports every minute); callers must not modify what they get.
    """
    return _load(str(version.path / REFERENCE_FILE))


@functools.lru_cache(maxsize=16)
def _load(path: str) -> dict[str, Any] | None:
    try:
        profile: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    return profile


def served_reference(registry: ModelRegistry, service: str, alias: str = "production"
                     ) -> tuple[ModelVersion, ModelVersion, dict[str, Any]] | None:
    """(the version at ``alias``, the version whose reference applies, its profile).

    The served model of ``service`` is the one whose reference says so (``served``). A
    version registered without a reference (e.g. by the retraining pipeline) is compared
    with the newest earlier version of the same model that has one. None when there is
    no such model or no reference yet.
    """
    for name in registry.names():
        current = registry.aliases(name).get(alias)
        if current is None:
            continue
        for version in reversed(registry.versions(name)):
            if version.version > current:
                continue
            profile = load_reference(version)
            if profile is None:
                continue
            if profile.get("service") == service and profile.get("served"):
                return registry.get(name, current), version, profile
            break  # this model has references, for another service or not served
    return None
