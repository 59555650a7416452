"""Offline evaluation: precision@k, recall@k, ndcg@k, map@k and catalogue coverage.

Deterministic: the same model, histories and held-out items give the same figures (ties
in a ranking go to the lower item index). Users are scored from their training history
through the same fold-in the service uses, items they already interacted with are
excluded, and only users with at least one held-out item they had not seen count.

>>> import numpy as np, scipy.sparse as sp
>>> recommended = np.array([[3, 1, 2], [0, 2, -1]])
>>> relevant = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 0, 1]]))
>>> m = ranking_metrics(recommended, relevant, k=3, n_items=4)
>>> round(m["precision@3"], 4), round(m["recall@3"], 4), m["coverage"]
(0.3333, 0.75, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from recommender.models import Recommender
from recommender.ranking import exclude, top_n

__all__ = ["evaluate_model", "metric_names", "ranking_metrics"]

BATCH_USERS = 2048


def metric_names(k: int) -> list[str]:
    """The metric keys for cut-off k, in report order."""
    return [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", "coverage"]


def ranking_metrics(recommended: np.ndarray, relevant: sp.csr_matrix, *, k: int,
                    n_items: int) -> dict[str, float]:
    """Mean ranking metrics over users (rows), from top-k lists (-1 = empty slot).

    ``relevant`` is a users x items matrix, non-zero where the item is relevant. Recall
    divides by all relevant items; map@k by ``min(k, relevant)``; coverage is the share of
    the catalogue recommended to anyone.
    """
    recommended = recommended[:, :k]
    users = recommended.shape[0]
    names = metric_names(k)
    if users == 0:
        return dict.fromkeys(names, 0.0)
    relevant = relevant.tocsr()
    n_rel = np.diff(relevant.indptr).astype(np.float64)
    # Hit matrix via linear (row, item) keys: no dense users x items array.
    rel_keys = np.repeat(np.arange(users, dtype=np.int64), np.diff(relevant.indptr)) * n_items \
        + relevant.indices
    rec_keys = np.arange(users, dtype=np.int64)[:, None] * n_items + recommended
    hits = np.isin(rec_keys, rel_keys) & (recommended >= 0)
    ranks = np.arange(1, recommended.shape[1] + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1)
    n_hits = hits.sum(axis=1)
    ideal_len = np.minimum(n_rel, k).astype(np.int64)
    idcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])[ideal_len]
    dcg = (hits * discounts).sum(axis=1)
    precision_at = np.cumsum(hits, axis=1) / ranks
    ap = (precision_at * hits).sum(axis=1) / np.maximum(ideal_len, 1)
    safe_rel = np.maximum(n_rel, 1)
    shown = np.unique(recommended[recommended >= 0])
    return {
        names[0]: float(np.mean(n_hits / k)),
        names[1]: float(np.mean(n_hits / safe_rel)),
        names[2]: float(np.mean(np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0))),
        names[3]: float(np.mean(ap)),
        names[4]: float(len(shown) / max(n_items, 1)),
    }


def evaluate_model(model: Recommender, history: sp.csr_matrix, held_out: sp.csr_matrix, *,
                   k: int = 10, groups: np.ndarray | None = None,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Score ``model`` on held-out interactions (both users x items, same users and items).

    Relevant = held-out items the user had not interacted with in ``history``; users with
    none are skipped. ``groups`` (segment codes) feed the popularity baseline.
    """
    history = history.tocsr()
    relevant = (held_out.tocsr() > 0).astype(np.float32)
    relevant = relevant - relevant.multiply(history > 0)
    relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    users = users[np.diff(history.indptr)[users] > 0]  # warm users: a history to fold in
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for lo in range(0, len(users), BATCH_USERS):
        batch = users[lo:lo + BATCH_USERS]
        hist = history[batch]
        scores = model.scores(hist, None if groups is None else groups[batch])
        exclude(scores, hist)
        recs[lo:lo + len(batch)] = top_n(scores, k)[0]
        if on_batch is not None:
            on_batch(len(batch))
    metrics = ranking_metrics(recs, relevant[users], k=k, n_items=model.n_items)
    metrics["users"] = float(len(users))
    return metrics
