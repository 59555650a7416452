"""Predictors: immutable, thread-safe scoring functions of one model state.

A ``Predictor`` scores and explains whole requests at once: ``score(xs, k)`` takes the
request's feature dicts and returns fraud probabilities and, per row, the top ``k``
features that pushed the score up (``Reason``). Models (``fraud.models``) learn; they hand
serving a predictor, so a request never touches a model that a learner is changing.

- ``LinearPredictor``: ``sigmoid(w . z + b)`` with ``z`` the standardised, log-prepared
  features; a reason's contribution is ``w_j * z_j``. One row is scored in plain Python
  (numpy's per-call overhead dominates at that size), many rows in numpy.
- ``GBMPredictor``: a fitted gradient-boosting model; contributions by occluding its most
  important features with their training medians (vectorised over the request).
- ``HybridPredictor``: gradient-boosted trees (``fraud.trees``, plain arrays) whose
  log-odds an online logistic layer re-weighs and corrects with the standardised
  features; contributions are the trees' path credits plus the layer's ``w_j * z_j``.
  One row and a batch run the same compiled loops (``fraud.kernels.hybrid``).

>>> p = LinearPredictor.of(["amount", "card_new_device"],
...     mean={"amount": 3.0, "card_new_device": 0.1}, var={"amount": 1.0, "card_new_device": 0.25},
...     weights={"amount": 1.0, "card_new_device": 2.0}, intercept=-4.0)
>>> [score], [reasons] = p.score([{"amount": 150.0, "card_new_device": 1.0}], 2)
>>> round(score, 3), [(r.feature, round(r.contribution, 2)) for r in reasons]
(0.834, [('card_new_device', 3.6), ('amount', 2.02)])
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from fraud.features import CATEGORY_PREFIX, LOG_FEATURES

__all__ = ["Reason", "Predictor", "LinearPredictor", "GBMPredictor", "HybridPredictor", "matrix",
           "prep"]

_SMALL = 4  # rows scored in plain Python; more go through numpy


class Reason(NamedTuple):
    """One feature's push towards fraud: its value and its contribution to the score.
    (A named tuple: immutable, and cheap to build for every row of a batch.)"""

    feature: str
    value: float
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": round(self.value, 4),
                "contribution": round(self.contribution, 4)}


class Predictor(Protocol):
    """Immutable scoring function of one model state; safe to share between threads."""

    feature_names: tuple[str, ...]

    def matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Rows of feature dicts as a dense matrix in ``feature_names`` order (absent -> 0)."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities in [0, 1], one per row."""
        ...

    def explain(self, X: np.ndarray, k: int) -> list[list[Reason]]:
        """Per row, up to ``k`` features that raised the score most (positive only)."""
        ...

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        """Scores and top-``k`` reasons of feature dicts (the serving entry point)."""
        ...


