"""Experiment statistics against reference values, the SRM flag, the report's JSON shape.

Reference values: GrowthBook's own published test values for ``TwoSidedTTest``
(packages/stats/tests/frequentist/test_tests.py), and the same formulas written out here
independently (gbstats ``frequentist_variance`` / ``variance_of_ratios`` / Welch dof,
``check_srm``) and evaluated with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from scipy import stats

from mlplatform.assignment import Experiment
from mlplatform.experiments import (
    Aggregates,
    ExperimentDefinition,
    ExperimentStore,
    Touch,
    VariantCounts,
    build_report,
    mean_stats,
    proportion,
    relative_lift,
    srm_test,
)


def growthbook_relative(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float,
                        n_b: int) -> tuple[float, tuple[float, float], float]:
    """gbstats' TwoSidedTTest, relative: frequentist_diff, variance_of_ratios (cov 0),
    Welch-Satterthwaite dof, t quantiles."""
    point = (mean_b - mean_a) / abs(mean_a)
    var = (var_b / n_b) / mean_a ** 2 + (var_a / n_a) * mean_b ** 2 / mean_a ** 4
    dof = (var_b / n_b + var_a / n_a) ** 2 / (
        var_b ** 2 / (n_b ** 2 * (n_b - 1)) + var_a ** 2 / (n_a ** 2 * (n_a - 1)))
    half = stats.t.ppf(0.975, dof) * math.sqrt(var)
    p = 2 * (1 - stats.t.cdf(abs(point / math.sqrt(var)), dof))
    return point, (point - half, point + half), p


# (id, control, treatment, published GrowthBook lift, ci, p-value)
PUBLISHED = [
    pytest.param(mean_stats(3407, 1396.87, 52377.9767), mean_stats(3461, 2422.7, 134698.29),
                 0.70732, (-0.03526, 1.44989), 0.06191, id="sample-mean"),
    pytest.param(proportion(28, 14), proportion(30, 16),
                 0.06667, (-0.47767, 0.61101), 0.80707, id="proportion"),
]


@pytest.mark.parametrize(("control", "treatment", "lift", "ci", "p"), PUBLISHED)
def test_relative_lift_matches_growthbooks_published_values(control, treatment, lift, ci, p):
    r = relative_lift(control, treatment)
    assert r.lift is not None and r.ci95 is not None and r.p_value is not None
    assert round(r.lift, 5) == lift
    assert (round(r.ci95[0], 5), round(r.ci95[1], 5)) == ci
    assert round(r.p_value, 5) == p


@pytest.mark.parametrize(("n_a", "c_a", "n_b", "c_b"), [
    (1000, 200, 1000, 300), (5000, 410, 4800, 455), (300, 12, 320, 9), (20000, 1500, 20100, 1480),
], ids=["big-lift", "small-lift", "small-samples", "negative"])
def test_conversion_lift_matches_the_growthbook_formulas(n_a, c_a, n_b, c_b):
    pa, pb = c_a / n_a, c_b / n_b
    point, ci, p = growthbook_relative(pa, pa * (1 - pa), n_a, pb, pb * (1 - pb), n_b)
    r = relative_lift(proportion(n_a, c_a), proportion(n_b, c_b))
    assert r.lift == pytest.approx(point, rel=1e-12)
    assert r.ci95 == pytest.approx(ci, rel=1e-10)
    assert r.p_value == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_revenue_lift_uses_the_sample_variance_of_per_user_revenue():
    rng = np.random.default_rng(1)
    a = rng.exponential(10, 800) * (rng.random(800) < 0.2)
    b = rng.exponential(12, 900) * (rng.random(900) < 0.25)
    point, ci, p = growthbook_relative(a.mean(), a.var(ddof=1), len(a),
                                       b.mean(), b.var(ddof=1), len(b))
    r = relative_lift(mean_stats(len(a), a.sum(), (a ** 2).sum()),
                      mean_stats(len(b), b.sum(), (b ** 2).sum()))
    assert (r.lift, r.p_value) == pytest.approx((point, p), rel=1e-9)
    assert r.ci95 == pytest.approx(ci, rel=1e-9)


def test_lift_is_undefined_without_data_or_a_control_mean():
    assert relative_lift(proportion(1, 0), proportion(10, 3)).lift is None
    assert "control mean is 0" in (relative_lift(proportion(50, 0), proportion(50, 3)).error
                                   or "")


@pytest.mark.parametrize(("users", "weights", "mismatch"), [
    ({"a": 5000, "b": 5000}, {"a": 0.5, "b": 0.5}, False),
    ({"a": 5130, "b": 4870}, {"a": 0.5, "b": 0.5}, False),  # p ~ 0.009: noise, not flagged
    ({"a": 5400, "b": 4600}, {"a": 0.5, "b": 0.5}, True),
    ({"als": 6100, "bpr": 1950, "popularity": 1950}, {"als": 0.6, "bpr": 0.2,
                                                      "popularity": 0.2}, False),
    ({"als": 5000, "bpr": 2500, "popularity": 2500}, {"als": 0.6, "bpr": 0.2,
                                                      "popularity": 0.2}, True),
], ids=["exact", "noise", "skewed", "three-way", "three-way-skewed"])
def test_srm_against_scipy_chisquare(users, weights, mismatch):
    observed = np.array([users[v] for v in weights])
    total_w = sum(weights.values())
    expected = np.array([w / total_w for w in weights.values()]) * observed.sum()
    reference = stats.chisquare(observed, expected)
    r = srm_test(users, weights)
    assert r.chi2 == pytest.approx(reference.statistic, rel=1e-12)
    assert r.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
    assert r.mismatch is mismatch


def test_units_in_a_variant_without_weight_are_a_mismatch():
    assert srm_test({"a": 100, "b": 100, "stray": 3}, {"a": 1, "b": 1}).mismatch


DEFINITION = ExperimentDefinition.of(Experiment("exp", "s", {"als": 0.5, "popularity": 0.5}))
REQUIRED = {"users", "exposures", "conversions", "conversion_rate", "revenue_per_user", "lift",
            "lift_ci95", "p_value"}


def test_report_json_shape_and_numbers():
    counts = {
        "als": VariantCounts(users=1000, converted=300, exposures=2500, revenue=5000.0,
                             revenue_sq=5000.0 * 40, latency_ms_sum=2500.0,
                             latency_buckets={5.0: 2500}),
        "popularity": VariantCounts(users=1010, converted=200, exposures=2400, revenue=3000.0,
                                    revenue_sq=3000.0 * 35, latency_ms_sum=1200.0,
                                    latency_buckets={2.0: 2400}),
    }
    body = build_report(DEFINITION, Aggregates("exp", counts)).to_json()
    assert body["experiment"] == "exp" and body["control"] == "popularity"
    assert set(body["variants"]) == {"als", "popularity"}
    for v in body["variants"].values():
        assert REQUIRED <= set(v)
    als = body["variants"]["als"]
    expected = relative_lift(proportion(1010, 200), proportion(1000, 300))
    assert als["lift"] == pytest.approx(expected.lift, abs=1e-6)
    assert als["lift_ci95"] == pytest.approx(list(expected.ci95), abs=1e-6)
    assert als["lift_ci95"][0] > 0, "a 0.30 vs 0.198 rate on 1000 users each is significant"
    assert als["conversion_rate"] == 0.3 and als["revenue_per_user"] == 5.0
    assert body["variants"]["popularity"]["lift"] is None
    assert {"p_value", "mismatch"} <= set(body["srm"]) and body["srm"]["mismatch"] is False
    assert als["guardrails"]["ok"] and als["guardrails"]["latency_p99_ms"] == 5.0


def test_report_flags_a_skewed_split_from_redis_counts(redis_client: redis.Redis):
    store = ExperimentStore(redis_client)
    tx = redis_client.pipeline(transaction=False)  # the names set has its own slot
    store.count_exposures(tx, "exp", {"als|exposures": 700, "popularity|exposures": 300},
                          {"als": [f"a{i}" for i in range(700)],
                           "popularity": [f"p{i}" for i in range(300)]})
    store.add_conversion(tx, Touch(0, "exp", "als", "recommender:v1"), "a1", purchase=True,
                         revenue=12.5)
    store.add_conversion(tx, Touch(0, "exp", "als", "recommender:v1"), "a1", purchase=True,
                         revenue=7.5)
    tx.execute()
    counts = store.read("exp").variants
    assert (counts["als"].users, counts["popularity"].users) == (700, 300)
    # One user with 12.5 then 7.5: revenue 20, sum of squares of per-user revenue 400.
    assert (counts["als"].revenue, counts["als"].revenue_sq) == (20.0, 400.0)
    assert counts["als"].versions["recommender:v1"]["purchases"] == 2
    body = build_report(DEFINITION, store.read("exp")).to_json()
    assert body["srm"]["mismatch"] is True and body["srm"]["p_value"] < 0.001
    assert store.reset("exp") > 0 and store.read("exp").variants == {}


def test_cli_report_prints_json_and_a_table(redis_client: redis.Redis, redis_url: str,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path):
    from mlplatform.cli import cli
    from mlplatform.config import get_settings

    store = ExperimentStore(redis_client)
    tx = redis_client.pipeline(transaction=False)  # the names set has its own slot
    store.count_exposures(tx, "recommender_model", {"als|exposures": 30},
                          {"als": [f"a{i}" for i in range(30)]})
    tx.execute()
    monkeypatch.setenv("MLSUITE_REDIS_URL", redis_url)
    monkeypatch.setenv("MLSUITE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(cli, ["experiments", "report", "recommender_model", "--json"])
        assert result.exit_code == 0, result.output
        import json

        body = json.loads(result.output)
        assert body["variants"]["als"]["users"] == 30 and REQUIRED <= set(
            body["variants"]["als"])
        table = runner.invoke(cli, ["experiments", "report", "recommender_model"])
        assert table.exit_code == 0 and "sample ratio" in table.output, table.output
        unknown = runner.invoke(cli, ["experiments", "report", "nope"])
        assert unknown.exit_code != 0 and "unknown experiment 'nope'" in unknown.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("name", ["lift", "srm", "guardrails", "definition", "store", "report"])
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"mlplatform.experiments.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"mlplatform.experiments.{name} has no examples"
    assert result.failed == 0
