"""Matrix factorisation variants: ALS and BPR. The one adapter over implicit.

Both keep only item factors for serving: a user's vector is folded in per request from
the history (ALS: the normal equations implicit's ``recalculate_user`` solves; BPR: a
fold-in from the user's item vectors). Items without a usable vector score ``-inf``.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.models import Recommender, single_threaded_blas

__all__ = ["ALSRecommender", "BPRRecommender"]


class _FactorRecommender(Recommender):
    """Shared by ALS and BPR: item factors, a fold-in for users, cosine similar items."""

    def __init__(self, factors: int, regularization: float, alpha: float, iterations: int,
                 seed: int) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.item_factors = np.zeros((0, factors), dtype=np.float32)
        self.user_factors = np.zeros((0, factors), dtype=np.float32)
        self.item_bias = np.zeros(0, dtype=np.float32)

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    @property
    def params(self) -> dict[str, Any]:
        return {"factors": self.factors, "regularization": self.regularization,
                "alpha": self.alpha, "iterations": self.iterations, "seed": self.seed}

    def confidence(self, histories: sp.csr_matrix) -> sp.csr_matrix:
        """Summed event weights -> ALS confidence: 1 + alpha * log(1 + weight)."""
        data = self._confidence(histories.data)
        return sp.csr_matrix((data, histories.indices, histories.indptr), shape=histories.shape)

    def _confidence(self, weights: np.ndarray) -> np.ndarray:
        return (1.0 + self.alpha * np.log1p(weights)).astype(np.float32, copy=False)

    def _set_factors(self, item_factors: np.ndarray, item_bias: np.ndarray) -> None:
        item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        norms = np.linalg.norm(item_factors, axis=1)
        # An item without a usable vector (never seen, or folded in without data) must
        # never be recommended: its score is -inf, not a meaningless 0.
        self.valid = np.isfinite(norms) & (norms > 0) & np.isfinite(item_bias)
        self._invalid = np.flatnonzero(~self.valid)
        self.item_factors, self.item_bias = item_factors, item_bias.astype(np.float32)
        unit = item_factors / np.where(norms > 0, norms, 1)[:, None]
        self._unit = np.where(self.valid[:, None], unit, 0).astype(np.float32)
        self._item_factors_t = np.ascontiguousarray(item_factors.T)

    @abstractmethod
    def user_vectors(self, histories: sp.csr_matrix) -> np.ndarray:
        """A vector per user, folded in from the history (an empty history: zeros)."""

    @abstractmethod
    def user_vector(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``user_vectors`` for one user (item indices, summed weights), in numpy alone."""

    def score_one(self, items: np.ndarray, weights: np.ndarray, group: int = -1) -> np.ndarray:
        scores = self.item_factors @ self.user_vector(items, weights)
        scores += self.item_bias
        scores[self._invalid] = -np.inf
        return scores

    def scores(self, histories: sp.csr_matrix, groups: np.ndarray | None = None) -> np.ndarray:
        users = self.user_vectors(histories)
        scores = users @ self._item_factors_t
        scores += self.item_bias
        scores[:, self._invalid] = -np.inf
        return scores

    def similar(self, item: int) -> np.ndarray | None:
        if not self.valid[item]:
            return None  # an item without a vector has no neighbours to speak of
        sims = self._unit @ self._unit[item]
        sims[~self.valid] = -np.inf
        sims[item] = -np.inf
        return sims

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors, "item_bias": self.item_bias,
                "user_factors": self.user_factors}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors = arrays["user_factors"]
        self._set_factors(arrays["item_factors"], arrays["item_bias"])


