"""PII tokens: keyed, stable, per kind, idempotent on tokens, the key kept once per deployment."""

from __future__ import annotations

import stat

import pytest

from mlplatform.config import Settings
from mlplatform.errors import ConfigError
from mlplatform.security.pii import Tokeniser, pii_key, tokeniser


def test_the_embedded_key_is_created_once_private_and_reused(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = pii_key(settings)
    assert len(key) >= 32 and pii_key(settings) == key
    path = tmp_path / "pii.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process with the same folder gets the same tokens.
    assert tokeniser(Settings(data_dir=tmp_path)).token("card", "4111111111111111") == \
        Tokeniser(path.read_bytes()).token("card", "4111111111111111")


def test_the_configured_key_wins_and_must_be_long_enough(tmp_path) -> None:
    env = {"MLSUITE_PII_KEY": "p" * 32, "MLSUITE_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert pii_key(settings) == b"p" * 32
    assert not (tmp_path / "pii.key").exists()
    with pytest.raises(ConfigError, match="MLSUITE_PII_KEY must be at least 16"):
        Settings.from_env({**env, "MLSUITE_PII_KEY": "short"})
    assert "p" * 32 not in repr(settings)


def test_tokens_hide_the_id_differ_by_key_and_kind_and_are_idempotent() -> None:
    a, b = Tokeniser(b"a" * 32), Tokeniser(b"b" * 32)
    pan = "4111111111111111"
    card = a.token("card", pan)
    assert pan not in card and card.startswith("card_") and a.is_token("card", card)
    assert a.token("card", pan) == card != b.token("card", pan)
    assert a.token("user", pan) != card.replace("card_", "user_")
    assert a.token("card", card) == card  # a token passed back is not tokenised again
    assert a.token("user", card) != card  # ...but only for its own kind
    assert a.tokens("device", ["d1", "d2", "d1"])[0] == a.tokens("device", ["d1"])[0]
    with pytest.raises(ValueError, match="unknown identifier kind 'iban'"):
        a.token("iban", "x")


def test_a_column_is_tokenised_once_per_distinct_id_and_missing_stays_missing() -> None:
    import pandas as pd

    from mlplatform.security.pii import token_column

    t = Tokeniser(b"c" * 32)
    out = token_column(pd.Series(["4111", None, "4111", 7]), "card", t)
    assert list(out) == [t.token("card", "4111"), None, t.token("card", "4111"),
                         t.token("card", "7")]
