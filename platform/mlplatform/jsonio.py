"""JSON for every service: msgspec behind Flask's JSON provider interface.

``jsonify``, ``request.get_json`` and the decision records all go through msgspec, which
encodes a typical response about ten times faster than the standard library (a fraud
decision record: ~3 us against ~30 us). Non-finite floats, which JSON cannot carry,
become ``null`` instead of the invalid ``NaN`` the standard library writes.

>>> dumps({"score": 0.25, "reasons": [], "when": __import__("datetime").date(2026, 12, 1)})
'{"score":0.25,"reasons":[],"when":"2026-12-01"}'
>>> loads(b'{"amount": 12.5}')
{'amount': 12.5}
"""

from __future__ import annotations

from typing import Any

import msgspec
from flask.json.provider import JSONProvider

__all__ = ["dumps", "dumpb", "loads", "MsgspecProvider"]


def _fallback(value: Any) -> Any:
    # numpy scalars and arrays, sets, and anything with __html__ (Flask's markup)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_fallback)
_decoder = msgspec.json.Decoder()


def dumpb(value: Any) -> bytes:
    """``value`` as compact JSON bytes."""
    return _encoder.encode(value)


def dumps(value: Any) -> str:
    """``value`` as a compact JSON string."""
    return _encoder.encode(value).decode()


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The document in ``data``; raises ``ValueError`` (msgspec's DecodeError) when invalid."""
    return _decoder.decode(data)


class MsgspecProvider(JSONProvider):
    """Flask's JSON provider on msgspec: compact output, keys in insertion order."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(dumpb(obj), mimetype=self.mimetype)  # type: ignore[arg-type]