class ALSRecommender(_FactorRecommender):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008) via implicit, confidence 1 + a*log(1+w).

    Defaults tuned on the simulated shop (5,000 users, 1,000 items, 250k events, time
    split 80/20, ``mlsuite recommender evaluate``): over factors {32, 64} x
    regularization {20, 50, 100} x alpha {2, 4, 8} x three event weightings, ndcg@10
    peaked at 0.2505 here (popularity: 0.065). Strong regularization matters: views are
    mostly driven by item popularity, and a weakly regularized model fits that noise.
    """

    kind = "als"

    def __init__(self, factors: int = 32, regularization: float = 50.0, alpha: float = 4.0,
                 iterations: int = 15, seed: int = 42) -> None:
        super().__init__(factors, regularization, alpha, iterations, seed)

    def fit(self, user_items: sp.csr_matrix, *, groups: np.ndarray | None = None,
            progress: bool = False) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore", RuntimeWarning)
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=1.0,
                iterations=self.iterations, random_state=self.seed, num_threads=0)
            model.fit(self.confidence(user_items), show_progress=progress)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self._set_factors(model.item_factors, np.zeros(model.item_factors.shape[0], np.float32))

    def _set_factors(self, item_factors: np.ndarray, item_bias: np.ndarray) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        super()._set_factors(item_factors, item_bias)
        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore", RuntimeWarning)
            solver = AlternatingLeastSquares(factors=self.item_factors.shape[1], alpha=1.0,
                                             regularization=self.regularization, num_threads=1)
        solver.item_factors = self.item_factors
        # Y'Y + reg*I: computed once here, not by the first request.
        self._gram = (solver.YtY + self.regularization * np.eye(self.item_factors.shape[1])
                      ).astype(np.float64)
        self._solver = solver

    def user_vector(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The normal equations ``recalculate_user`` solves, for one user, in numpy:
        (Y'Y + reg*I + Y_u'(C_u - I)Y_u) x = Y_u'C_u p_u, with p_u = 1 on the user's items."""
        if len(items) == 0:
            return np.zeros(self.item_factors.shape[1], np.float32)
        conf = self._confidence(weights).astype(np.float64)
        y = self.item_factors[items].astype(np.float64)
        a = self._gram + (y.T * (conf - 1.0)) @ y
        return np.linalg.solve(a, y.T @ conf).astype(np.float32)

    def user_vectors(self, histories: sp.csr_matrix) -> np.ndarray:
        """implicit's ``recalculate_user``: the exact ALS solve for each user, given the items."""
        n = histories.shape[0]
        if n == 0:
            return np.zeros((0, self.item_factors.shape[1]), dtype=np.float32)
        vectors = self._solver.recalculate_user(np.arange(n), self.confidence(histories))
        return np.asarray(vectors, dtype=np.float32).reshape(n, -1)

    def add_items(self, item_users: sp.csr_matrix) -> None:
        """implicit's ``partial_fit_items`` against the training users' factors."""
        from implicit.cpu.als import AlternatingLeastSquares

        first = self.n_items
        ids = np.arange(first, first + item_users.shape[0])
        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore", RuntimeWarning)
            solver = AlternatingLeastSquares(factors=self.factors, alpha=1.0,
                                             regularization=self.regularization, num_threads=1)
            solver.user_factors, solver.item_factors = self.user_factors, self.item_factors.copy()
            solver.partial_fit_items(ids, self.confidence(item_users.tocsr()))
        bias = np.concatenate([self.item_bias, np.zeros(len(ids), np.float32)])
        self._set_factors(solver.item_factors, bias)


class BPRRecommender(_FactorRecommender):
    """Bayesian personalised ranking via implicit; users folded in from their items.

    implicit's BPR has no ``recalculate_user``. BPR's gradient pulls a user towards the
    items they chose and away from the average item, so a user's vector is
    ``scale * (confidence-weighted mean of their item vectors - mean item vector)``, with
    ``scale`` fitted at training time against the users BPR learned. On the simulated
    shop this ranks as well as the trained user vectors; a least-squares fold-in over
    BPR's factors ranked four times worse (ndcg@10 0.05 vs 0.21).
    """

    kind = "bpr"

    def __init__(self, factors: int = 32, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 100, seed: int = 42, learning_rate: float = 0.01) -> None:
        super().__init__(factors, regularization, alpha, iterations, seed)
        self.learning_rate = learning_rate
        self.scale = 1.0

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "learning_rate": self.learning_rate}

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "scale": np.array([self.scale], np.float32)}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.scale = float(arrays["scale"][0])
        super().restore(arrays)

    def fit(self, user_items: sp.csr_matrix, *, groups: np.ndarray | None = None,
            progress: bool = False) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore", RuntimeWarning)
            # One thread: BPR's parallel SGD is lock-free, so more threads change the result.
            model = BayesianPersonalizedRanking(
                factors=self.factors, learning_rate=self.learning_rate,
                regularization=self.regularization, iterations=self.iterations,
                random_state=self.seed, num_threads=1)
            model.fit(user_items, show_progress=progress)
        factors = np.asarray(model.item_factors, dtype=np.float32)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)[:, :-1]
        # Items nobody interacted with keep their random start vector: not a learned
        # position, so they are not recommended.
        seen = np.asarray((user_items > 0).sum(axis=0)).ravel() > 0
        factors[~seen] = 0
        self._set_factors(factors[:, :-1], factors[:, -1])
        active = np.flatnonzero(np.diff(user_items.indptr) > 0)
        direction = self._direction(user_items[active])
        target = self.user_factors[active]
        self.scale = float((direction * target).sum() / max(float((direction**2).sum()), 1e-12))

    def _set_factors(self, item_factors: np.ndarray, item_bias: np.ndarray) -> None:
        super()._set_factors(item_factors, item_bias)
        self._center = (self.item_factors[self.valid].mean(axis=0) if self.valid.any()
                        else np.zeros(self.item_factors.shape[1], np.float32))

    def _direction(self, histories: sp.csr_matrix) -> np.ndarray:
        conf = self.confidence(histories)
        totals = np.asarray(conf.sum(axis=1)).ravel()
        mean = np.asarray(conf @ self.item_factors) / np.where(totals > 0, totals, 1)[:, None]
        return np.where(totals[:, None] > 0, mean - self._center, 0).astype(np.float32)

    def user_vectors(self, histories: sp.csr_matrix) -> np.ndarray:
        return self.scale * self._direction(histories)

    def user_vector(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if len(items) == 0:
            return np.zeros(self.item_factors.shape[1], np.float32)
        conf = self._confidence(weights)
        mean = conf @ self.item_factors[items] / conf.sum()
        return (self.scale * (mean - self._center)).astype(np.float32)

    def add_items(self, item_users: sp.csr_matrix) -> None:
        """No fold-in for BPR items: new items stay unscorable until retrained."""
        new = item_users.shape[0]
        self._set_factors(
            np.vstack([self.item_factors, np.zeros((new, self.factors), np.float32)]),
            np.concatenate([self.item_bias, np.zeros(new, np.float32)]))
