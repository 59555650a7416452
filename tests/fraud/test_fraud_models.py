"""One contract every model variant meets: dicts in, probabilities out, reasons that
make sense, identical after a save/load, online variants learn and batch ones do not."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fraud.models import VARIANTS, Artifact, Hybrid, feature_names_of, fit_model, make_model
from fraud.thresholds import Thresholds


def _data(n: int = 3000, seed: int = 0) -> tuple[list[dict[str, float]], np.ndarray]:
    """Fraud = bursts of large amounts on new devices; a category one-hot on the side."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        fraud = rng.random() < 0.05
        x = {
            "amount": float(rng.lognormal(6 if fraud else 3.5, 0.6)),
            "card_count_1h": float(rng.poisson(6 if fraud else 0.5)),
            "card_new_device": float(rng.random() < (0.8 if fraud else 0.1)),
            "hour_sin": float(rng.uniform(-1, 1)),
            f"mcat={rng.choice(['grocery', 'jewelry', 'travel'])}": 1.0,
        }
        xs.append(x)
        ys.append(fraud)
    return xs, np.array(ys)


def _fit(kind: str, xs: list[dict[str, float]], ys: np.ndarray) -> Any:
    return fit_model(make_model(kind, feature_names_of(xs)), xs, ys)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def fitted(request: pytest.FixtureRequest) -> tuple[str, Any]:
    xs, ys = _data()
    return request.param, _fit(request.param, xs, ys)


def test_scores_are_probabilities_that_rank_fraud_first(fitted: tuple[str, Any]) -> None:
    from sklearn.metrics import roc_auc_score

    kind, model = fitted
    xs, ys = _data(1000, seed=1)
    p = model.predictor()
    scores = p.predict(p.matrix(xs))
    assert scores.shape == (1000,) and np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(ys, scores) > 0.9, f"{kind} does not separate fraud"


def test_one_row_and_many_rows_score_the_same(fitted: tuple[str, Any]) -> None:
    _, model = fitted
    xs, _ = _data(20, seed=2)
    p = model.predictor()
    many, many_reasons = p.score(xs, 3)
    singles = [p.score([x], 3) for x in xs]
    np.testing.assert_allclose([s[0][0] for s in singles], many, rtol=1e-9, atol=1e-12)
    assert [[r.feature for r in s[1][0]] for s in singles] == \
        [[r.feature for r in rs] for rs in many_reasons]


def test_reasons_are_the_features_that_raised_the_score(fitted: tuple[str, Any]) -> None:
    kind, model = fitted
    p = model.predictor()
    burst = {"amount": 900.0, "card_count_1h": 9.0, "card_new_device": 1.0, "hour_sin": 0.0,
             "mcat=grocery": 1.0}
    [score], [reasons] = p.score([burst], 3)
    assert score > 0.5
    assert 1 <= len(reasons) <= 3
    names = [r.feature for r in reasons]
    assert set(names) <= set(p.feature_names)
    assert {"amount", "card_count_1h", "card_new_device"} & set(names), (kind, names)
    assert all(r.contribution > 0 for r in reasons)
    assert [r.contribution for r in reasons] == sorted((r.contribution for r in reasons),
                                                       reverse=True)
    assert not any(n.startswith("mcat=") and n != "mcat=grocery" for n in names), \
        "a category the transaction is not in cannot be a reason"
    assert p.score([burst], 0)[1] == [[]]


def test_missing_and_unknown_features_read_as_zero(fitted: tuple[str, Any]) -> None:
    _, model = fitted
    p = model.predictor()
    x = {"amount": 20.0, "card_count_1h": 0.0, "card_new_device": 0.0, "hour_sin": 0.0}
    padded = {**x, "mcat=grocery": 0.0, "something_new": 123.0}
    assert p.score([x], 3)[0] == p.score([padded], 3)[0]


def test_artifacts_round_trip_exactly(fitted: tuple[str, Any], tmp_path: Path) -> None:
    _, model = fitted
    Artifact(model, Thresholds(0.3, 0.8)).save(tmp_path)
    loaded = Artifact.load(tmp_path)
    xs, _ = _data(200, seed=3)
    a, b = model.predictor(), loaded.model.predictor()
    assert np.array_equal(a.predict(a.matrix(xs)), b.predict(b.matrix(xs)))
    assert loaded.thresholds == Thresholds(0.3, 0.8)


def test_online_variants_learn_and_batch_variants_stay_put(fitted: tuple[str, Any]) -> None:
    kind, model = fitted
    model = copy.deepcopy(model)
    x = {"amount": 30.0, "card_count_1h": 0.0, "card_new_device": 0.0, "hour_sin": 0.0}
    before = model.predictor().score([x], 0)[0][0]
    for _ in range(20):
        model.learn_one(x, True)
    after = model.predictor().score([x], 0)[0][0]
    if model.online:
        assert after > before, f"{kind} did not learn from 20 fraud labels"
    else:
        assert after == before, f"{kind} is a batch model: labels must not move it"


