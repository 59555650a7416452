"""Parse + validate one transaction body (JSON bytes -> typed object), three ways:
the hand-written checks this service had before (``git show 9c2dad8:apps/fraud/schema.py``,
passed as --hand-from), msgspec (``fraud.schema.decode_transaction``, what serves now) and
pydantic v2 (``TypeAdapter.validate_json`` on a model with the same rules).

    .venv/bin/python tests/contract/parse_bench.py [--hand-from /path/to/old/apps]

Prints microseconds per body (best of 5 rounds of 20,000) for a valid body and a bad one.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fraud.schema import DEFAULT_MAX_AMOUNT, Transaction, decode_transaction, transaction_type
from mlplatform import jsonio
from mlplatform.errors import BadRequest
from mlplatform.openapi import ID_REGEX, MAX_EPOCH, MIN_EPOCH, timestamp_seconds

BODY = msgspec.json.encode({
    "transaction_id": "t-000123456", "timestamp": 1767225600.0, "card_id": "c000123",
    "merchant_id": "m00042", "amount": 42.5, "currency": "EUR", "country": "FR",
    "channel": "online", "device_id": "d0001234"})
BAD = BODY.replace(b'"EUR"', b'"euro"')

IdStr = Annotated[str, Field(pattern=ID_REGEX)]


class PydanticTransaction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    transaction_id: IdStr
    timestamp: float | str
    card_id: IdStr
    merchant_id: IdStr
    amount: Annotated[float, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    channel: Literal["card_present", "online"]
    device_id: IdStr | None = None


def _transaction(p: PydanticTransaction) -> Transaction:
    ts = p.timestamp
    if type(ts) is not float or not (MIN_EPOCH <= ts < MAX_EPOCH):
        ts = timestamp_seconds(ts)
    if p.amount > DEFAULT_MAX_AMOUNT:
        raise BadRequest("amount too large", field="amount")
    return Transaction(p.transaction_id, ts, p.card_id, p.merchant_id, p.amount, p.currency,
                       p.country, p.channel, p.device_id, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hand-from", type=Path, help="an apps/ folder with the old schema.py")
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    ways = {"msgspec Struct (decode_transaction)": decode_transaction}
    adapter = TypeAdapter(PydanticTransaction)
    ways["pydantic v2 (validate_json only)"] = adapter.validate_json
    ways["pydantic v2 + Transaction (as decode_transaction)"] = \
        lambda b: _transaction(adapter.validate_json(b))
    decoder = msgspec.json.Decoder(transaction_type(()))
    ways["msgspec decode only (no patterns, no Transaction)"] = decoder.decode
    if args.hand_from:
        spec = importlib.util.spec_from_file_location("old_schema",
                                                      args.hand_from / "fraud" / "schema.py")
        assert spec and spec.loader
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_schema"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        ways["hand code (jsonio.loads + parse_transaction)"] = \
            lambda b: old.parse_transaction(jsonio.loads(b))
    print(f"{'way':48} {'valid us':>9} {'bad us':>9}")
    for name, parse in ways.items():
        parse(BODY)
        valid = min(timeit.repeat(lambda: parse(BODY), number=args.n, repeat=5)) / args.n

        def bad() -> None:
            try:
                parse(BAD)
            except (BadRequest, ValueError):
                pass  # pydantic's ValidationError is a ValueError
            else:
                if "no patterns" not in name:
                    raise AssertionError(f"{name} accepted a bad currency")

        refused = min(timeit.repeat(bad, number=args.n // 4, repeat=5)) / (args.n // 4)
        print(f"{name:48} {valid * 1e6:9.2f} {refused * 1e6:9.2f}")


if __name__ == "__main__":
    sys.exit(main())
