"""Feature services: the exact feature set each model version was trained on.

A model reads its features through its service name ("recommender_v1"), never a
hand-written list, so training and serving cannot drift apart. Changing a model's
inputs means a new service (recommender_v2) next to the old one, kept until no
deployed model version uses the old one.
"""

from feast import FeatureService
from payment_features import card_profile, merchant_profile
from shop_features import item_catalogue, user_profile

recommender_v1 = FeatureService(
    name="recommender_v1",
    features=[user_profile, item_catalogue],
    description="Recommender v1: user segment/country and item category/price/stock.",
    tags={"model": "recommender"},
)

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[card_profile, merchant_profile],
    description="Fraud scorer v1: card and merchant profiles (velocity comes from Redis).",
    tags={"model": "fraud"},
)
