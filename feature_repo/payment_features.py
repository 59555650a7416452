"""Payment features, read by the fraud scorer: who holds the card, who sells.

These are entity profiles only. Per-transaction velocity (spend in the last
minutes, distinct merchants, ...) changes on every payment and lives in Redis,
computed by the fraud service; see ARCHITECTURE.md, "Key decisions" 3 and 4.
Relative paths resolve against the data folder (see shop_features.py).
"""

from datetime import timedelta

from entities import card, merchant
from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64, String

# --- card_profile ---------------------------------------------------------------

# Card ids are personal (a card number): the fraud start hook rewrites this file's
# card_id as keyed tokens before it is served (fraud.pii.tokenise_profile_file), the
# values every request asks for after its own tokenising.
cards_source = FileSource(
    name="payments_cards",
    path="payments/cards.parquet",
    timestamp_field="event_timestamp",
    description="One row per card profile version, written by the payments simulator; "
                "card ids as tokens.",
)

# The card issuer recomputes avg_amount and card_age_days daily and pushes them;
# a re-issued card must be scored on its new profile the same minute.
card_profile_push = PushSource(
    name="card_profile_push",
    batch_source=cards_source,
    description="Card profile updates, pushed as they happen.",
)

card_profile = FeatureView(
    name="card_profile",
    entities=[card],
    # Card profiles are refreshed at least yearly (re-issue); older rows say
    # nothing about today's holder.
    ttl=timedelta(days=365),
    schema=[
        Field(name="home_country", dtype=String, description="ISO-2 country of issue."),
        Field(name="card_age_days", dtype=Int64, description="Days since the card was issued."),
        Field(name="avg_amount", dtype=Float64, description="Typical amount for this card."),
    ],
    source=card_profile_push,
    online=True,
    description="What is normal for a card: where it lives and how much it spends.",
    tags={"domain": "payments", "team": "fraud"},
)

# --- merchant_profile -----------------------------------------------------------

merchants_source = FileSource(
    name="payments_merchants",
    path="payments/merchants.parquet",
    timestamp_field="event_timestamp",
    description="One row per merchant profile version, written by the payments simulator.",
)

# risk_score moves when analysts confirm a merchant attack: pushing it makes every
# fraud replica see the new score on its next request.
merchant_profile_push = PushSource(
    name="merchant_profile_push",
    batch_source=merchants_source,
    description="Merchant risk updates, pushed as they happen.",
)

merchant_profile = FeatureView(
    name="merchant_profile",
    entities=[merchant],
    ttl=timedelta(days=365),
    schema=[
        Field(name="merchant_category", dtype=String, description="Merchant category (MCC group)."),
        Field(name="merchant_country", dtype=String, description="ISO-2 country of the merchant."),
        Field(name="risk_score", dtype=Float64, description="Risk in [0, 1]; 1 = known bad."),
    ],
    source=merchant_profile_push,
    online=True,
    description="Who is selling: category, country and known risk.",
    tags={"domain": "payments", "team": "fraud"},
)
