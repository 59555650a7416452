"""The popularity baseline, globally and per segment; also the cold-start fallback.

>>> import scipy.sparse as sp
>>> m = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0]], dtype=np.float32))
>>> pop = PopularityRecommender()
>>> pop.fit(m)
>>> [round(float(s), 2) for s in pop.ranking()]
[0.67, 1.0, 0.33]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.models import Recommender

__all__ = ["PopularityRecommender"]


class PopularityRecommender(Recommender):
    """Share of users who interacted with each item, globally and per segment.

    A segment's share is shrunk towards the global share (``smoothing`` pseudo-users),
    so a small segment's few users do not dictate its list. Also the cold-start fallback.
    """

    kind = "popularity"

    def __init__(self, smoothing: float = 20.0) -> None:
        self.smoothing = smoothing
        self.global_share = np.zeros(0, dtype=np.float32)
        self.group_share = np.zeros((0, 0), dtype=np.float32)

    @property
    def n_items(self) -> int:
        return len(self.global_share)

    @property
    def params(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing}

    def fit(self, user_items: sp.csr_matrix, *, groups: np.ndarray | None = None,
            progress: bool = False) -> None:
        seen = (user_items > 0).astype(np.float32)
        n_users = max(user_items.shape[0], 1)
        counts = np.asarray(seen.sum(axis=0)).ravel()
        self.global_share = (counts / n_users).astype(np.float32)
        self._item_counts = counts
        n_groups = int(groups.max()) + 1 if groups is not None and len(groups) else 0
        shares = np.zeros((n_groups, user_items.shape[1]), dtype=np.float32)
        for g in range(n_groups):
            members = np.flatnonzero(groups == g)  # type: ignore[comparison-overlap]
            group_counts = np.asarray(seen[members].sum(axis=0)).ravel()
            shares[g] = (group_counts + self.smoothing * self.global_share) / (
                len(members) + self.smoothing)
        self.group_share = shares

    def ranking(self, group: int = -1) -> np.ndarray:
        """Scores of every item for one segment (-1: everyone)."""
        if 0 <= group < len(self.group_share):
            return self.group_share[group]
        return self.global_share

    def score_one(self, items: np.ndarray, weights: np.ndarray, group: int = -1) -> np.ndarray:
        return self.ranking(group).copy()

    def scores(self, histories: sp.csr_matrix, groups: np.ndarray | None = None) -> np.ndarray:
        n = histories.shape[0]
        if groups is None or len(self.group_share) == 0:
            return np.tile(self.global_share, (n, 1))
        table = np.vstack([self.group_share, self.global_share[None, :]])
        rows = np.where((groups >= 0) & (groups < len(self.group_share)), groups, len(table) - 1)
        return table[rows]

    def add_items(self, item_users: sp.csr_matrix) -> None:
        users = max(item_users.shape[1], 1)
        share = (np.asarray((item_users > 0).sum(axis=1)).ravel() / users).astype(np.float32)
        self.global_share = np.concatenate([self.global_share, share])
        if len(self.group_share):
            # Segment counts of the new items are unknown here: use the global share.
            self.group_share = np.hstack(
                [self.group_share, np.tile(share, (len(self.group_share), 1))])

    def blended(self, live: np.ndarray, alpha: float) -> PopularityRecommender:
        """A copy whose shares mix in live counts (``live``: per item, this model's order).

        Each row (global, every segment) becomes ``(1 - alpha) * row + alpha * p * row.sum()``
        with ``p = live / live.sum()``: the live distribution at the row's own scale, so
        ``alpha = 0`` gives the trained shares back exactly and scores keep their meaning.
        Live counts are global (events carry no segment); segments keep their own prior.

        >>> pop = PopularityRecommender()
        >>> pop.global_share = np.array([0.6, 0.2, 0.2], np.float32)
        >>> [round(float(s), 2) for s in pop.blended(np.array([0.0, 0.0, 5.0]), 0.5).ranking()]
        [0.3, 0.1, 0.6]
        """
        out = PopularityRecommender(self.smoothing)
        total = float(live.sum())
        if total <= 0 or alpha <= 0 or len(live) != self.n_items:
            out.global_share, out.group_share = self.global_share, self.group_share
            return out
        p = (live / total).astype(np.float32)
        g = self.global_share
        out.global_share = ((1 - alpha) * g + alpha * p * g.sum()).astype(np.float32)
        if len(self.group_share):
            rows = self.group_share
            out.group_share = ((1 - alpha) * rows + alpha * p[None, :]
                               * rows.sum(axis=1, keepdims=True)).astype(np.float32)
        else:
            out.group_share = self.group_share
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"global_share": self.global_share, "group_share": self.group_share}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.global_share = arrays["global_share"]
        self.group_share = arrays["group_share"]
