"""Shop features, read by the recommender: who the user is, what an item is.

Source paths are relative on purpose: Feast resolves a relative FileSource path
against ``RepoConfig.repo_path``, and mlsuite sets that to the data folder
(``MLSUITE_DATA_DIR``), so the same definitions serve every data folder (a laptop,
a CI tmp dir, a shared volume) and the registry stays valid if the folder moves.
"""

from datetime import timedelta

from entities import item, user
from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Bool, Float64, String

# --- user_profile ---------------------------------------------------------------

# User ids are personal: Feast reads the profiles with their ids tokenised (the shop's
# users.parquet as recommender.pii writes it), so its entity keys are the tokens the
# service looks users up by.
users_source = FileSource(
    name="shop_users",
    path="shop/users.tokenised.parquet",
    timestamp_field="event_timestamp",
    description="One row per user profile version, user ids tokenised (recommender.pii).",
)

# Profiles change when a user edits their account: the account service pushes the
# new row instead of waiting for the next materialization.
user_profile_push = PushSource(
    name="user_profile_push",
    batch_source=users_source,
    description="Profile edits, pushed as they happen.",
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    # A profile stays the best we know until it is edited: a year of look-back lets
    # point-in-time joins find it for any interaction in the training window.
    ttl=timedelta(days=365),
    schema=[
        Field(name="segment", dtype=String, description="Marketing segment, e.g. 'bargain'."),
        Field(name="country", dtype=String, description="ISO-2 country of the account."),
    ],
    source=user_profile_push,
    online=True,
    description="Slow-changing facts about a shopper.",
    tags={"domain": "shop", "team": "recommender"},
)

# --- item_catalogue -------------------------------------------------------------

items_source = FileSource(
    name="shop_items",
    path="shop/items.parquet",
    timestamp_field="event_timestamp",
    description="One row per catalogue version of an item, written by the shop simulator.",
)

# Stock and price change all day. Recommending an item that just sold out is the
# failure users notice, so the inventory system pushes each change straight to the
# online store (batched: a Feast push costs milliseconds, whatever its size).
item_catalogue_push = PushSource(
    name="item_catalogue_push",
    batch_source=items_source,
    description="Stock and price changes, pushed as they happen.",
)

item_catalogue = FeatureView(
    name="item_catalogue",
    entities=[item],
    # A catalogue row is valid until replaced, and the simulator stamps rows at the
    # start of its period: the look-back must span a whole training window (60 days
    # by default). Feast does not apply ttl to online reads; readers check freshness
    # themselves (FeatureStoreAdapter.online_features(max_age=...)).
    ttl=timedelta(days=365),
    schema=[
        Field(name="category", dtype=String, description="Catalogue category."),
        Field(name="price", dtype=Float64, description="Current price, shop currency."),
        Field(name="in_stock", dtype=Bool, description="False: never recommend it."),
    ],
    source=item_catalogue_push,
    online=True,
    description="What an item is and whether it can be bought now.",
    tags={"domain": "shop", "team": "recommender"},
)
