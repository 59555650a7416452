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
- ``hybrid-gbm`` (``Hybrid``, served by default): a gradient-boosting model fitted by
  training and by the pipeline on schedule, whose log-odds feed a river logistic layer
  that learns every label between refits (starting as the trees alone). Amount features
  are monotone (trees constrained, layer weights kept >= 0): a larger amount never
  lowers the score, even past the range seen in training.

``fit_model`` trains any variant on time-ordered history (``fit`` for models that have
it, else ``learn_one`` in order). ``online_state`` / ``with_online_state`` carry what
labels change (the learner checkpoints and publishes only that; the trees stay in the
registry version).

Serving never touches a mutable model: ``model.predictor()`` returns an immutable,
thread-safe ``Predictor`` (``fraud.predictors``) that scores and explains whole requests
at once. The online learner publishes a fresh predictor after applying labels.

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
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fraud.features import BASE_FEATURES, LOG_FEATURES
from fraud.predictors import (
    GBMPredictor,
    HybridPredictor,
    LinearPredictor,
    Predictor,
    _single_thread,
    matrix,
    prep,
)
from fraud.thresholds import Thresholds

__all__ = [
    "FraudModel",
    "OnlineLinear",
    "BatchGBM",
    "BatchLinear",
    "Hybrid",
    "VARIANTS",
    "fit_model",
    "MONOTONE_FEATURES",
    "make_model",
    "feature_names_of",
    "Artifact",
    "clone",
]

MODEL_FILE = "model.pkl"
# A larger amount (absolute, or against the card's usual) never lowers a hybrid's score.
MONOTONE_FEATURES = frozenset({"amount", "amount_vs_card_avg", "card_amount_vs_usual"})
THRESHOLDS_FILE = "thresholds.json"


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

    def predictor(self, arrays: Mapping[str, np.ndarray] | None = None) -> LinearPredictor:
        """The serving function; with ``arrays`` (a snapshot's ``layer_arrays``), that state."""
        if arrays is not None:
            return LinearPredictor(
                feature_names=self.feature_names, log_mask=arrays["log_mask"].astype(bool),
                mean=arrays["mean"], inv_std=arrays["inv_std"], weights=arrays["weights"],
                intercept=float(arrays["intercept"][0]))
        scaler = self.pipeline["scale"]
        lr = self.pipeline["lr"]
        return LinearPredictor.of(self.feature_names, scaler.means, scaler.vars, lr.weights,
                                  lr.intercept)

    def layer_arrays(self) -> dict[str, np.ndarray]:
        """What labels change, as plain arrays (the learner's snapshot)."""
        p = self.predictor()
        return {"log_mask": p.log_mask, "mean": p.mean, "inv_std": p.inv_std,
                "weights": p.weights, "intercept": np.array([p.intercept])}

    def online_state(self) -> tuple[Any, int]:
        return self.pipeline, self.n_learned

    def with_online_state(self, state: tuple[Any, int]) -> OnlineLinear:
        model = copy.copy(self)
        model.pipeline, model.n_learned = copy.deepcopy(state[0]), int(state[1])
        return model


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
        P = prep(matrix(xs, names), log_mask)
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
        with _single_thread():  # OpenMP threads spin when the CPUs are shared: far slower
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


