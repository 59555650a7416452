"""Profile updates: the write side of card and merchant profiles (``PUT /v1/cards/<id>``,
``PUT /v1/merchants/<id>``), queued in a Redis stream for the fraud worker.

A request validates the whole profile (every field, nothing else), appends it to
``<prefix>profile-updates`` and answers 202 with the entry id: the update is durably
queued. The worker's "feast-push" consumer (``fraud.profile_push``) pushes the queued
updates to Feast in batches and publishes them as "profile overrides", which every
request worker's profile cache applies within a poll, instead of waiting up to the
cache's TTL to see them.

>>> parse_profile("merchant", "m1", {"merchant_category": "jewelry",
...                                  "merchant_country": "FR", "risk_score": 0.9})
{'merchant_category': 'jewelry', 'merchant_country': 'FR', 'risk_score': 0.9}
>>> parse_profile("card", "c1", {"home_country": "de", "card_age_days": 3, "avg_amount": 9})
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: home_country must be 2 upper-case letters (an ISO 3166 code), got "de"
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import redis

from fraud.profiles import CARD_FIELDS, MERCHANT_FIELDS
from mlplatform.errors import BadRequest
from mlplatform.http import check_id
from mlplatform.openapi import convert
from mlplatform.streams import Entry

__all__ = ["KINDS", "CardProfile", "MerchantProfile", "ProfileKind", "ProfileUpdate", "ProfileUpdates", "parse_profile",
           "decode_update"]



Country = Annotated[str, msgspec.Meta(
    pattern=r"^[A-Z]{2}$", description="2 upper-case letters (an ISO 3166 code)")]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1, description="a number in [0, 1]")]


class CardProfile(msgspec.Struct, forbid_unknown_fields=True):
    """A card's whole profile (a PUT replaces it)."""

    home_country: Country
    card_age_days: Annotated[int, msgspec.Meta(ge=0, description="an integer >= 0")]
    avg_amount: Annotated[float, msgspec.Meta(ge=0, description="a number >= 0")]


class MerchantProfile(msgspec.Struct, forbid_unknown_fields=True):
    """A merchant's whole profile (a PUT replaces it)."""

    merchant_category: Annotated[str, msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="a snake_case category such as 'jewelry'")]
    merchant_country: Country
    risk_score: Probability


assert tuple(CardProfile.__struct_fields__) == CARD_FIELDS, "CardProfile != CARD_FIELDS"
assert tuple(MerchantProfile.__struct_fields__) == MERCHANT_FIELDS, "MerchantProfile drifted"


@dataclass(frozen=True)
class ProfileKind:
    """One entity kind: its join key, its fields, its request type, its Feast push source."""

    name: str
    key: str
    fields: tuple[str, ...]
    body: type[msgspec.Struct]
    push_source: str


KINDS = {
    "card": ProfileKind("card", "card_id", CARD_FIELDS, CardProfile, "card_profile_push"),
    "merchant": ProfileKind("merchant", "merchant_id", MERCHANT_FIELDS, MerchantProfile,
                            "merchant_profile_push"),
}


@dataclass(frozen=True)
class ProfileUpdate:
    """One queued update, as the worker reads it back."""

    kind: str
    entity_id: str
    profile: dict[str, Any]
    at: float  # when it was accepted (epoch seconds): Feast's event_timestamp
    stream_id: str


def parse_profile(kind: str, entity_id: str, body: Any) -> dict[str, Any]:
    """A complete, checked profile of ``kind`` (decoded JSON, checked as its ``KINDS``
    type); ``BadRequest`` naming the field otherwise."""
    spec = KINDS[kind]
    check_id(entity_id, spec.key)
    return msgspec.structs.asdict(convert(body, spec.body))


class ProfileUpdates:
    """The profile-updates stream: appended by request workers, read by the worker."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self._redis = client
        self.stream = stream

    def append(self, kind: str, entity_id: str, profile: Mapping[str, Any]) -> str:
        """Queue a checked profile; the stream id (no MAXLEN: the worker's retention
        archives, then trims, never an entry the feast-push group has not pushed)."""
        entry_id: Any = self._redis.xadd(self.stream, {
            "kind": kind, "id": entity_id, "profile": json.dumps(dict(profile)),
            "at": f"{time.time():.6f}"})
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def decode_update(entry: Entry) -> ProfileUpdate:
    """A queued update, checked again (the stream is writable by more than this service);
    ``ValueError`` saying what is wrong (the entry becomes a dead letter)."""
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    entity_id, raw, at = entry.get("id"), entry.get("profile"), entry.get("at")
    if entity_id is None or raw is None or at is None:
        raise ValueError("a profile update needs the fields kind, id, profile and at")
    try:
        profile = parse_profile(kind, entity_id, json.loads(raw))
        stamp = float(at)
    except BadRequest as exc:
        raise ValueError(exc.message) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"profile must be a JSON object and at an epoch time: {exc}") from None
    return ProfileUpdate(kind, entity_id, profile, stamp, entry.id)
