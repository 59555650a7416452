"""A fitted gradient-boosting model as plain arrays: fast to score, explainable per row.

scikit-learn's ``HistGradientBoostingClassifier.predict_proba`` costs milliseconds for
one row (input validation, thread pools), which a payment cannot wait for. Its trees are
small arrays, though: ``TreeEnsemble.of`` copies them into one node table, and
``raw_and_contributions`` walks every tree at once, one level per numpy step, for all
rows of a request. The same walk attributes the score to features (Saabas' path method:
each split moves the row's expected value from the parent's to the child's, and that
move is credited to the split's feature), so a reason is "what this row's path through
the trees owes to that feature", in log-odds, and the contributions plus the ensemble's
expected value add up to the raw score exactly.

The arrays are plain data: an ensemble travels in a signed artifact or as numpy arrays,
never as a scikit-learn object on the request path.

>>> import numpy as np
>>> from sklearn.ensemble import HistGradientBoostingClassifier
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(2000, 3)); y = X[:, 0] + 0.5 * X[:, 1] > 1.0
>>> clf = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
>>> trees = TreeEnsemble.of(clf)
>>> bool(np.allclose(trees.proba(X[:50]), clf.predict_proba(X[:50])[:, 1]))
True
>>> raw, C = trees.raw_and_contributions(X[:50])
>>> bool(np.allclose(raw, trees.expected + C.sum(axis=1)))
True

One row (a /score request) takes a shorter walk with the same bits as in a batch, missing
values included:

>>> X[3, 0] = X[7, 1] = np.nan
>>> raw, C = trees.raw_and_contributions(X[:50])
>>> all(r[0] == raw[i] and (c[0] == C[i]).all() for i, (r, c) in
...     enumerate(trees.raw_and_contributions(X[i:i + 1]) for i in range(50)))
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TreeEnsemble"]


@dataclass(frozen=True)
class TreeEnsemble:
    """All trees of a binary gradient-boosting model in one node table."""

    feature: np.ndarray  # int, split feature per node
    threshold: np.ndarray  # float, go left when x <= threshold
    missing_left: np.ndarray  # bool, NaN goes left
    left: np.ndarray  # int, global index of the left child (leaf: itself)
    right: np.ndarray  # int, global index of the right child (leaf: itself)
    value: np.ndarray  # float, leaf value; internal node: its training-weighted mean
    roots: np.ndarray  # int, root node of each tree
    baseline: float  # the model's raw prediction before any tree
    depth: int  # deepest leaf

    @property
    def expected(self) -> float:
        """The raw score of the average training row (what contributions start from)."""
        return float(self.baseline + self.value[self.roots].sum())

    @classmethod
    def of(cls, model: Any) -> TreeEnsemble:
        """Copy a fitted ``HistGradientBoostingClassifier``'s trees (binary, numeric)."""
        feature, threshold, missing, left, right, value, roots = [], [], [], [], [], [], []
        offset, depth = 0, 0
        for per_class in model._predictors:  # sklearn internals: one predictor per tree
            nodes = per_class[0].nodes
            if nodes["is_categorical"].any():
                raise ValueError("categorical splits are not supported; one-hot encode instead")
            leaf = nodes["is_leaf"].astype(bool)
            n = len(nodes)
            idx = np.arange(n)
            lefts = np.where(leaf, idx, nodes["left"].astype(np.int64))
            rights = np.where(leaf, idx, nodes["right"].astype(np.int64))
            values = nodes["value"].astype(np.float64).copy()
            counts = nodes["count"].astype(np.float64)
            # Children always come after their parent: fill expected values bottom-up.
            for i in range(n - 1, -1, -1):
                if not leaf[i]:
                    cl, cr = counts[lefts[i]], counts[rights[i]]
                    total = cl + cr
                    values[i] = ((cl * values[lefts[i]] + cr * values[rights[i]]) / total
                                 if total > 0 else 0.5 * (values[lefts[i]] + values[rights[i]]))
            feature.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64))
            threshold.append(np.where(leaf, 0.0, nodes["num_threshold"]).astype(np.float64))
            missing.append(nodes["missing_go_to_left"].astype(bool))
            left.append(lefts + offset)
            right.append(rights + offset)
            value.append(values)
            roots.append(offset)
            depth = max(depth, int(nodes["depth"].max()))
            offset += n
        return cls(
            feature=np.concatenate(feature), threshold=np.concatenate(threshold),
            missing_left=np.concatenate(missing), left=np.concatenate(left),
            right=np.concatenate(right), value=np.concatenate(value),
            roots=np.asarray(roots, dtype=np.int64),
            baseline=float(np.ravel(model._baseline_prediction)[0]), depth=depth,
        )

    def _walk(self, X: np.ndarray, contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        n, width = X.shape
        if n == 1:
            return self._walk_one(X, contributions)
        trees = len(self.roots)
        node = np.tile(self.roots, n)  # (row, tree) flattened: one index per walk
        base = np.repeat(np.arange(n) * width, trees)
        flat = X.ravel()
        feature, threshold, step, credit_of = self.feature, self.threshold, self._step, \
            self._credit
        credit = np.zeros(n * width) if contributions else None
        nan = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            f = feature[node]
            x = flat[base + f]
            go_right = x > threshold[node]
            if nan:
                missing = np.isnan(x)
                go_right = np.where(missing, ~self.missing_left[node], go_right)
            # Children side by side: 2 * node + (0 left, 1 right); a leaf is its own child.
            edge = 2 * node + go_right
            if credit is not None:
                credit += np.bincount(base + f, weights=credit_of[edge], minlength=n * width)
            node = step[edge]
        raw = self.baseline + self.value[node].reshape(n, trees).sum(axis=1)
        return raw, None if credit is None else credit.reshape(n, width)

    def _walk_one(self, X: np.ndarray, contributions: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """``_walk`` of a single row (a /score request) in half the numpy calls (each
        costs more than its work at this size): no row offsets, and the credits are one
        bincount of every level's edges at the end instead of one per level. The same
        comparisons, and the same sums in the same order (level by level, trees in order
        within a level), as ``_walk``: the same bits."""
        x = X[0]
        width = len(x)
        feature, threshold, step = self.feature, self.threshold, self._step
        nan = bool(np.isnan(x).any())
        node = self.roots
        depth = self.depth
        edges = np.empty((depth, len(node)), dtype=np.int64)
        for level in range(depth):
            right = x[feature[node]] > threshold[node]
            if nan:
                right = np.where(np.isnan(x[feature[node]]), ~self.missing_left[node], right)
            edge = edges[level]
            np.add(node, node, out=edge)
            edge += right
            node = step[edge]
        raw = self.baseline + self.value[node].reshape(1, -1).sum(axis=1)
        if not contributions:
            return raw, None
        bins = feature[edges >> 1]
        bins += (np.arange(depth) * width)[:, None]
        per_level = np.bincount(bins.ravel(), weights=self._credit[edges].ravel(),
                                minlength=depth * width).reshape(depth, width)
        # Levels added in order, ((level 0 + level 1) + level 2) ..., as _walk's +=.
        return raw, per_level.sum(axis=0).reshape(1, width)

    @functools.cached_property
    def _step(self) -> np.ndarray:
        return np.column_stack([self.left, self.right]).ravel()

    @functools.cached_property
    def _credit(self) -> np.ndarray:
        """Per edge, the move in expected value it credits to its split's feature."""
        return self.value[self._step] - np.repeat(self.value, 2)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) of the rows of ``X``."""
        return self._walk(np.asarray(X, dtype=np.float64), False)[0]

    def proba(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.raw(X), -35.0, 35.0)))

    def raw_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and each feature's share of them, ``raw = expected + C.sum(1)``."""
        raw, C = self._walk(np.asarray(X, dtype=np.float64), True)
        assert C is not None
        return raw, C

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (for a snapshot or a file); ``from_arrays`` reverses it."""
        return {"t_feature": self.feature, "t_threshold": self.threshold,
                "t_missing_left": self.missing_left, "t_left": self.left,
                "t_right": self.right, "t_value": self.value, "t_roots": self.roots,
                "t_meta": np.array([self.baseline, float(self.depth)])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> TreeEnsemble:
        return cls(feature=a["t_feature"].astype(np.int64),
                   threshold=a["t_threshold"].astype(np.float64),
                   missing_left=a["t_missing_left"].astype(bool),
                   left=a["t_left"].astype(np.int64), right=a["t_right"].astype(np.int64),
                   value=a["t_value"].astype(np.float64), roots=a["t_roots"].astype(np.int64),
                   baseline=float(a["t_meta"][0]), depth=int(a["t_meta"][1]))
