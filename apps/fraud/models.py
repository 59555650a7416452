"""Fraud models: one interface over an online river pipeline and scikit-learn batch models.

Every variant speaks feature dicts in, fraud probabilities out, and explains a score
with its top feature contributions. Variants (``VARIANTS``):

- ``online-lr`` (``OnlineLinear``): river pipeline ``prepare | StandardScaler |
  LogisticRegression`` learning one labelled transaction at a time; class imbalance
  handled by weighting the log loss of frauds (``positive_weight``). Warm-started by
  replaying history in time order; then fed by the label stream.
- ``batch-hgb`` (``BatchGBM``): scikit-learn ``HistGradientBoostingClassifier`` on the
  same dicts (``DictVectorizer`` names the columns), balanced class weights. Baseline and
  challenger; reasons by occlusion of its most important features (cheap, vectorised).
- ``batch-lr`` (``BatchLinear``): scikit-learn logistic regression, same prep as online.

Serving never touches a mutable model: ``model.predictor()`` returns an immutable,
thread-safe ``Predictor`` (numpy arrays) that scores and explains whole matrices at once.
The online learner publishes a fresh predictor after applying labels.

>>> xs = [{"amount": float(a), "card_count_1h": float(a % 7)} for a in range(200)]
>>> ys = [x["card_count_1h"] >= 5 for x in xs]
>>> m = make_model("online-lr", feature_names_of(xs))
>>> for x, y in zip(xs, ys):
...     m.learn_one(x, y)
>>> p = m.predictor()
>>> bool(p.predict(p.matrix([{"amount": 1.0, "card_count_1h": 6.0}]))[0] > 0.5)
True
"""

from __future__ import annotations

import copy
import functools
import heapq
import json
import math
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fraud.features import BASE_FEATURES, CATEGORY_PREFIX, LOG_FEATURES
from fraud.thresholds import Thresholds

__all__ = [
    "FraudModel",
    "Predictor",
    "Reason",
    "OnlineLinear",
    "BatchGBM",
    "BatchLinear",
    "VARIANTS",
    "make_model",
    "feature_names_of",
    "Artifact",
    "clone",
]

MODEL_FILE = "model.pkl"
_SMALL = 4  # rows scored in plain Python; more go through numpy
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True, slots=True)
class Reason:
    """One feature's push towards fraud: its value and its contribution to the score."""

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


class FraudModel(Protocol):
    kind: str
    online: bool
    feature_names: tuple[str, ...]
    n_learned: int

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        """Learn one labelled vector (a no-op for batch models)."""
        ...

    def predictor(self) -> Predictor:
        ...


def feature_names_of(xs: Iterable[Mapping[str, float]], extra: Sequence[str] = ()
                     ) -> tuple[str, ...]:
    """The column set of a model trained on ``xs``: base features, then every key seen."""
    seen: dict[str, None] = {}
    for x in xs:
        for key in x:
            seen[key] = None
    base = [f for f in BASE_FEATURES if f in seen]
    rest = sorted(k for k in seen if k not in set(BASE_FEATURES))
    return tuple(base + rest + [f"x_{e}" for e in extra if f"x_{e}" not in seen])


def _matrix(xs: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    X = np.empty((len(xs), len(names)), dtype=np.float64)
    for i, x in enumerate(xs):
        get = x.get
        X[i] = [get(k, 0.0) for k in names]
    return X


def _prep(X: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    """``_Prepare`` on a matrix: log1p of the positive values of the logged columns."""
    P = X.copy()
    cols = P[:, log_mask]
    P[:, log_mask] = np.log1p(np.maximum(cols, 0.0)) + np.minimum(cols, 0.0)
    return P


def _score_matrix(p: Any, xs: Sequence[Mapping[str, float]], k: int
                  ) -> tuple[list[float], list[list[Reason]]]:
    X = p.matrix(xs)
    return np.clip(p.predict(X), 0.0, 1.0).tolist(), p.explain(X, k)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35.0, 35.0)))


def _top(names: Sequence[str], X: np.ndarray, C: np.ndarray, k: int) -> list[list[Reason]]:
    """Top-``k`` positive contributions per row of ``C``; absent categories never count."""
    if k <= 0 or C.size == 0:
        return [[] for _ in range(len(X))]
    C = C.copy()
    is_category = np.array([n.startswith(CATEGORY_PREFIX) for n in names])
    if is_category.any():
        C[:, is_category] = np.where(X[:, is_category] != 0.0, C[:, is_category], -np.inf)
    k = min(k, C.shape[1])
    idx = np.argpartition(-C, k - 1, axis=1)[:, :k]
    out: list[list[Reason]] = []
    for i, row in enumerate(idx):
        row = row[np.argsort(-C[i, row])]
        out.append([Reason(names[j], float(X[i, j]), float(C[i, j])) for j in row if C[i, j] > 0])
    return out


