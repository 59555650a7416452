"""User ids as tokens, wherever they enter the recommender (``mlplatform.security.pii``).

A user id is personal (it may be an e-mail address); it is replaced by its keyed token
where it comes in, so Redis keys, the event stream, the lake, the exposures of an
experiment, Feast's user entity keys and the model's user index hold tokens only:

- requests: the views tokenise every user id they parse (path, batch bodies, events)
  before the engine sees it; responses echo the ids the client sent;
- files: ``tokenise_users`` turns a table's ``user_id`` column into tokens where the
  table is read for training, evaluation or fold-in, so the model knows a user by the
  same token a request arrives with. Data the service wrote (the lake) holds tokens
  already and passes unchanged (``token`` leaves a token as it is);
- Feast: the user profiles are materialised from ``shop/users.tokenised.parquet``, the
  shop's ``users.parquet`` with its ids tokenised (``prepare_profiles`` writes it and
  loads it into the online store; ``feature_repo/shop_features.py`` reads it).

Item ids are not personal and stay as they are.

>>> from mlplatform.security.pii import Tokeniser
>>> t = Tokeniser(b"k" * 32)
>>> df = pd.DataFrame({"user_id": ["ann", 7, "ann", None], "item_id": ["i1"] * 4})
>>> out = tokenise_users(df, t)
>>> out["user_id"].tolist() == [t.token("user", "ann"), t.token("user", "7"),
...                             t.token("user", "ann"), None]
True
>>> tokenise_users(out, t)["user_id"].equals(out["user_id"])  # tokens pass unchanged
True
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from mlplatform.config import Settings
from mlplatform.security.pii import Tokeniser, token_column, tokeniser

__all__ = ["PROFILES", "SHOP_USERS", "prepare_profiles", "tokenise_users", "tokenised_profiles"]

log = logging.getLogger(__name__)

SHOP_USERS = Path("shop") / "users.parquet"  # the shop's profiles, as exported (raw ids)
PROFILES = Path("shop") / "users.tokenised.parquet"  # what Feast materialises from


def tokenise_users(df: pd.DataFrame, tokens: Tokeniser, column: str = "user_id"
                   ) -> pd.DataFrame:
    """A copy of ``df`` whose ``column`` holds user tokens (nulls stay null).

    One HMAC per distinct id, not per row: a shop file repeats each user many times."""
    if column not in df.columns:
        return df
    out = df.copy()
    out[column] = token_column(df[column], "user", tokens)  # nulls stay null: checks count them
    return out


def tokenised_profiles(settings: Settings) -> bool:
    """Write ``PROFILES`` from ``SHOP_USERS`` unless it is current (newer than the source
    and made with this deployment's key); whether it was written."""
    data_dir = Path(settings.data_dir)
    source, target = data_dir / SHOP_USERS, data_dir / PROFILES
    if not source.is_file():
        return False
    tokens = tokeniser(settings)
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime \
            and _same_key(source, target, tokens):
        return False
    df = tokenise_users(pd.read_parquet(source), tokens)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    df.to_parquet(partial, index=False)
    os.replace(partial, target)  # a reader (Feast, another process) never sees half a file
    log.info("user profiles: %d rows tokenised into %s", len(df), target)
    return True


def _same_key(source: Path, target: Path, tokens: Tokeniser) -> bool:
    """Whether ``target``'s first row is the token of ``source``'s first user (a changed
    key changes every token: the copy is then rewritten)."""
    raw = pd.read_parquet(source, columns=["user_id"])["user_id"].head(1)
    done = pd.read_parquet(target, columns=["user_id"])["user_id"].head(1)
    if raw.empty or done.empty:
        return raw.empty and done.empty
    return bool(tokens.token("user", str(raw.iloc[0])) == done.iloc[0])


def prepare_profiles(settings: Settings) -> int:
    """Make ``PROFILES`` current and, when it was (re)written, load it into Feast's
    online store (one push of the user profile view only); the rows loaded.

    A stack writes the copy before Feast's apply and materialize (``tokenised_profiles``
    is the recommender's "mlsuite.sources" hook), so this finds it current and pushes
    nothing; it loads the copy when something else started the service on a folder
    materialised without it."""
    if not tokenised_profiles(settings):
        return 0
    try:
        from mlplatform.features import FeatureStoreAdapter
    except ImportError:  # a platform without Feast: segments come from the model only
        return 0
    from mlplatform.lifecycle import file_lock

    path = Path(settings.data_dir) / PROFILES
    df = pd.read_parquet(path)
    try:
        # Under the lock the stack holds for apply and materialize: one writer at a time.
        with file_lock(Path(settings.data_dir) / ".feast.lock"):
            FeatureStoreAdapter.from_settings(settings).push("user_profile_push", df)
    except Exception as exc:  # noqa: BLE001 - Feast's errors have no common base
        # Without the copy the next start writes and pushes it again; until then
        # cold-start users get the global popular items instead of their segment's.
        path.unlink(missing_ok=True)
        log.warning("user profiles: not loaded into feast (%s); retried at the next start",
                    exc)
        return 0
    log.info("user profiles: %d tokenised rows loaded into the online store", len(df))
    return len(df)
