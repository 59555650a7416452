"""The model bundle: what one registered version holds and how it is stored.

A version serves every A/B variant at once, so promoting or rolling back moves them
together and one response names one version. It holds:

- the id maps (users, items) and each known user's training history (summed event
  weights), the starting point a user's live events are added to;
- ``cutoff``: the time of the newest training interaction. Live events up to it are
  already in the history, so only newer ones are added (no double counting after a
  retrain, whatever the live history in Redis still holds);
- the event weights the models were trained with, so serving weighs events the same way;
- segments per known user and categories per item at training time (the popularity
  baseline per segment, fallbacks when Feast cannot answer);
- the variants: ``als``, ``bpr`` (when trained) and ``popularity`` (always: it is also
  the cold-start fallback).

Files (no pickle, so an artifact never runs code when loaded)::

    bundle.json                 variants, event weights, cutoff, segment/category names
    ids.npz                     users, items, user_segment, item_category
    history.npz                 CSR training history
    <variant>/params.json, <variant>/arrays.npz
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.data import IdMap
from recommender.models import Recommender
from recommender.popularity import PopularityRecommender
from recommender.variants import load_recommender

__all__ = ["FORMAT", "VARIANT_ORDER", "ModelBundle"]

FORMAT = 1
# The variant served when the assigned one is not in the bundle: the first present.
VARIANT_ORDER = ("als", "bpr", "popularity")


@dataclass(eq=False)
class ModelBundle:
    """Everything one registered version needs to serve (see the module docstring)."""

    users: IdMap
    items: IdMap
    history: sp.csr_matrix
    cutoff: float  # epoch seconds of the newest training interaction
    event_weights: dict[str, float]
    models: dict[str, Recommender]
    segments: list[str] = field(default_factory=list)
    user_segment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    categories: list[str] = field(default_factory=list)
    item_category: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history = self.history.tocsr().astype(np.float32)
        if len(self.user_segment) != len(self.users):
            self.user_segment = np.full(len(self.users), -1, np.int16)
        if len(self.item_category) != len(self.items):
            self.item_category = np.full(len(self.items), -1, np.int16)
        self.rebuild_lookups()

    def rebuild_lookups(self) -> None:
        """Recompute the name -> code lookups (after segments or categories changed)."""
        self._segment_code = {s: i for i, s in enumerate(self.segments)}
        self._category_code = {c: i for i, c in enumerate(self.categories)}

    # -- lookups -------------------------------------------------------------------------

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANT_ORDER if v in self.models]

    @property
    def popularity(self) -> PopularityRecommender:
        """The popularity baseline, in every bundle: also the cold-start fallback."""
        model = self.models["popularity"]
        assert isinstance(model, PopularityRecommender)
        return model

    def variant_for(self, assigned: str) -> str:
        """``assigned`` if this bundle has it, else the first variant it has."""
        return assigned if assigned in self.models else self.variants[0]

    def segment_code(self, segment: str | None) -> int:
        return -1 if segment is None else self._segment_code.get(segment, -1)

    def category_code(self, category: str | None) -> int:
        return -1 if category is None else self._category_code.get(category, -1)

    def histories(self, user_rows: Sequence[int] | np.ndarray,
                  live: Sequence[Mapping[int, float]] | None = None) -> sp.csr_matrix:
        """Histories of users (row -1: unknown to the model) plus live weights per item."""
        rows = np.asarray(user_rows, dtype=np.int64)
        base = self._rows(rows)
        if not live or not any(live):
            return base
        r, c, v = [], [], []
        for i, weights in enumerate(live):
            for item, w in weights.items():
                r.append(i)
                c.append(item)
                v.append(w)
        extra = sp.csr_matrix((np.asarray(v, np.float32), (r, c)), shape=base.shape)
        merged = (base + extra).tocsr()
        merged.sort_indices()
        return merged

    def history_of(self, row: int, live: Mapping[int, float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """One user's history as (item indices, summed weights): the per-request path."""
        h = self.history
        lo, hi = (int(h.indptr[row]), int(h.indptr[row + 1])) if row >= 0 else (0, 0)
        items, weights = h.indices[lo:hi], h.data[lo:hi]
        if not live:
            return items, weights
        merged = dict(zip(items.tolist(), weights.tolist(), strict=True))
        for item, w in live.items():
            merged[item] = merged.get(item, 0.0) + w
        return (np.fromiter(merged.keys(), np.int32, len(merged)),
                np.fromiter(merged.values(), np.float32, len(merged)))

    def _rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Training-history rows (an empty row for -1), gathered without scipy indexing."""
        h = self.history
        if len(rows) == 1:  # the per-request path: slice one row, no gathering
            r = int(rows[0])
            lo, hi = (int(h.indptr[r]), int(h.indptr[r + 1])) if r >= 0 else (0, 0)
            return sp.csr_matrix((h.data[lo:hi], h.indices[lo:hi], np.array([0, hi - lo])),
                                 shape=(1, h.shape[1]))
        known = rows >= 0
        safe = np.where(known, rows, 0)
        starts = h.indptr[safe]
        lengths = np.where(known, h.indptr[safe + 1] - starts, 0)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return sp.csr_matrix((h.data[take], h.indices[take], indptr),
                             shape=(len(rows), h.shape[1]))

    # -- storage -------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "variants": self.variants,
            "cutoff": self.cutoff,
            "event_weights": self.event_weights,
            "segments": self.segments,
            "categories": self.categories,
            "metrics": self.metrics,
            "catalogue_size": len(self.items),
            "known_users": len(self.users),
        }
        (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
        np.savez(folder / "ids.npz", users=self.users.ids, items=self.items.ids,
                 user_segment=self.user_segment, item_category=self.item_category)
        sp.save_npz(folder / "history.npz", self.history)
        for name, model in self.models.items():
            model.save(folder / name)

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        folder = Path(folder)
        meta = json.loads((folder / "bundle.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: bundle format {meta.get('format')!r} is not {FORMAT}")
        with np.load(folder / "ids.npz", allow_pickle=False) as ids:
            users, items = IdMap.of_array(ids["users"]), IdMap.of_array(ids["items"])
            user_segment, item_category = ids["user_segment"], ids["item_category"]
        return cls(
            users=users, items=items,
            history=sp.load_npz(folder / "history.npz").tocsr(),
            cutoff=float(meta["cutoff"]),
            event_weights={k: float(v) for k, v in meta["event_weights"].items()},
            models={name: load_recommender(folder / name) for name in meta["variants"]},
            segments=list(meta["segments"]), user_segment=user_segment,
            categories=list(meta["categories"]), item_category=item_category,
            metrics=dict(meta.get("metrics", {})),
        )
