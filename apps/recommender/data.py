"""Interactions: loading, id maps both ways, confidence weights, time splits, matrices.

An interactions table has the columns ``user_id``, ``item_id``, ``timestamp`` and
optionally ``event_type`` (view, add_to_cart, purchase) or ``weight``. Ids may be strings
or integers; the model works on dense indices and ``IdMap`` translates both ways.

>>> ids = IdMap.from_ids(["i2", "i1", "i2"])
>>> ids.lookup("i2"), ids.external(0), len(ids)
(1, 'i1', 2)
>>> IdMap.from_ids([30, 7]).lookup("7"), IdMap.from_ids([30, 7]).external(1)
(0, 30)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "EVENT_TYPES",
    "IdMap",
    "event_weights_of",
    "load_interactions",
    "load_table",
    "normalise_interactions",
    "time_split",
    "user_item_matrix",
]

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase")
# How much one event says about a user's taste; summed per (user, item) pair, then
# turned into a confidence by the model (see models.confidence). Tuned on the
# simulated shop with `mlsuite recommender evaluate` (see the package docstring).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "add_to_cart": 4.0, "purchase": 8.0}


@dataclass(frozen=True)
class IdMap:
    """External ids (strings or integers) <-> dense indices 0..n-1, both ways.

    Lookups take text (as ids arrive in URLs and JSON) and answer ``None`` for an id
    the map does not know; ``external`` gives the id back in its original type.
    """

    ids: np.ndarray  # external ids in index order: int64, or str
    index: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def from_ids(cls, ids: Iterable[Any]) -> IdMap:
        values = pd.unique(pd.Series(list(ids) if not isinstance(ids, pd.Series) else ids))
        if values.dtype.kind in "iu":
            arr = np.sort(values.astype(np.int64))
        else:
            arr = np.sort(values.astype(str))
        return cls.of_array(arr)

    @classmethod
    def of_array(cls, arr: np.ndarray) -> IdMap:
        """A map over ids already in index order (as saved by ``ids``)."""
        keys = arr.astype(str) if arr.dtype.kind in "iu" else arr
        return cls(arr, {str(k): i for i, k in enumerate(keys.tolist())})

    @property
    def kind(self) -> str:
        return "int" if self.ids.dtype.kind in "iu" else "str"

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: object) -> bool:
        return self.lookup(key) is not None

    def lookup(self, key: object) -> int | None:
        """The index of ``key`` (text or its original type), or None when unknown."""
        if self.kind == "int":
            try:
                key = int(key)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                return None
        return self.index.get(str(key))

    def indices(self, keys: Iterable[Any]) -> np.ndarray:
        """Indices of ``keys`` (vectorised), -1 where unknown."""
        values = pd.Series(keys if isinstance(keys, pd.Series) else list(keys), dtype=object)
        if self.kind == "int":
            values = pd.to_numeric(values, errors="coerce")
            found = self._pd_index.get_indexer(values.fillna(-(2**62)).astype(np.int64))
        else:
            found = self._pd_index.get_indexer(values.astype(str))
        return found.astype(np.int64)

    @functools.cached_property
    def _pd_index(self) -> pd.Index:
        return pd.Index(self.ids)

    def external(self, idx: int) -> Any:
        """The external id of index ``idx``, as a plain Python ``int`` or ``str``."""
        return self.ids[idx].item()

    def externals(self, idx: np.ndarray | Sequence[int]) -> list[Any]:
        return self.ids[np.asarray(idx, dtype=np.int64)].tolist()


def load_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a .csv or .parquet file, got {suffix or 'no extension'!r}")


def load_interactions(path: Path) -> pd.DataFrame:
    """Interactions from CSV or Parquet, validated and normalised (``normalise_interactions``)."""
    try:
        return normalise_interactions(load_table(path))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Columns user_id, item_id, timestamp (UTC), event_type or weight; sorted by time.

    Integer ids stay integers; any other id becomes a string. A row with a missing id or
    timestamp, an unknown event type or a weight that is not a positive number raises
    ``ValueError`` naming the column and the bad value.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}; expected user_id, item_id, "
                         f"timestamp and optionally event_type or weight, got {list(df.columns)}")
    out = pd.DataFrame({"user_id": _ids(df["user_id"], "user_id"),
                        "item_id": _ids(df["item_id"], "item_id"),
                        "timestamp": _timestamps(df["timestamp"])})
    if "event_type" in df.columns:
        events = df["event_type"].astype(str)
        bad = sorted(set(events.unique()) - set(EVENT_TYPES))
        if bad:
            raise ValueError(f"event_type must be one of {', '.join(EVENT_TYPES)}, got {bad[:5]}")
        out["event_type"] = events.to_numpy()
    if "weight" in df.columns:
        weight = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64)
        bad_rows = ~(np.isfinite(weight) & (weight > 0))
        if bad_rows.any():
            raise ValueError(f"weight must be a number > 0, got {df['weight'][bad_rows].iloc[0]!r} "
                             f"(row {int(np.flatnonzero(bad_rows)[0])})")
        out["weight"] = weight
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _ids(col: pd.Series, name: str) -> pd.Series:
    if col.isna().any():
        raise ValueError(f"{name} has {int(col.isna().sum())} missing value(s)")
    if col.dtype.kind in "iu":
        return col.astype(np.int64)
    return col.astype(str)


def _timestamps(col: pd.Series) -> pd.Series:
    if col.dtype.kind in "iuf":  # epoch seconds
        ts = pd.to_datetime(col, unit="s", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    if ts.isna().any():
        first = col[ts.isna()].iloc[0]
        raise ValueError(f"timestamp must be a date-time or epoch seconds, got {first!r}")
    return ts


def event_weights_of(df: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    """Each row's weight: its ``weight`` column, else the weight of its event type, else 1."""
    if "weight" in df.columns:
        return df["weight"].to_numpy(dtype=np.float32)
    if "event_type" in df.columns:
        lookup = {e: float(weights.get(e, 1.0)) for e in EVENT_TYPES}
        return df["event_type"].map(lookup).to_numpy(dtype=np.float32)
    return np.ones(len(df), dtype=np.float32)


def time_split(df: pd.DataFrame, test_fraction: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split at the time before which ``1 - test_fraction`` of the interactions happened.

    Everything strictly before the cut trains, the rest tests: the model never sees the
    future it is scored on.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(df) < 2:
        raise ValueError(f"need at least 2 interactions to split, got {len(df)}")
    ts = df["timestamp"]
    cut = ts.sort_values(kind="stable").iloc[int(len(df) * (1 - test_fraction))]
    train, test = df[ts < cut], df[ts >= cut]
    if train.empty or test.empty:
        raise ValueError("all interactions share one timestamp: a time split is impossible")
    return train.reset_index(drop=True), test.reset_index(drop=True)


def user_item_matrix(df: pd.DataFrame, users: IdMap, items: IdMap,
                     weights: Mapping[str, float]) -> sp.csr_matrix:
    """Summed event weights per (user, item) as a CSR matrix; unknown ids are dropped."""
    rows = users.indices(df["user_id"])
    cols = items.indices(df["item_id"])
    data = event_weights_of(df, weights)
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((data[keep], (rows[keep], cols[keep])),
                           shape=(len(users), len(items)), dtype=np.float32)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix
