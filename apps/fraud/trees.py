"""A fitted gradient-boosting model as plain arrays: fast to score, explainable per row.

scikit-learn's ``HistGradientBoostingClassifier.predict_proba`` costs milliseconds for
one row (input validation, thread pools), which a payment cannot wait for. Its trees are
small arrays, though: ``TreeEnsemble.of`` copies them into one node table, and
``raw_and_contributions`` walks each row down every tree in compiled loops
(``fraud.kernels``). Each leaf's path is known in advance, and with it what the path
owes each feature (Saabas' method: each split moves the row's expected value from the
parent's to the child's, and that move is credited to the split's feature), so a reason
is "what this row's path through the trees owes to that feature", in log-odds, and the
contributions plus the ensemble's expected value add up to the raw score.

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

A model file (a signed pickle) holds the trees, not the tables derived from them, which
are rebuilt on loading:

>>> state = trees.__getstate__()
>>> "packed" in state, "packed" in vars(trees)
(False, True)
>>> restored = object.__new__(TreeEnsemble)
>>> restored.__setstate__(state)
>>> bool((restored.raw(X[:50]) == trees.raw(X[:50])).all()), "packed" in vars(restored)
(True, True)

Missing values go where the model sent them in training, and one row (a /score request)
gets the same bits alone as in a batch:

>>> X[3, 0] = X[7, 1] = np.nan
>>> bool(np.allclose(trees.proba(X[:50]), clf.predict_proba(X[:50])[:, 1]))
True
>>> raw, C = trees.raw_and_contributions(X[:50])
>>> all(r[0] == raw[i] and (c[0] == C[i]).all() for i, (r, c) in
...     enumerate(trees.raw_and_contributions(X[i:i + 1]) for i in range(50)))
True
"""

from __future__ import annotations

import dataclasses
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
        ).ready()

    def _walk(self, X: np.ndarray, contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from fraud import kernels as k

        X = np.ascontiguousarray(X)
        node_i, node_f, roots, path_feature, path_credit = self.packed
        leaf = k.leaves(X, node_i, node_f, roots, self.depth)
        raw, C = k.scores(leaf, node_f, self.baseline, path_feature, path_credit, X.shape[1],
                          contributions)
        return raw, C if contributions else None

    @functools.cached_property
    def packed(self) -> tuple[np.ndarray, ...]:
        """The node table as ``fraud.kernels`` takes it: the nodes' integers (feature,
        left, right, NaN goes left) and floats (threshold, value) as two tables, the
        roots, and each node's path features and credits."""
        node_i = np.ascontiguousarray(np.vstack(
            [self.feature, self.left, self.right, self.missing_left]).astype(np.int64))
        node_f = np.ascontiguousarray(np.vstack([self.threshold, self.value]), dtype=np.float64)
        return (node_i, node_f, np.ascontiguousarray(self.roots, dtype=np.int64), *self._paths)

    @functools.cached_property
    def _paths(self) -> tuple[np.ndarray, np.ndarray]:
        """Per node (a leaf's row is what a row ending there owes), its root path's
        features and credits, padded with zero credits to the depth."""
        internal = self.left != np.arange(len(self.left))
        depth = max(self.depth, 1)
        size = len(self.left)
        path_feature = np.zeros((size, depth), dtype=np.int64)
        path_credit = np.zeros((size, depth))
        credit = self._credit
        for root in self.roots.tolist():
            stack: list[tuple[int, list[int]]] = [(root, [])]
            while stack:
                node, edges = stack.pop()
                if not internal[node]:
                    for i, e in enumerate(edges):
                        path_feature[node, i] = self.feature[e >> 1]
                        path_credit[node, i] = credit[e]
                    continue
                stack.append((int(self.right[node]), [*edges, 2 * node + 1]))
                stack.append((int(self.left[node]), [*edges, 2 * node]))
        return path_feature, path_credit

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
                   baseline=float(a["t_meta"][0]), depth=int(a["t_meta"][1])).ready()

    def ready(self) -> TreeEnsemble:
        """Build the per-leaf tables and load the compiled loops (the hybrid model's too)
        now: tens of ms, or a few seconds to compile them the first time on a machine;
        not on the first request."""
        from fraud import kernels

        X = np.zeros((1, int(self.feature.max(initial=0)) + 1))
        self._walk(X, True)
        node_i, node_f, roots, path_feature, path_credit = self.packed
        kernels.hybrid(X, node_i, node_f, roots, self.depth, path_feature, path_credit,
                       np.zeros((3, X.shape[1])), np.zeros((2, X.shape[1]), dtype=bool),
                       np.zeros(3), 1)
        return self

    # Pickled (in a signed model file) without the derived tables, rebuilt when loaded;
    # never deep-copied: an ensemble is immutable, so a cloned model shares it.
    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.ready()

    def __deepcopy__(self, memo: dict[int, Any]) -> TreeEnsemble:
        return self
