"""The contract every recommender variant keeps, run over ALS, BPR and popularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.models import Recommender
from recommender.ranking import exclude, top_n
from recommender.variants import VARIANTS, load_recommender, make_recommender

from .conftest import Tiny

# Small but real settings: the tiny shop has 40 users and 20 items.
PARAMS = {
    "als": {"factors": 4, "regularization": 5.0, "alpha": 4.0, "iterations": 10},
    "bpr": {"factors": 4, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
    "popularity": {},
}


def fitted(kind: str, tiny: Tiny) -> Recommender:
    model = make_recommender(kind, **PARAMS[kind])
    model.fit(tiny.matrix, groups=tiny.groups)
    return model


@pytest.fixture(params=sorted(VARIANTS), ids=lambda k: f"variant={k}")
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["als", "bpr"], ids=lambda k: f"variant={k}")
def factor_kind(request: pytest.FixtureRequest) -> str:
    """The personalised variants (popularity ranks the same for everyone in a segment)."""
    return str(request.param)


def test_scores_one_finite_row_per_user(kind: str, tiny: Tiny) -> None:
    model = fitted(kind, tiny)
    scores = model.scores(tiny.matrix[:5], tiny.groups[:5])
    assert scores.shape == (5, len(tiny.items))
    assert scores.dtype == np.float32
    assert not np.isnan(scores).any(), "a score is NaN"


def test_empty_history_never_gives_nan(kind: str, tiny: Tiny) -> None:
    model = fitted(kind, tiny)
    empty = sp.csr_matrix((2, len(tiny.items)), dtype=np.float32)
    scores = model.scores(empty, np.array([-1, 0]))
    assert not np.isnan(scores).any()


def test_recommends_the_users_own_taste_group(factor_kind: str, tiny: Tiny) -> None:
    kind = factor_kind
    model = fitted(kind, tiny)
    hits = 0
    for row in range(len(tiny.users)):
        history = tiny.matrix[row]
        scores = model.scores(history)
        exclude(scores, history)
        ids, _ = top_n(scores, 3)
        hits += sum(int(i) in tiny.group_items(int(tiny.groups[row])) for i in ids[0])
    share = hits / (3 * len(tiny.users))
    assert share >= 0.8, f"{kind}: only {share:.0%} of top-3 items come from the user's group"


def test_popularity_per_segment_prefers_the_segments_items(tiny: Tiny) -> None:
    model = fitted("popularity", tiny)
    empty = sp.csr_matrix((2, len(tiny.items)), dtype=np.float32)
    ids, _ = top_n(model.scores(empty, np.array([0, 1])), 5)
    assert set(ids[0].tolist()) <= tiny.group_items(0)
    assert set(ids[1].tolist()) <= tiny.group_items(1)


def test_live_history_changes_the_scores(factor_kind: str, tiny: Tiny) -> None:
    """Fold-in from the live history: a new interaction moves the user's scores."""
    model = fitted(factor_kind, tiny)
    before = model.scores(tiny.matrix[:1])
    extra = tiny.matrix[:1].copy().tolil()
    group_b = sorted(tiny.group_items(1))[:4]
    for i in group_b:
        extra[0, i] = 8.0
    after = model.scores(extra.tocsr())
    assert not np.allclose(before, after)
    assert after[0, group_b].mean() > before[0, group_b].mean()


def test_same_seed_same_model(kind: str, tiny: Tiny) -> None:
    a, b = fitted(kind, tiny), fitted(kind, tiny)
    np.testing.assert_array_equal(a.scores(tiny.matrix), b.scores(tiny.matrix))


def test_save_load_round_trip(kind: str, tiny: Tiny, tmp_path: Path) -> None:
    model = fitted(kind, tiny)
    model.save(tmp_path / kind)
    loaded = load_recommender(tmp_path / kind)
    assert type(loaded) is type(model)
    assert loaded.params == model.params
    np.testing.assert_array_equal(model.scores(tiny.matrix, tiny.groups),
                                  loaded.scores(tiny.matrix, tiny.groups))


def test_new_items_never_come_back_broken(kind: str, tiny: Tiny) -> None:
    """Folded-in items get finite scores or -inf; an item without data is never shown."""
    model = fitted(kind, tiny)
    n_users, n_items = tiny.matrix.shape
    # new item 0: liked by group-0 users; new item 1: nobody has touched it
    item_users = sp.lil_matrix((2, n_users), dtype=np.float32)
    for u in np.flatnonzero(tiny.groups == 0)[:10]:
        item_users[0, u] = 8.0
    model.add_items(item_users.tocsr())
    assert model.n_items == n_items + 2
    histories = sp.csr_matrix((tiny.matrix.data, tiny.matrix.indices, tiny.matrix.indptr),
                              shape=(n_users, n_items + 2))
    scores = model.scores(histories, tiny.groups)
    assert not np.isnan(scores).any()
    ids, _ = top_n(scores, n_items + 2)
    if kind != "popularity":
        assert (n_items + 1) not in ids, "an item with no interactions was recommended"
    if kind == "als":
        assert (n_items) in ids, "partial_fit_items did not place the new item"


def test_similar_items_are_from_the_same_group(kind: str, tiny: Tiny) -> None:
    model = fitted(kind, tiny)
    item = min(tiny.group_items(0))
    sims = model.similar(item)
    if kind == "popularity":
        assert sims is None
        return
    assert sims is not None and sims[item] == -np.inf
    ids, _ = top_n(sims[None, :], 3)
    assert set(ids[0].tolist()) <= tiny.group_items(0)


@pytest.mark.parametrize(
    ("scores", "n", "expected"),
    [
        pytest.param([[0.1, 0.9, 0.5]], 2, [[1, 2]], id="best-first"),
        pytest.param([[0.5, 0.5, 0.1]], 2, [[0, 1]], id="ties-lower-index-first"),
        pytest.param([[0.3, -np.inf, 0.1]], 3, [[0, 2, -1]], id="minus-inf-never-returned"),
        pytest.param([[0.3, 0.2]], 4, [[0, 1, -1, -1]], id="pads-when-n-exceeds-items"),
    ],
)
def test_top_n(scores: list[list[float]], n: int, expected: list[list[int]]) -> None:
    ids, _ = top_n(np.array(scores, dtype=np.float32), n)
    assert ids.tolist() == expected


def test_unknown_variant_names_the_choices() -> None:
    with pytest.raises(ValueError, match="als, bpr, popularity"):
        make_recommender("svd")


def test_score_one_agrees_with_the_batch_path(kind: str, tiny: Tiny) -> None:
    """The per-request path (numpy) gives what the batch path (implicit) gives."""
    model = fitted(kind, tiny)
    batch = model.scores(tiny.matrix, tiny.groups)
    for row in range(len(tiny.users)):
        history = tiny.matrix[row]
        one = model.score_one(history.indices, history.data, int(tiny.groups[row]))
        np.testing.assert_allclose(one, batch[row], rtol=1e-3, atol=1e-4,
                                   err_msg=f"{kind}: user row {row}")
    empty = model.score_one(np.zeros(0, np.int32), np.zeros(0, np.float32), -1)
    np.testing.assert_allclose(
        empty, model.scores(sp.csr_matrix((1, len(tiny.items)), dtype=np.float32))[0], atol=1e-6)