def matrix(xs: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    if not xs:
        return np.empty((0, len(names)), dtype=np.float64)
    zeros = itertools.repeat(0.0)
    # map(x.get, names, zeros) runs the per-feature loop in C: x.get(name, 0.0)
    return np.array([list(map(x.get, names, zeros)) for x in xs], dtype=np.float64)


def prep(X: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    """``_Prepare`` on a matrix: log1p of the positive values of the logged columns."""
    P = X.copy()
    cols = P[:, log_mask]
    P[:, log_mask] = np.log1p(np.maximum(cols, 0.0)) + np.minimum(cols, 0.0)
    return P


def _scorematrix(p: Any, xs: Sequence[Mapping[str, float]], k: int
                  ) -> tuple[list[float], list[list[Reason]]]:
    X = p.matrix(xs)
    return _clip(p.predict(X), 0.0, 1.0).tolist(), p.explain(X, k)


def _clip(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` without its Python wrapper (a few us a call, twice per request); the
    same values, NaN included."""
    return np.minimum(np.maximum(a, lo), hi)


@functools.lru_cache(maxsize=64)
def _categories(names: tuple[str, ...]) -> tuple[bool, ...]:
    """Which of ``names`` are one-hot categories (asked per row otherwise)."""
    return tuple(n.startswith(CATEGORY_PREFIX) for n in names)


def _top_row(names: Sequence[str], x: list[float], c: list[float], k: int) -> list[Reason]:
    category = _categories(tuple(names))
    pushes = [(cj, j) for j, cj in enumerate(c) if cj > 0.0 and (x[j] != 0.0 or not category[j])]
    return [Reason(names[j], x[j], cj) for cj, j in heapq.nlargest(k, pushes)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-_clip(z, -35.0, 35.0)))


def _top(names: Sequence[str], X: np.ndarray, C: np.ndarray, k: int) -> list[list[Reason]]:
    """Top-``k`` positive contributions per row of ``C``; absent categories never count."""
    if k <= 0 or C.size == 0:
        return [[] for _ in range(len(X))]
    if len(X) <= _SMALL:  # a few rows: plain Python beats numpy's per-call overhead
        return [_top_row(names, x, c, k) for x, c in zip(X.tolist(), C.tolist())]
    C = C.copy()
    is_category = np.array(_categories(tuple(names)), dtype=bool)
    if is_category.any():
        C[:, is_category] = np.where(X[:, is_category] != 0.0, C[:, is_category], -np.inf)
    k = min(k, C.shape[1])
    # Vectorised over rows: the top k columns per row, then sorted by contribution.
    idx = np.argpartition(-C, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(C, idx, axis=1)
    order = np.argsort(-top, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    values = np.take_along_axis(X, idx, axis=1)
    return [
        [Reason(names[j], v, c) for j, v, c in zip(jrow, vrow, crow) if c > 0]
        for jrow, vrow, crow in zip(idx.tolist(), values.tolist(), top.tolist())
    ]


# ---------------------------------------------------------------------------- linear


@dataclass(frozen=True)
class LinearPredictor:
    """``sigmoid(w . (prep(x) - mean) / std + b)``; contributions ``w_j * z_j``."""

    feature_names: tuple[str, ...]
    log_mask: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    weights: np.ndarray
    intercept: float

    def matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        return matrix(xs, self.feature_names)

    def _z(self, X: np.ndarray) -> np.ndarray:
        return (prep(X, self.log_mask) - self.mean) * self.inv_std

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(self._z(X) @ self.weights + self.intercept)

    def explain(self, X: np.ndarray, k: int) -> list[list[Reason]]:
        return _top(self.feature_names, X, self._z(X) * self.weights, k)

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        if len(xs) > _SMALL:
            return _scorematrix(self, xs, k)
        scores, reasons = [], []
        for x in xs:
            s, r = self._score_one(x, k)
            scores.append(s)
            reasons.append(r)
        return scores, reasons

    def _score_one(self, x: Mapping[str, float], k: int) -> tuple[float, list[Reason]]:
        """Plain Python for one row: numpy's per-call overhead dominates at this size."""
        get = x.get
        total = self.intercept
        pushes = []
        for name, logged, mean, inv_std, w, category in self._columns:
            v = get(name, 0.0)
            c = w * ((math.log1p(v) if logged and v > 0.0 else v) - mean) * inv_std
            total += c
            if c > 0.0 and (v != 0.0 or not category):
                pushes.append((c, name, v))
        score = 1.0 / (1.0 + math.exp(-min(max(total, -35.0), 35.0)))
        top = heapq.nlargest(k, pushes) if k > 0 else []
        return score, [Reason(name, float(v), c) for c, name, v in top]

    @functools.cached_property
    def _columns(self) -> list[tuple[str, bool, float, float, float, bool]]:
        return [(n, bool(lg), float(m), float(s), float(w), n.startswith(CATEGORY_PREFIX))
                for n, lg, m, s, w in zip(self.feature_names, self.log_mask, self.mean,
                                          self.inv_std, self.weights)]

    @classmethod
    def of(cls, names: Sequence[str], mean: Any, var: Any, weights: Any, intercept: float
           ) -> LinearPredictor:
        names = tuple(names)
        var_arr = np.array([float(var.get(n, 0.0)) for n in names])
        return cls(
            feature_names=names,
            log_mask=np.array([n in LOG_FEATURES for n in names], dtype=bool),
            mean=np.array([float(mean.get(n, 0.0)) for n in names]),
            inv_std=np.where(var_arr > 0, 1.0 / np.sqrt(np.where(var_arr > 0, var_arr, 1.0)), 0.0),
            weights=np.array([float(weights.get(n, 0.0)) for n in names]),
            intercept=float(intercept),
        )


@dataclass(frozen=True)
class GBMPredictor:
    """A fitted gradient-boosting model; reasons by occluding its top features."""

    feature_names: tuple[str, ...]
    model: Any
    reference: np.ndarray  # per-column training median: the "ordinary" value
    candidates: np.ndarray  # columns ranked by split gain, the ones explanations try

    def matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        return matrix(xs, self.feature_names)

    def predict(self, X: np.ndarray) -> np.ndarray:
        with _single_thread():
            return self.model.predict_proba(X)[:, 1]  # type: ignore[no-any-return]

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        return _scorematrix(self, xs, k)

    def explain(self, X: np.ndarray, k: int) -> list[list[Reason]]:
        if k <= 0 or len(X) == 0:
            return [[] for _ in range(len(X))]
        cols = self.candidates
        base = self.predict(X)
        stacked = np.repeat(X[None, :, :], len(cols), axis=0)  # (m, n, F)
        for i, j in enumerate(cols):
            stacked[i, :, j] = self.reference[j]
        occluded = self.predict(stacked.reshape(-1, X.shape[1])).reshape(len(cols), len(X))
        C = np.zeros_like(X)
        C[:, cols] = (base[None, :] - occluded).T
        return _top(self.feature_names, X, C, k)


@dataclass(frozen=True)
class HybridPredictor:
    """``sigmoid(a * trees(x) + w . z + b)``: trees refitted on schedule, ``a, w, b``
    learned online from labels between refits (``a = 1, w = 0, b = 0``: the trees alone)."""

    feature_names: tuple[str, ...]
    trees: Any  # fraud.trees.TreeEnsemble
    log_mask: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    tree_weight: float
    weights: np.ndarray
    intercept: float
    typical: np.ndarray  # per feature, the training mean: what "usually" means in a reason

    def matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        return matrix(xs, self.feature_names)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._run(X, 0)[0]

    def explain(self, X: np.ndarray, k: int) -> list[list[Reason]]:
        return self.score_matrix(X, k)[1]

    def score_matrix(self, X: np.ndarray, k: int) -> tuple[np.ndarray, list[list[Reason]]]:
        scores, top, top_c, top_x = self._run(X, k)
        names = self.feature_names
        reasons = [[Reason(names[j], x, c) for j, x, c in zip(js, xs, cs) if j >= 0]
                   for js, xs, cs in zip(top.tolist(), top_x.tolist(), top_c.tolist())]
        return scores, reasons

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        scores, reasons = self.score_matrix(self.matrix(xs), k)
        return scores.tolist(), reasons

    def _run(self, X: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The compiled model (``fraud.kernels.hybrid``): scores, then per row the top
        columns, their contributions and values. One row (a /score request) and a batch
        run the same loops, so a transaction scored alone gets the score and reasons it
        gets in a batch, to the bit."""
        from fraud import kernels

        node_i, node_f, roots, path_feature, path_credit = self.trees.packed
        layer_f, layer_b, params = self._layer
        return kernels.hybrid(  # type: ignore[no-any-return]
            np.ascontiguousarray(X, dtype=np.float64), node_i, node_f, roots,
            self.trees.depth, path_feature, path_credit, layer_f, layer_b, params,
            max(int(k), 0))

    @functools.cached_property
    def _layer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The layer as ``fraud.kernels.hybrid`` takes it: per feature its mean, 1 / std
        and weight; whether it is logged and a one-hot category; then a, b and the
        trees' baseline."""
        layer_f = np.ascontiguousarray(np.vstack([self.mean, self.inv_std, self.weights]),
                                       dtype=np.float64)
        layer_b = np.vstack([np.asarray(self.log_mask, dtype=bool),
                             np.array(_categories(self.feature_names), dtype=bool)])
        params = np.array([self.tree_weight, self.intercept, self.trees.baseline],
                          dtype=np.float64)
        return layer_f, np.ascontiguousarray(layer_b), params


_controller: Any = None


def _single_thread() -> Any:
    """OpenMP limited to one thread: a WSGI worker must not fan out per request (and
    on a small machine OpenMP's spinning threads cost more than they save)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="openmp")
