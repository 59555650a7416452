"""A fitted gradient-boosting model as plain arrays: fast to score, explainable per row.

scikit-learn's ``HistGradientBoostingClassifier.predict_proba`` costs milliseconds for
one row (input validation, thread pools), which a payment cannot wait for. Its trees are
small arrays, though: ``TreeEnsemble.of`` copies them into one node table, and
``raw_and_contributions`` finds the leaf each row reaches in every tree at once: a
batch walks all trees one level per numpy step; one row (a /score request) tests every
split at once and reads each tree's exit leaf from bit masks (QuickScorer). Each leaf's
path is known in advance, and with it what the path owes each feature (Saabas' method:
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

A model file (a signed pickle) holds the trees, not the tables derived from them, which
are rebuilt on loading:

>>> state = trees.__getstate__()
>>> "_tables" in state, "_tables" in vars(trees)
(False, True)
>>> restored = object.__new__(TreeEnsemble)
>>> restored.__setstate__(state)
>>> bool((restored.raw(X[:50]) == trees.raw(X[:50])).all()), "_tables" in vars(restored)
(True, True)

One row (a /score request) takes a shorter walk with the same bits as in a batch, missing
values included:

>>> X[3, 0] = X[7, 1] = np.nan
>>> raw, C = trees.raw_and_contributions(X[:50])
>>> all(r[0] == raw[i] and (c[0] == C[i]).all() for i, (r, c) in
...     enumerate(trees.raw_and_contributions(X[i:i + 1]) for i in range(50)))
True
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
        n, width = X.shape
        if n == 1 and self._masks is not None:
            leaf = self._leaves_one(X[0])
        else:
            leaf = self._leaves(X)
        raw = self.baseline + self.value[leaf].reshape(n, -1).sum(axis=1)
        if not contributions:
            return raw, None
        # Each leaf's path credits, precomputed (``_paths``): per row, trees in order, then
        # the levels of each path; one bincount for the whole request.
        feature, credit = self._paths
        bins = feature[leaf]
        if n > 1:
            bins += (np.arange(n) * width).repeat(len(self.roots))[:, None]
        C = np.bincount(bins.ravel(), weights=credit[leaf].ravel(), minlength=n * width)
        return raw, C.reshape(n, width)

    def _leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree, (row, tree) flattened: every tree at
        once, one level per numpy step."""
        n, width = X.shape
        trees = len(self.roots)
        node = np.tile(self.roots, n)
        base = np.repeat(np.arange(n) * width, trees)
        flat = X.ravel()
        feature, threshold, step = self.feature, self.threshold, self._step
        nan = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            x = flat[base + feature[node]]
            go_right = x > threshold[node]
            if nan:
                go_right = np.where(np.isnan(x), ~self.missing_left[node], go_right)
            # Children side by side: 2 * node + (0 left, 1 right); a leaf is its own child.
            node = step[2 * node + go_right]
        return node

    def _leaves_one(self, x: np.ndarray) -> np.ndarray:
        """``_leaves`` of one row (a /score request) without a walk (QuickScorer, Lucchese
        et al. 2015): every split is tested at once; a split that sends the row right
        rules out the leaves of its left subtree, so a tree's exit leaf is the leftmost
        leaf that no split ruled out: the lowest bit clear in the OR of those splits'
        masks (one bit per leaf; trees of up to 64 leaves). About ten numpy calls instead
        of five per level; the same comparisons as the walk, so the same leaves."""
        masks = self._masks
        assert masks is not None
        rules_out, feature, threshold, missing_right, starts, leaves, first = masks
        v = x[feature]
        right = v > threshold
        if math.isnan(np.add.reduce(x)):  # any NaN (an overflow to inf - inf only costs this)
            right = np.where(np.isnan(v), missing_right, right)
        # Per tree, the leaves some split ruled out; the exit is the lowest bit left.
        out = np.bitwise_or.reduceat(rules_out & -right.astype(np.uint64), starts)
        alive = ~out
        lowest = alive & -alive
        return leaves[np.log2(lowest).astype(np.int64) + first]

    @functools.cached_property
    def _tables(self) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        """Per leaf, its root path's features and credits (padded with zero credits to
        the depth); per split, the QuickScorer mask of the leaves it keeps when the row
        goes right, with each tree's exit candidates (its leaves, left to right, from
        ``first[tree]`` on); None when a tree has more than 64 leaves (the walk serves)."""
        internal = self.left != np.arange(len(self.left))
        depth = max(self.depth, 1)
        size = len(self.left)
        path_feature = np.zeros((size, depth), dtype=np.int64)
        path_credit = np.zeros((size, depth))
        credit = self._credit
        tree_of = np.repeat(np.arange(len(self.roots)), np.diff(np.append(self.roots, size)))
        leaf_order = np.zeros(size, dtype=np.int64)  # a leaf's rank, left to right, in its tree
        leaf_nodes: list[int] = []
        leaf_base = np.zeros(len(self.roots), dtype=np.int64)
        fits = True
        for t, root in enumerate(self.roots.tolist()):
            leaf_base[t] = len(leaf_nodes)
            rank = 0
            stack: list[tuple[int, list[int]]] = [(root, [])]
            while stack:  # depth first, left before right: leaves numbered left to right
                node, edges = stack.pop()
                if not internal[node]:
                    leaf_order[node] = rank
                    leaf_nodes.append(node)
                    for i, e in enumerate(edges):
                        path_feature[node, i] = self.feature[e >> 1]
                        path_credit[node, i] = credit[e]
                    rank += 1
                    continue
                stack.append((int(self.right[node]), [*edges, 2 * node + 1]))
                stack.append((int(self.left[node]), [*edges, 2 * node]))
            if rank > 64:
                fits = False
        masks = None
        if fits:
            # Leaves under each node, as a bit range [lo, hi) of its tree's leaf ranks.
            lo = np.where(internal, 0, leaf_order)
            hi = np.where(internal, 0, leaf_order + 1)
            for node in range(size - 1, -1, -1):  # children come after their parent
                if internal[node]:
                    lo[node], hi[node] = lo[self.left[node]], hi[self.right[node]]
            splits = np.flatnonzero(internal)
            single = np.setdiff1d(np.arange(len(self.roots)), tree_of[splits])
            # A tree that is one leaf gets one split that never rules anything out.
            nodes = np.sort(np.concatenate([splits, self.roots[single]]))
            left_lo, left_hi = lo[self.left[nodes]], hi[self.left[nodes]]
            width = (left_hi - left_lo).astype(np.uint64)
            ones = (np.uint64(1) << width) - np.uint64(1)  # a left subtree has < 64 leaves
            left_leaves = ones << left_lo.astype(np.uint64)
            rules_out = np.where(internal[nodes], left_leaves, np.uint64(0))
            starts = np.searchsorted(tree_of[nodes], np.arange(len(self.roots)))
            masks = (rules_out, self.feature[nodes], self.threshold[nodes],
                     ~self.missing_left[nodes], starts, np.asarray(leaf_nodes, dtype=np.int64),
                     leaf_base)
        return masks, (path_feature, path_credit)

    @property
    def _masks(self) -> Any:
        return self._tables[0]

    @property
    def _paths(self) -> tuple[np.ndarray, np.ndarray]:
        return self._tables[1]

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
        """Build the per-leaf tables now (tens of ms), not on the first request."""
        self._tables
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
