"""Tokenised identifiers: card numbers, device ids and user ids never reach Redis keys,
streams, logs, the lake or a model as they were sent.

Each is replaced at the edge (the request's parsing, a file's loading) by a keyed HMAC
token: the same id gives the same token on every replica and in every process that holds
the deployment's key, so features, velocity windows, lists and models still join on it;
without the key a token cannot be turned back into the id, nor an id guessed from it.

The key is ``MLSUITE_PII_KEY``; unset, a random key created once in
``<data_dir>/pii.key`` (the embedded demo's). Changing the key changes every token: the
state keyed by the old ones (velocity, profiles, a user's history and variant) is then
unreachable, as after a wipe. Rotate it with a backup restore in mind, not lightly.

A token keeps its kind visible (``card_``, ``dev_``, ``user_``) and is 16 URL-safe
characters (96 bits: no collision among billions of ids). ``token`` leaves a value that
already is a token of its kind as it is, so an analyst can pass a token seen in a review
case back to ``PUT /v1/lists/card/<token>``, and no path tokenises twice.

>>> t = Tokeniser(b"k" * 32)
>>> card = t.token("card", "4111111111111111")
>>> card.startswith("card_"), len(card), t.token("card", card) == card
(True, 21, True)
>>> t.token("user", "u1") == Tokeniser(b"k" * 32).token("user", "u1")
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlplatform.lifecycle import local_secret

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from mlplatform.config import Settings

__all__ = ["KINDS", "Kind", "Tokeniser", "is_token", "pii_key", "token_column", "tokeniser"]

Kind = Literal["card", "device", "user"]
# The prefix of each kind's tokens: short, so keys and members stay small.
KINDS: dict[str, str] = {"card": "card_", "device": "dev_", "user": "user_"}
TOKEN_CHARS = 16
_TOKEN = {kind: re.compile(rf"^{re.escape(prefix)}[A-Za-z0-9_-]{{{TOKEN_CHARS}}}$")
          for kind, prefix in KINDS.items()}


def is_token(kind: str, value: str) -> bool:
    """Whether ``value`` already is a token of ``kind`` (no key needed to tell)."""
    return _TOKEN[kind].match(value) is not None


class Tokeniser:
    """Keyed HMAC-SHA256 tokens of identifiers (one key per deployment)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the PII key must be at least 16 bytes")
        self._key = key
        # A bounded memo: the hot path sees the same cards and users again and again.
        self._cached = lru_cache(maxsize=65_536)(self._compute)

    def token(self, kind: str, value: str) -> str:
        """``value``'s token of ``kind`` (``card``, ``device``, ``user``); a token of that
        kind is returned as it is."""
        return self._cached(kind, value)

    def tokens(self, kind: str, values: Iterable[str]) -> list[str]:
        """``token`` of each value, in order (a file's column)."""
        token = self._cached
        return [token(kind, v) for v in values]

    def is_token(self, kind: str, value: str) -> bool:
        return is_token(kind, value)

    def _compute(self, kind: str, value: str) -> str:
        pattern = _TOKEN.get(kind)
        if pattern is None:
            raise ValueError(f"unknown identifier kind {kind!r}: expected one of "
                             f"{', '.join(KINDS)}")
        if pattern.match(value):
            return value
        # The kind is part of the message: a card and a user with the same id differ.
        digest = hmac.new(self._key, f"{kind}\x1f{value}".encode(), hashlib.sha256).digest()
        text = base64.urlsafe_b64encode(digest).decode()[:TOKEN_CHARS]
        return KINDS[kind] + text


def token_column(values: pd.Series, kind: str, tokens: Tokeniser) -> np.ndarray:
    """A file's id column as tokens (an object array; a missing value stays None). One
    HMAC per distinct id, not per row: a file repeats each card or user many times."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    # A code of -1 (a missing value) picks the trailing None.
    mapped = np.array([tokens.token(kind, str(u)) for u in uniques] + [None], dtype=object)
    return mapped[codes]  # type: ignore[no-any-return]


def pii_key(settings: Settings) -> bytes:
    """The deployment's PII key: ``MLSUITE_PII_KEY``, else a random key created once in
    ``<data_dir>/pii.key`` (mode 0600) for the embedded setup."""
    if settings.pii_key:
        return settings.pii_key.encode()
    return local_secret(Path(settings.data_dir) / "pii.key")


_BY_KEY: dict[bytes, Tokeniser] = {}


def tokeniser(settings: Settings) -> Tokeniser:
    """The tokeniser of ``settings``' key, one per key per process (its memo is shared)."""
    key = pii_key(settings)
    found = _BY_KEY.get(key)
    if found is None:
        found = _BY_KEY[key] = Tokeniser(key)
    return found