# ---------------------------------------------------------------------------- linear


class _Prepare:
    """Dense vector in a fixed column order, log1p on heavy-tailed columns (river step)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.logged = frozenset(n for n in names if n in LOG_FEATURES)

    def __call__(self, x: Mapping[str, float]) -> dict[str, float]:
        get, logged = x.get, self.logged
        out = {}
        for n in self.names:
            v = get(n, 0.0)
            out[n] = math.log1p(v) if n in logged and v > 0.0 else v
        return out


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
        return _matrix(xs, self.feature_names)

    def _z(self, X: np.ndarray) -> np.ndarray:
        return (_prep(X, self.log_mask) - self.mean) * self.inv_std

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(self._z(X) @ self.weights + self.intercept)

    def explain(self, X: np.ndarray, k: int) -> list[list[Reason]]:
        return _top(self.feature_names, X, self._z(X) * self.weights, k)

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        if len(xs) > _SMALL:
            return _score_matrix(self, xs, k)
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


class OnlineLinear:
    """river ``prepare | StandardScaler | LogisticRegression``, frauds weighted in the loss."""

    kind = "online-lr"
    online = True

    def __init__(self, feature_names: Sequence[str], *, learning_rate: float = 0.01,
                 positive_weight: float = 5.0, l2: float = 0.0) -> None:
        from river import compose, linear_model, optim, preprocessing

        self.feature_names = tuple(feature_names)
        self.params = {"learning_rate": learning_rate, "positive_weight": positive_weight,
                       "l2": l2}
        self.pipeline = compose.Pipeline(
            ("prepare", compose.FuncTransformer(_Prepare(self.feature_names))),
            ("scale", preprocessing.StandardScaler()),
            ("lr", linear_model.LogisticRegression(
                optimizer=optim.SGD(learning_rate),
                loss=optim.losses.Log(weight_pos=positive_weight, weight_neg=1.0),
                l2=l2,
                intercept_lr=learning_rate,
            )),
        )
        self.n_learned = 0

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        self.pipeline.learn_one(dict(x), bool(y))
        self.n_learned += 1

    def predict_proba_one(self, x: Mapping[str, float]) -> float:
        """river's own prediction (the predictor computes the same with numpy)."""
        return float(self.pipeline.predict_proba_one(dict(x)).get(True, 0.0))

    def predictor(self) -> LinearPredictor:
        scaler = self.pipeline["scale"]
        lr = self.pipeline["lr"]
        return LinearPredictor.of(self.feature_names, scaler.means, scaler.vars, lr.weights,
                                  lr.intercept)


# ----------------------------------------------------------------------------- batch


class _Batch:
    online = False
    n_learned = 0

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        """Batch models are static between trainings: labels do not change them."""


class BatchLinear(_Batch):
    """scikit-learn ``LogisticRegression`` on the same prep as ``OnlineLinear``."""

    kind = "batch-lr"

    def __init__(self, feature_names: Sequence[str], *, C: float = 1.0) -> None:
        self.feature_names = tuple(feature_names)
        self.params = {"C": C, "class_weight": "balanced"}
        self._predictor: LinearPredictor | None = None

    def fit(self, xs: Sequence[Mapping[str, float]], ys: Sequence[bool] | np.ndarray
            ) -> BatchLinear:
        from sklearn.linear_model import LogisticRegression

        names = self.feature_names
        log_mask = np.array([n in LOG_FEATURES for n in names], dtype=bool)
        P = _prep(_matrix(xs, names), log_mask)
        mean, std = P.mean(axis=0), P.std(axis=0)
        inv_std = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
        clf = LogisticRegression(C=self.params["C"], class_weight="balanced", max_iter=1000)
        clf.fit((P - mean) * inv_std, np.asarray(ys, dtype=bool))
        self._predictor = LinearPredictor(
            feature_names=names, log_mask=log_mask, mean=mean, inv_std=inv_std,
            weights=clf.coef_[0].astype(float), intercept=float(clf.intercept_[0]),
        )
        return self

    def predictor(self) -> LinearPredictor:
        if self._predictor is None:
            raise RuntimeError("BatchLinear: fit() before predictor()")
        return self._predictor


