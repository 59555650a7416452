"""Ranking helpers shared by serving and evaluation: top n per user, excluding items.

>>> ids, scores = top_n(np.array([[0.1, 0.9, -np.inf, 0.5]], dtype=np.float32), 3)
>>> ids.tolist()
[[1, 3, 0]]
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["exclude", "top_n"]


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best items per row, best first (ties: lower index first); -1 pads rows
    with fewer than ``n`` scorable (finite) items. Deterministic."""
    rows, n_items = scores.shape
    k = min(n, n_items)
    if rows == 1 and 0 < k < n_items:  # the per-request path: one user, 1-d and cheaper
        row = scores[0]
        part = np.argpartition(-row, k - 1)[:k]
        part.sort()  # ties then resolve to the lower index: lexsort is stable on it
        best = row[part]
        order = np.argsort(-best, kind="stable")
        ids, best = part[order].astype(np.int64), best[order]
        ids[~np.isfinite(best)] = -1
        if k < n:
            ids = np.pad(ids, (0, n - k), constant_values=-1)
            best = np.pad(best, (0, n - k), constant_values=-np.inf)
        return ids[None, :], best[None, :].astype(np.float32, copy=False)
    if k <= 0 or rows == 0:
        width = max(n, 0)
        return np.full((rows, width), -1, dtype=np.int64), np.zeros((rows, width), np.float32)
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), (rows, n_items))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=-1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1)
    ids[~np.isfinite(best)] = -1
    if k < n:  # fewer items than asked for
        ids = np.pad(ids, ((0, 0), (0, n - k)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, n - k)), constant_values=-np.inf)
    return ids, best.astype(np.float32, copy=False)


def exclude(scores: np.ndarray, histories: sp.csr_matrix) -> None:
    """Set the score of every item in a user's history to -inf (in place)."""
    rows = np.repeat(np.arange(histories.shape[0]), np.diff(histories.indptr))
    scores[rows, histories.indices] = -np.inf