def test_the_online_predictor_equals_rivers_own_prediction() -> None:
    xs, ys = _data(500)
    model = _fit("online-lr", xs, ys)
    p = model.predictor()
    ours = p.predict(p.matrix(xs[:50]))
    rivers = [model.predict_proba_one(x) for x in xs[:50]]
    np.testing.assert_allclose(ours, rivers, rtol=1e-9, atol=1e-12)


def test_learning_is_deterministic() -> None:
    xs, ys = _data(800)
    a, b = _fit("online-lr", xs, ys).predictor(), _fit("online-lr", xs, ys).predictor()
    assert np.array_equal(a.predict(a.matrix(xs)), b.predict(b.matrix(xs)))


def test_the_hybrid_never_lowers_a_score_as_the_amount_grows() -> None:
    """Monotone in the amount, even after labels that would pull the other way and past
    the largest amount seen in training (trees are flat there; the layer weight >= 0)."""
    xs, ys = _data(3000)
    model = _fit("hybrid-gbm", xs, ys)
    assert isinstance(model, Hybrid)
    for x in xs[:300]:  # large amounts labelled legitimate: a naive layer would learn "big = safe"
        model.learn_one({**x, "amount": 5000.0, "amount_vs_card_avg": 100.0}, False)
    p = model.predictor()
    base = {"card_count_1h": 0.0, "card_new_device": 1.0, "hour_sin": 0.0}
    amounts = [1.0, 10.0, 50.0, 500.0, 1e4, 1e6, 1e9]
    scores = p.score([{**base, "amount": a, "amount_vs_card_avg": (a + 1) / 41.0}
                      for a in amounts], 0)[0]
    assert all(b >= a - 1e-12 for a, b in zip(scores, scores[1:])), list(zip(amounts, scores))


def test_the_hybrid_snapshot_arrays_give_the_same_predictor() -> None:
    xs, ys = _data(2000)
    model = _fit("hybrid-gbm", xs, ys)
    for x, y in zip(xs[:200], ys[:200]):
        model.learn_one(x, bool(y))
    fresh = make_model("hybrid-gbm", model.feature_names)
    fresh.__dict__.update(model.__dict__)
    X = model.predictor().matrix(xs[:50])
    a = model.predictor().predict(X)
    b = fresh.predictor(model.layer_arrays()).predict(X)
    assert np.allclose(a, b)
    assert np.allclose(a, [model.predict_proba_one(x) for x in xs[:50]])


def test_the_hybrid_scores_one_row_as_it_scores_it_in_a_batch_to_the_bit() -> None:
    """A /score request and a batch run the same compiled loops (``fraud.kernels``); after
    learning (the layer's weights no longer zero), with an absent feature and a missing
    (NaN) one, the two give the same score and the same reasons, bit for bit, and the
    missing value gives a score, not NaN (the trees route it, the layer holds it at its
    mean)."""
    xs, ys = _data(2000)
    model = _fit("hybrid-gbm", xs, ys)
    for x, y in zip(xs[:300], ys[:300]):
        model.learn_one(x, bool(y))
    p = model.predictor()
    rows, _ = _data(60, seed=5)
    del rows[3]["card_count_1h"]
    rows[4]["amount"] = float("nan")
    many, many_reasons = p.score(rows, 3)
    assert 0.0 <= many[4] <= 1.0
    for i, x in enumerate(rows):
        [one], [reasons] = p.score([x], 3)
        assert one == many[i], (i, one, many[i])
        assert reasons == many_reasons[i], (i, reasons, many_reasons[i])
    assert any(r for r in many_reasons) and len(set(many)) > 30


def test_the_compiled_tree_walk_is_scikit_learns_model_on_missing_and_extreme_values() -> None:
    """The trees are walked in compiled loops (``fraud.kernels``), not by
    scikit-learn: on rows with NaN (each split's learned side), infinities and values far
    outside training, the probabilities are scikit-learn's own, and the per-feature
    contributions add up to each row's raw score."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from fraud.trees import TreeEnsemble

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan  # learned missing-value sides
    y = (np.nan_to_num(X[:, 0]) + np.isnan(X[:, 1]) + 0.5 * np.nan_to_num(X[:, 2])) > 0.8
    clf = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=40, random_state=0)
    trees = TreeEnsemble.of(clf.fit(X, y))
    rows = rng.normal(size=(400, 6)) * 3
    rows[rng.random(rows.shape) < 0.2] = np.nan
    rows[::7, 3] = np.inf
    rows[::11, 4] = -np.inf
    rows[::13, 0] = 1e300
    assert np.allclose(trees.proba(rows), clf.predict_proba(rows)[:, 1], rtol=1e-12, atol=0)
    raw, C = trees.raw_and_contributions(rows)
    assert np.allclose(raw, trees.expected + C.sum(axis=1))
    assert (C != 0).any(axis=0).sum() >= 4  # the credits land on several features
