"""The fraud model's inner loops, compiled (numba): a row's leaf in every tree, the raw
score and the per-feature path credits (``fraud.trees``), and the hybrid model's score,
contributions and top reasons (``fraud.predictors.HybridPredictor``).

numpy cannot walk a tree without one call per level over every row and tree, and at one
row (a /score request) its per-call cost is most of the work: a bincount, a dozen
gathers, the QuickScorer masks over every split. Here a row visits only the nodes on its
paths. Compiled once per machine and cached on disk (next to this file, or numba's user
cache when that is read-only; in memory per process when neither can be written);
imported on first use, so a command that scores nothing does not pay numba's import
(0.4 s).

The loops fix the order of every floating-point sum (trees in order, then each path's
levels from the root; features in order), so one row gets the same bits alone as inside
a batch. The arrays come packed (``TreeEnsemble.packed``: the nodes' integers and floats
as two tables), because numba checks every argument's type on every call: a /score
request pays that per argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

__all__ = ["hybrid", "leaves", "scores"]


def _compiled(f: Callable[..., Any]) -> Any:
    try:
        return numba.njit(cache=True, nogil=True)(f)
    except RuntimeError:  # no writable cache directory (read-only install, no home)
        return numba.njit(nogil=True)(f)


@_compiled
def leaves(X: np.ndarray, node_i: np.ndarray, node_f: np.ndarray, roots: np.ndarray,
           depth: int) -> np.ndarray:  # pragma: no cover - compiled
    """The leaf each row of ``X`` reaches in each tree, shape (rows, trees). ``node_i``
    rows: split feature, left child, right child, NaN goes left (0/1); a leaf is its own
    child. ``node_f`` rows: threshold, value. Left when ``x <= threshold``."""
    n, trees = X.shape[0], roots.shape[0]
    out = np.empty((n, trees), dtype=np.int64)
    for i in range(n):
        for t in range(trees):
            node = roots[t]
            for _ in range(depth):
                child = node_i[1, node]
                if child == node:
                    break
                v = X[i, node_i[0, node]]
                if v != v:
                    go_left = node_i[3, node] != 0
                else:
                    go_left = v <= node_f[0, node]
                node = child if go_left else node_i[2, node]
            out[i, t] = node
    return out


@_compiled
def scores(leaf: np.ndarray, node_f: np.ndarray, baseline: float, path_feature: np.ndarray,
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
            total += node_f[1, node]
            if contributions:
                for d in range(levels):
                    C[i, path_feature[node, d]] += path_credit[node, d]
        raw[i] = total
    return raw, C


@_compiled
def hybrid(X: np.ndarray, node_i: np.ndarray, node_f: np.ndarray, roots: np.ndarray,
           depth: int, path_feature: np.ndarray, path_credit: np.ndarray,
           layer_f: np.ndarray, layer_b: np.ndarray, params: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """The hybrid model on the rows of ``X``: per row its score
    ``sigmoid(a * trees + w . z + b)`` and its top ``k`` reasons: the columns with the
    largest positive contributions ``a * path credit + w_j * z_j``, largest first (-1
    past the last; an absent one-hot category never counts; ties to the later column),
    those contributions and the columns' values. ``layer_f`` rows: mean, 1 / std, weight per
    feature; ``layer_b`` rows: logged (``z`` from ``log1p`` of the positive part plus the
    negative part), one-hot category. ``params``: a, b, the trees' baseline."""
    n, width = X.shape
    tree_weight, intercept = params[0], params[1]
    leaf = leaves(X, node_i, node_f, roots, depth)
    raw, C = scores(leaf, node_f, params[2], path_feature, path_credit, width, True)
    score = np.empty(n)
    top = np.full((n, max(k, 0)), -1, dtype=np.int64)
    top_c = np.zeros((n, max(k, 0)))
    top_x = np.zeros((n, max(k, 0)))
    for i in range(n):
        linear = 0.0
        for j in range(width):
            v = X[i, j]
            if v != v:  # missing: the trees route it; the layer leaves it at its mean
                v = layer_f[0, j]
            elif layer_b[0, j]:
                v = (math.log1p(v) if v > 0.0 else 0.0) + (v if v < 0.0 else 0.0)
            lin = (v - layer_f[0, j]) * layer_f[1, j] * layer_f[2, j]
            linear += lin
            C[i, j] = tree_weight * C[i, j] + lin
        z = min(max(tree_weight * raw[i] + linear + intercept, -35.0), 35.0)
        score[i] = 1.0 / (1.0 + math.exp(-z))
        for r in range(k):  # k is a handful: k passes over the row
            best, most = -1, 0.0
            for j in range(width):
                c = C[i, j]
                if c > most or (c == most and best >= 0 and j > best):
                    if layer_b[1, j] and X[i, j] == 0.0:
                        continue
                    taken = False
                    for q in range(r):
                        if top[i, q] == j:
                            taken = True
                    if not taken:
                        best, most = j, c
            if best < 0:
                break
            top[i, r], top_c[i, r], top_x[i, r] = best, most, X[i, best]
    return score, top, top_c, top_x
