"""Card and device ids as tokens: the fraud side of ``mlplatform.security.pii``.

Requests are tokenised where they are parsed (``fraud.schema``: ``card_id`` and
``device_id`` of every transaction, the card of a profile update, the value of a card or
device list); files where they are read (``read_transactions``, the profile files).
Everything after that (velocity keys, decisions, review cases, lists, streams, the lake,
Feast, models) only ever sees tokens, so the online and offline paths join on the same
values. Merchant ids and countries are not personal data and stay as they are.

Feast reads ``payments/cards.parquet`` itself, so that file is tokenised in place
(``tokenise_profile_file``) before Feast materialises it; tokens are idempotent, so doing
it again changes nothing.

>>> from mlplatform.security.pii import Tokeniser
>>> t = Tokeniser(b"k" * 32)
>>> df = pd.DataFrame({"card_id": ["4111111111111111", "c2", "4111111111111111"],
...                    "device_id": ["d1", None, "d1"]})
>>> _ = tokenise_columns(df, t)
>>> df["card_id"][0] == df["card_id"][2] == t.token("card", "4111111111111111")
True
>>> df["device_id"][1] is None, df["device_id"][0].startswith("dev_")
(True, True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mlplatform.config import Settings, get_settings
from mlplatform.security.pii import Tokeniser, is_token, token_column, tokeniser

__all__ = ["ID_COLUMNS", "LIST_KINDS", "folder_tokeniser", "is_token", "tokenise_columns",
           "tokenise_profile_file"]

# The transaction fields that identify a person's card or device, and their token kind.
ID_COLUMNS: Mapping[str, str] = {"card_id": "card", "device_id": "device"}
# Lists matching a tokenised field hold tokens: the field a list matches -> token kind.
LIST_KINDS: Mapping[str, str] = ID_COLUMNS


def folder_tokeniser(data_dir: Path) -> Tokeniser:
    """The tokeniser of files in ``data_dir``: ``MLSUITE_PII_KEY`` when set, else that
    folder's own ``pii.key`` (the one its services use), not the default folder's."""
    settings = get_settings()
    if settings.pii_key:
        return tokeniser(settings)
    return tokeniser(Settings(data_dir=Path(data_dir)))


def data_dir_of(path: Path) -> Path:
    """The data folder a transaction or profile file belongs to (``<data>/payments/x``)."""
    parent = Path(path).resolve().parent
    return parent.parent if parent.name == "payments" else parent


def tokenise_columns(df: pd.DataFrame, pii: Tokeniser,
                     columns: Mapping[str, str] = ID_COLUMNS) -> pd.DataFrame:
    """Replace, in place, each id column of ``df`` that ``columns`` names by its tokens;
    missing values stay missing. One HMAC per distinct id (a 100k-row file of 10k cards
    costs 10k, a few milliseconds), then one vectorised take."""
    for column, kind in columns.items():
        if column not in df.columns:
            continue
        values = df[column]
        if not values.notna().any():
            continue
        out = token_column(values, kind, pii)
        df[column] = pd.Series(out, index=df.index, dtype=values.dtype
                               if pd.api.types.is_string_dtype(values.dtype)
                               and values.dtype != object else object)
    return df


def prepare_sources(settings: Settings) -> bool:
    """The "mlsuite.sources" hook: the card profile file by token before Feast reads it."""
    return tokenise_profile_file(settings.data_dir, tokeniser(settings))


def tokenise_profile_file(data_dir: Path, pii: Tokeniser | None = None) -> bool:
    """Tokenise ``<data_dir>/payments/cards.parquet``'s ``card_id`` in place (atomically),
    so Feast's offline source and online store hold tokens. False when there is no file
    or it holds tokens already."""
    path = Path(data_dir) / "payments" / "cards.parquet"
    if not path.is_file():
        return False
    df = pd.read_parquet(path)
    if "card_id" not in df.columns:
        return False
    ids = df["card_id"].dropna().astype(str).unique()
    if all(is_token("card", v) for v in ids):
        return False
    tokenise_columns(df, pii or folder_tokeniser(data_dir), {"card_id": "card"})
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(partial, index=False)
    os.replace(partial, path)  # a reader (Feast, a prefetch) sees the old or the new file
    return True