@dataclass(frozen=True)
class GBMPredictor:
    """A fitted gradient-boosting model; reasons by occluding its top features."""

    feature_names: tuple[str, ...]
    model: Any
    reference: np.ndarray  # per-column training median: the "ordinary" value
    candidates: np.ndarray  # columns ranked by split gain, the ones explanations try

    def matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        return _matrix(xs, self.feature_names)

    def predict(self, X: np.ndarray) -> np.ndarray:
        with _single_thread():
            return self.model.predict_proba(X)[:, 1]  # type: ignore[no-any-return]

    def score(self, xs: Sequence[Mapping[str, float]], k: int
              ) -> tuple[list[float], list[list[Reason]]]:
        return _score_matrix(self, xs, k)

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


class BatchGBM(_Batch):
    """scikit-learn ``HistGradientBoostingClassifier`` on ``DictVectorizer`` columns."""

    kind = "batch-hgb"

    def __init__(self, feature_names: Sequence[str] = (), *, max_iter: int = 200,
                 learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 explain_candidates: int = 8, seed: int = 0) -> None:
        self.feature_names = tuple(feature_names)
        self.params = {"max_iter": max_iter, "learning_rate": learning_rate,
                       "max_leaf_nodes": max_leaf_nodes, "class_weight": "balanced",
                       "explain_candidates": explain_candidates, "seed": seed}
        self._predictor: GBMPredictor | None = None

    def fit(self, xs: Sequence[Mapping[str, float]], ys: Sequence[bool] | np.ndarray
            ) -> BatchGBM:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.feature_extraction import DictVectorizer

        vectorizer = DictVectorizer(sparse=False)
        X = vectorizer.fit_transform(xs)
        if self.feature_names:  # keep the declared order (and columns never seen, as 0)
            known = list(vectorizer.feature_names_)
            X = np.column_stack([X[:, known.index(n)] if n in known else np.zeros(len(X))
                                 for n in self.feature_names])
        else:
            self.feature_names = tuple(vectorizer.feature_names_)
        clf = HistGradientBoostingClassifier(
            max_iter=self.params["max_iter"], learning_rate=self.params["learning_rate"],
            max_leaf_nodes=self.params["max_leaf_nodes"], class_weight="balanced",
            early_stopping=False, random_state=self.params["seed"],
        )
        clf.fit(X, np.asarray(ys, dtype=bool))
        gain = np.zeros(X.shape[1])
        for trees in clf._predictors:  # sklearn internals: split gains per feature
            for tree in trees:
                nodes = tree.nodes[~tree.nodes["is_leaf"].astype(bool)]
                np.add.at(gain, nodes["feature_idx"], nodes["gain"])
        order = np.argsort(-gain)[: self.params["explain_candidates"]]
        self._predictor = GBMPredictor(
            feature_names=self.feature_names, model=clf, reference=np.median(X, axis=0),
            candidates=order[gain[order] > 0],
        )
        return self

    def predictor(self) -> GBMPredictor:
        if self._predictor is None:
            raise RuntimeError("BatchGBM: fit() before predictor()")
        return self._predictor


_controller: Any = None


def _single_thread() -> Any:
    """OpenMP limited to one thread: a WSGI worker must not fan out per request (and
    on a small machine OpenMP's spinning threads cost more than they save)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="openmp")


VARIANTS: dict[str, type] = {"online-lr": OnlineLinear, "batch-hgb": BatchGBM,
                             "batch-lr": BatchLinear}


def make_model(kind: str, feature_names: Sequence[str], **params: Any) -> Any:
    """A fresh model of variant ``kind`` over ``feature_names``."""
    try:
        cls = VARIANTS[kind]
    except KeyError:
        raise ValueError(f"unknown model variant {kind!r}; expected one of "
                         f"{', '.join(VARIANTS)}") from None
    return cls(feature_names, **params)


def clone(model: Any) -> Any:
    """An independent copy (the learner mutates its own; serving keeps predictors)."""
    return copy.deepcopy(model)


@dataclass(frozen=True)
class Artifact:
    """What a registry version holds: the model and the thresholds chosen for it."""

    model: Any
    thresholds: Thresholds

    def save(self, folder: Path) -> None:
        with open(Path(folder) / MODEL_FILE, "wb") as f:
            pickle.dump(self.model, f, protocol=pickle.HIGHEST_PROTOCOL)
        (Path(folder) / THRESHOLDS_FILE).write_text(json.dumps(self.thresholds.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> Artifact:
        """Load a saved artifact (trusted registry folders only: the model is a pickle)."""
        with open(Path(folder) / MODEL_FILE, "rb") as f:
            model = pickle.load(f)
        thresholds = Thresholds.from_dict(json.loads((Path(folder) / THRESHOLDS_FILE).read_text()))
        return cls(model, thresholds)
