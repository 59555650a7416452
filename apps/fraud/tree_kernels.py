"""The tree ensemble's inner loops, compiled (numba): a row's leaf in every tree, the
raw score and the per-feature path credits.

numpy cannot walk a tree without one call per level over every row and tree, and at one
row (a /score request) its per-call cost is most of the work: a bincount, a dozen
gathers, the QuickScorer masks over every split. Here a row visits only the nodes on its
paths. Compiled once per machine and cached on disk (next to this file, or numba's user cache
when that is read-only; in memory per process when neither can be written); imported on
first use, so a command that scores nothing does not pay numba's import (0.4 s).

The loops fix the order of every floating-point sum (trees in order, then each path's
levels from the root), so one row gets the same bits alone as inside a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

__all__ = ["leaves", "scores"]


def _compiled(f: Callable[..., Any]) -> Any:
    try:
        return numba.njit(cache=True, nogil=True)(f)
    except RuntimeError:  # no writable cache directory (read-only install, no home)
        return numba.njit(nogil=True)(f)


@_compiled
def leaves(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
           missing_left: np.ndarray, left: np.ndarray, right: np.ndarray,
           roots: np.ndarray, depth: int) -> np.ndarray:  # pragma: no cover - compiled
    """The leaf each row of ``X`` reaches in each tree, shape (rows, trees): left when
    ``x <= threshold``, a NaN as its split's ``missing_left`` says."""
    n, trees = X.shape[0], roots.shape[0]
    out = np.empty((n, trees), dtype=np.int64)
    for i in range(n):
        for t in range(trees):
            node = roots[t]
            for _ in range(depth):
                child = left[node]
                if child == node:  # a leaf is its own child
                    break
                v = X[i, feature[node]]
                if v != v:
                    go_left = missing_left[node]
                else:
                    go_left = v <= threshold[node]
                node = child if go_left else right[node]
            out[i, t] = node
    return out


@_compiled
def scores(leaf: np.ndarray, value: np.ndarray, baseline: float, path_feature: np.ndarray,
           path_credit: np.ndarray, width: int, contributions: bool
           ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Per row, the raw score (``baseline`` plus its leaves' values, trees in order) and,
    when asked, each feature's share: the credits on the row's paths, per tree then level
    (an empty (rows, 0) array otherwise)."""
    n, trees = leaf.shape
    raw = np.empty(n)
    C = np.zeros((n, width if contributions else 0))
    levels = path_feature.shape[1]
    for i in range(n):
        total = baseline
        for t in range(trees):
            node = leaf[i, t]
            total += value[node]
            if contributions:
                for d in range(levels):
                    C[i, path_feature[node, d]] += path_credit[node, d]
        raw[i] = total
    return raw, C
