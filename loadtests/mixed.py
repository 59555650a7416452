"""Locust scenario: the shop and the payment flow at once, as on one busy machine.

Both services share the machine's CPUs and one Redis: this is the run that shows how
each behaves while the other is busy. Shoppers and payments in a 3:2 ratio of users;
the e-mail campaign, the chargeback feed and the settlement job run alongside.

Run: ``mlsuite loadtest --scenario mixed`` (or ``locust -f loadtests/mixed.py``).
"""

from __future__ import annotations

from payment_flow import Chargebacks, Checkout, Settlement
from shop_site import EmailCampaign, ShopVisitor


class MixedShopVisitor(ShopVisitor):
    weight = 3


class MixedCheckout(Checkout):
    weight = 2


# Locust runs every User class found in this module: leave out the plain ones, keep the jobs.
del ShopVisitor, Checkout
__all__ = ["Chargebacks", "EmailCampaign", "MixedCheckout", "MixedShopVisitor", "Settlement"]
