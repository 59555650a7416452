"""The recommender interface every variant implements, and its threading rule.

Every variant scores users from their *history* (a CSR matrix of summed event weights,
one row per user) rather than from a stored user table, so serving needs no shared
mutable model: a user's vector is recomputed per request from the interactions Redis
holds right now (ALS: implicit's ``recalculate_user``; BPR: a fold-in from the user's
item vectors; see ``factors``). ``score_one`` is the per-request path for one user: the
same maths in plain numpy (the contract test checks they agree), without the
sparse-matrix overhead that dominates a single small solve.

Variants: ``popularity.PopularityRecommender``, ``factors.ALSRecommender``,
``factors.BPRRecommender``; by name through ``variants.make_recommender``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

__all__ = ["ARRAYS_FILE", "PARAMS_FILE", "Recommender", "limit_blas_threads",
           "single_threaded_blas"]

PARAMS_FILE = "params.json"
ARRAYS_FILE = "arrays.npz"


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread: implicit is slower (and warns) with a multi-threaded BLAS."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def limit_blas_threads() -> None:
    """One BLAS thread for the rest of this process (a serving worker)."""
    threadpool_limits(limits=1, user_api="blas")


class Recommender(ABC):
    """One recommender variant. Hyperparameters only in ``__init__``; state from ``fit``."""

    kind: ClassVar[str]

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix, *, groups: np.ndarray | None = None,
            progress: bool = False) -> None:
        """Learn from summed event weights (users x items); ``groups``: a segment code per user."""

    @abstractmethod
    def scores(self, histories: sp.csr_matrix, groups: np.ndarray | None = None) -> np.ndarray:
        """Scores (users x items, float32) for users with these histories; -inf: never recommend."""

    def score_one(self, items: np.ndarray, weights: np.ndarray, group: int = -1) -> np.ndarray:
        """``scores`` for one user given as item indices and summed weights: the per-request
        path, free of sparse-matrix overhead. Every variant returns what ``scores`` would."""
        history = sp.csr_matrix((weights.astype(np.float32), items, [0, len(items)]),
                                shape=(1, self.n_items))
        return self.scores(history, np.array([group]))[0]

    def similar(self, item: int) -> np.ndarray | None:
        """Similarity of every item to ``item`` (-inf for itself); None: the variant has no
        notion of it, or cannot place this item."""
        return None

    @abstractmethod
    def add_items(self, item_users: sp.csr_matrix) -> None:
        """Fold in new items (rows: new items x training users) without retraining.

        An item the variant cannot place (no interactions) gets ``-inf`` scores: it never
        comes back until the next training run.
        """

    @property
    @abstractmethod
    def n_items(self) -> int: ...

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def restore(self, arrays: dict[str, np.ndarray]) -> None: ...

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PARAMS_FILE).write_text(json.dumps({"kind": self.kind, **self.params}, indent=2))
        arrays: dict[str, Any] = self.arrays()
        np.savez(folder / ARRAYS_FILE, **arrays)
