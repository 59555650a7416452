"""Entities: the business objects features are keyed by.

Join keys are the ids the services use past their edge: items and merchants as they
are ("i00001", "m00001"); personal ids as their keyed tokens (``user_...``, ``card_...``, see
mlplatform.security.pii), which the services compute where an id comes in and the
sources Feast reads already hold. Every key is a string: ids are opaque labels, never
numbers.
"""

from feast import Entity, ValueType

# --- shop (recommender) ---------------------------------------------------------

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper on the e-commerce site.",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A product in the shop's catalogue.",
)

# --- payments (fraud) -----------------------------------------------------------

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A payment card, by its keyed token (card_...); the unit fraud velocity "
                "and profiles are kept for.",
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="A merchant accepting card payments.",
)