class Hybrid:
    """Trees fitted in batch, corrected online: ``sigmoid(a * trees + w . z + b)``."""

    kind = "hybrid-gbm"
    online = True

    def __init__(self, feature_names: Sequence[str], *, max_iter: int = 150,
                 max_depth: int = 6, max_leaf_nodes: int = 31, learning_rate: float = 0.1,
                 online_learning_rate: float = 0.002, seed: int = 0) -> None:
        self.feature_names = tuple(feature_names)
        self.params = {"max_iter": max_iter, "max_depth": max_depth,
                       "max_leaf_nodes": max_leaf_nodes, "learning_rate": learning_rate,
                       "online_learning_rate": online_learning_rate, "seed": seed}
        self.trees: Any = None
        self.layer: Any = None
        self.n_learned = 0
        self._stats: dict[str, np.ndarray] = {}
        self._monotone: tuple[str, ...] = ()

    def fit(self, xs: Sequence[Mapping[str, float]], ys: Sequence[bool] | np.ndarray) -> Hybrid:
        """Fit the trees on ``xs`` and start the online layer as "the trees alone"."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        from fraud.trees import TreeEnsemble

        names = self.feature_names
        X = matrix(xs, names)
        constraints = [1 if n in MONOTONE_FEATURES else 0 for n in names]
        clf = HistGradientBoostingClassifier(
            max_iter=self.params["max_iter"], max_depth=self.params["max_depth"],
            max_leaf_nodes=self.params["max_leaf_nodes"],
            learning_rate=self.params["learning_rate"], monotonic_cst=constraints,
            l2_regularization=1.0, early_stopping=False, random_state=self.params["seed"])
        with _single_thread():
            clf.fit(X, np.asarray(ys, dtype=bool))
        self.trees = TreeEnsemble.of(clf)
        log_mask = np.array([n in LOG_FEATURES for n in names], dtype=bool)
        P = prep(X, log_mask)
        std = P.std(axis=0)
        self._stats = {"log_mask": log_mask, "mean": P.mean(axis=0),
                       "inv_std": np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0),
                       "typical": X.mean(axis=0)}
        self._monotone = tuple(n for n in names if n in MONOTONE_FEATURES)
        self.layer = self._new_layer()
        self.n_learned = 0
        return self

    def _new_layer(self) -> Any:
        from river import linear_model, optim

        rate = self.params["online_learning_rate"]
        layer = linear_model.LogisticRegression(optimizer=optim.SGD(rate), intercept_lr=rate)
        # ``weights`` is a copy; river keeps the live ones in ``_weights`` (a VectorDict).
        layer._weights["_trees"] = 1.0
        return layer

    def _inputs(self, x: Mapping[str, float]) -> dict[str, float]:
        X = matrix([x], self.feature_names)
        z = (prep(X, self._stats["log_mask"]) - self._stats["mean"]) * self._stats["inv_std"]
        out = dict(zip(self.feature_names, z[0].tolist()))
        out["_trees"] = float(self.trees.raw(X)[0])
        return out

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        if self.layer is None:
            raise RuntimeError("Hybrid: fit() before learn_one()")
        self.layer.learn_one(self._inputs(x), bool(y))
        weights = self.layer._weights
        for name in self._monotone:  # keep a larger amount from ever lowering the score
            if weights[name] < 0.0:
                weights[name] = 0.0
        self.n_learned += 1

    def predict_proba_one(self, x: Mapping[str, float]) -> float:
        return float(self.layer.predict_proba_one(self._inputs(x)).get(True, 0.0))

    def online_state(self) -> tuple[Any, int]:
        return self.layer, self.n_learned

    def with_online_state(self, state: tuple[Any, int]) -> Hybrid:
        model = copy.copy(self)
        model.layer, model.n_learned = copy.deepcopy(state[0]), int(state[1])
        return model

    def layer_arrays(self) -> dict[str, np.ndarray]:
        """What labels change, as plain arrays (the learner's snapshot)."""
        w = self.layer._weights.to_dict()
        return {"weights": np.array([float(w.get(n, 0.0)) for n in self.feature_names]),
                "layer": np.array([float(w.get("_trees", 0.0)), float(self.layer.intercept)])}

    def predictor(self, arrays: Mapping[str, np.ndarray] | None = None) -> HybridPredictor:
        """The serving function; with ``arrays`` (a snapshot's ``layer_arrays``), the
        layer learned since this version."""
        if self.trees is None:
            raise RuntimeError("Hybrid: fit() before predictor()")
        a = self.layer_arrays() if arrays is None else arrays
        return HybridPredictor(
            feature_names=self.feature_names, trees=self.trees,
            log_mask=self._stats["log_mask"], mean=self._stats["mean"],
            inv_std=self._stats["inv_std"], tree_weight=float(a["layer"][0]),
            weights=np.asarray(a["weights"], dtype=float), intercept=float(a["layer"][1]),
            typical=self._stats["typical"])


VARIANTS: dict[str, type] = {"online-lr": OnlineLinear, "batch-hgb": BatchGBM,
                             "batch-lr": BatchLinear, "hybrid-gbm": Hybrid}


def fit_model(model: Any, xs: Sequence[Mapping[str, float]], ys: Sequence[bool] | np.ndarray
              ) -> Any:
    """Train ``model`` on time-ordered history: ``fit`` when it has one, else label by label."""
    if hasattr(model, "fit"):
        return model.fit(xs, ys)
    for x, y in zip(xs, ys):
        model.learn_one(x, bool(y))
    return model


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


def _signing_key(folder: Path) -> bytes:
    """The deployment's key for a registry folder: ``MLSUITE_SECRET_KEY``, else the data
    folder's ``secret.key`` (the folder holding the registry's ``models/``)."""
    import os

    from mlplatform.config import Settings
    from mlplatform.snapshots import secret_key

    if os.environ.get("MLSUITE_SECRET_KEY"):
        return os.environ["MLSUITE_SECRET_KEY"].encode()
    folder = Path(folder).resolve()
    data_dir = next((p.parent for p in folder.parents if p.name == "models"), folder)
    return secret_key(Settings(data_dir=data_dir, secret_key=None))


@dataclass(frozen=True)
class Artifact:
    """What a registry version holds: the model and the thresholds chosen for it.

    The model file is a pickle signed with the deployment's key (HMAC): a file someone
    else wrote, or changed, is refused instead of run."""

    model: Any
    thresholds: Thresholds

    def save(self, folder: Path) -> None:
        from mlplatform.snapshots import dumps_signed

        blob = dumps_signed(self.model, _signing_key(folder))
        (Path(folder) / MODEL_FILE).write_bytes(blob)
        (Path(folder) / THRESHOLDS_FILE).write_text(json.dumps(self.thresholds.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> Artifact:
        """Load a saved artifact; ``SignatureError`` if the model file is not signed with
        this deployment's key."""
        from mlplatform.snapshots import loads_signed

        model = loads_signed((Path(folder) / MODEL_FILE).read_bytes(), _signing_key(folder))
        thresholds = Thresholds.from_dict(json.loads((Path(folder) / THRESHOLDS_FILE).read_text()))
        return cls(model, thresholds)
