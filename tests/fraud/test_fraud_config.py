"""Fraud configuration and the transaction schema: defaults, overrides, loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud.config import FraudConfig
from fraud.schema import parse_transaction
from mlplatform.errors import BadRequest, ConfigError


def test_defaults_are_the_documented_targets() -> None:
    c = FraudConfig.from_env({})
    assert (c.review_fpr, c.decline_fpr, c.extra_fields) == (0.02, 0.005, ())


def test_a_toml_file_then_variables_override_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "fraud.toml"
    path.write_text('[fraud]\nreview_fpr = 0.03\nextra_fields = ["basket_size"]\ntop_reasons = 5\n')
    c = FraudConfig.from_env({"MLSUITE_FRAUD_CONFIG": str(path), "MLSUITE_FRAUD_TOP_REASONS": "2",
                              "MLSUITE_FRAUD_PORT": "9000"})  # the platform's, not ours
    assert (c.review_fpr, c.extra_fields, c.top_reasons) == (0.03, ("basket_size",), 2)


@pytest.mark.parametrize("env,name", [
    ({"MLSUITE_FRAUD_REVIEW_FPR": "2%"}, "MLSUITE_FRAUD_REVIEW_FPR"),
    ({"MLSUITE_FRAUD_REVIEW_FPR": "0.001"}, "MLSUITE_FRAUD_DECLINE_FPR"),  # decline > review
    ({"MLSUITE_FRAUD_TOP_REASONS": "-1"}, "MLSUITE_FRAUD_TOP_REASONS"),
    ({"MLSUITE_FRAUD_EXTRA_FIELDS": "Basket Size"}, "MLSUITE_FRAUD_EXTRA_FIELDS"),
    ({"MLSUITE_FRAUD_REVIEW_THRESHOLD": "1.5"}, "MLSUITE_FRAUD_REVIEW_THRESHOLD"),
    ({"MLSUITE_FRAUD_CONFIG": "/nonexistent.toml"}, "MLSUITE_FRAUD_CONFIG"),
], ids=["not a number", "decline above review", "negative", "bad field name",
        "threshold above 1", "missing file"])
def test_a_bad_setting_names_itself(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        FraudConfig.from_env(env)


def test_extra_numeric_fields_are_validated_and_default_to_zero() -> None:
    body = {"transaction_id": "t1", "timestamp": 1735689600, "card_id": "c1",
            "merchant_id": "m1", "amount": 1, "currency": "EUR", "country": "FR",
            "channel": "online"}
    assert parse_transaction(body, extra_fields=("basket_size",)).extra == {"basket_size": 0.0}
    t = parse_transaction({**body, "basket_size": 3}, extra_fields=("basket_size",))
    assert t.extra == {"basket_size": 3.0}
    with pytest.raises(BadRequest, match="basket_size must be a finite number"):
        parse_transaction({**body, "basket_size": "3"}, extra_fields=("basket_size",))
    with pytest.raises(BadRequest, match="basket_size is not a transaction field"):
        parse_transaction({**body, "basket_size": 3})


def test_extra_fields_reach_the_features_and_the_model(make_app, tx) -> None:  # type: ignore[no-untyped-def]
    import json

    from fraud.app import get_service

    app = make_app(extra_fields=("basket_size",))
    response = app.test_client().post("/v1/transactions/score", json=tx(basket_size=4))
    assert response.status_code == 200, response.get_json()
    [record] = get_service(app).decisions.fetch(["t-test-1"])
    assert json.loads(record)["features"]["x_basket_size"] == 4.0


def test_ensure_model_trains_once_and_seeds_velocity_once(
        tmp_path: Path, payments_dir: Path, settings, redis_client) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from fraud.cli import ensure_model

    shutil.copytree(payments_dir, tmp_path / "payments")
    s = settings.with_(data_dir=tmp_path)
    ensure_model(s)
    versions = sorted(p.name for p in (tmp_path / "models" / "fraud-online" / "versions").iterdir())
    assert versions == ["1"]
    assert redis_client.get("fraud:velocity:seeded")
    card = redis_client.keys("fraud:v:ch:*")
    assert len(card) > 100
    assert all(k.startswith(b"fraud:v:ch:card_") for k in card), "seeded by card token"
    seen = int(redis_client.hget(card[0], "n"))
    ensure_model(s)  # nothing to do the second time
    assert sorted(p.name for p in (tmp_path / "models" / "fraud-online" / "versions").iterdir()) \
        == ["1"]
    assert int(redis_client.hget(card[0], "n")) == seen, "history seeded twice"
