"""The HTTP contract of a service: typed request bodies decoded in one step, and the
OpenAPI 3.1 document built from the views that declare them.

A view declares what it takes and answers with ``@operation`` (msgspec ``Struct`` types,
the same ones it decodes with); ``GET /openapi.json`` lists every declared operation with
its scope (from ``@requires``: the ``bearer`` security requirement names it), its
parameters, its body and its responses, errors included. ``GET /docs`` renders that
document with a small page shipped in the package (``openapi_assets/``): no CDN, no
internet.

``decode(data, type_)`` is the one way a body becomes a typed object. msgspec does the
checking in C; a refusal becomes a ``BadRequest`` whose ``field`` is the path of the bad
value (``transactions[3].amount``) and whose message says what was expected and what
came (a field's ``Meta(description=...)`` is the rule, written to follow "must be").

>>> from typing import Annotated
>>> Amount = Annotated[float, msgspec.Meta(ge=0, description="a number >= 0")]
>>> Line = msgspec.defstruct("Line", [("amount", Amount)], forbid_unknown_fields=True)
>>> Order = msgspec.defstruct("Order", [("items", list[Line])], forbid_unknown_fields=True)
>>> decode(b'{"items": [{"amount": 1}, {"amount": -2}]}', Order)
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: items[1].amount must be a number >= 0, got -2
>>> decode(b'{"items": [{"amount": 1, "colour": "red"}]}', Order)
Traceback (most recent call last):
...
mlplatform.errors.BadRequest: items[0].colour is not a line field; expected amount
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from flask import Flask, Response, current_app, send_from_directory

from mlplatform.errors import BadRequest
from mlplatform.security import requires

__all__ = [
    "ID_REGEX",
    "Id",
    "Timestamp",
    "timestamp_seconds",
    "ErrorBody",
    "ErrorResponse",
    "Dynamic",
    "Operation",
    "Param",
    "build_spec",
    "convert",
    "decode",
    "init_app",
    "operation",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

ASSETS = Path(__file__).with_name("openapi_assets")
ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
ID_RULE = "1-128 characters of letters, digits and _.:@- starting with a letter or digit"
_OPEN_SCOPE = "open"
# The status codes every operation may answer with, and when.
_ERRORS: dict[int, str] = {
    400: "a field is invalid: `field` names it",
    401: "no API key, or an unknown or revoked one",
    403: "the key lacks the operation's scope",
    404: "no such resource",
    409: "the request conflicts with the current state",
    413: "the body exceeds the service's limit",
    429: "the key is over its rate limit (see Retry-After)",
    503: "a dependency (redis, feast, the model) is unavailable (see Retry-After)",
}


# -- field types both services share -------------------------------------------------------

# One timestamp rule for every request of every service (transactions, labels, list
# expiries, shop events): ISO 8601 with a timezone, or epoch seconds, 2000 to 2100.
# Outside that range a time is a unit mistake (milliseconds) or a placeholder (0).
MIN_EPOCH = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_EPOCH = 4_102_444_800.0  # 2100-01-01T00:00:00Z
TIMESTAMP_RULE = ("an ISO 8601 time with a timezone or epoch seconds between 2000 and 2100")

Id = Annotated[str, msgspec.Meta(pattern=ID_REGEX, description=ID_RULE)]
Timestamp = Annotated[float | str, msgspec.Meta(
    description=TIMESTAMP_RULE, examples=["2025-01-20T12:00:00Z", 1737374400])]
# What msgspec cannot say of a union (it writes a bare number | string): set in the
# document by _refine.
_TIMESTAMP_ANY_OF = [{"type": "number", "minimum": MIN_EPOCH, "exclusiveMaximum": MAX_EPOCH},
                     {"type": "string", "format": "date-time"}]


def timestamp_seconds(value: Any, name: str = "timestamp") -> float:
    """Epoch seconds of a ``Timestamp`` value, or ``BadRequest`` naming ``name``.

    >>> timestamp_seconds("2025-01-01T01:00:00+01:00"), timestamp_seconds(1735689600)
    (1735689600.0, 1735689600.0)
    >>> timestamp_seconds("2025-01-01 00:00")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlplatform.errors.BadRequest: timestamp must carry a timezone (e.g. ...), got '2025-01-01 00:00'
    """
    seconds: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{name} must be {TIMESTAMP_RULE}, got {value!r}",
                             field=name) from None
        if parsed.tzinfo is None:
            raise BadRequest(
                f"{name} must carry a timezone (e.g. 2025-01-01T12:00:00Z), got {value!r}",
                field=name,
            )
        seconds = parsed.timestamp()
    if seconds is None or not (MIN_EPOCH <= seconds < MAX_EPOCH):
        raise BadRequest(f"{name} must be {TIMESTAMP_RULE}, got {value!r}", field=name)
    return seconds


# -- error shape ---------------------------------------------------------------------------


class ErrorBody(msgspec.Struct):
    """What went wrong: a stable code, a message for people, the field when one is bad."""

    code: str
    message: str
    request_id: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorResponse(msgspec.Struct):
    """Every error, expected or not, has this shape (mlplatform.http maps it once)."""

    error: ErrorBody


# -- declaring operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query or path parameter: its JSON Schema and what it is for."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class Dynamic:
    """A type known only once the app exists (it depends on the deployment's config)."""

    resolve: Callable[[Flask], Any]


@dataclass(frozen=True)
class Operation:
    """What a view takes and answers (attached to the view as ``mlsuite_contract``)."""

    summary: str
    responses: Mapping[int, Any]
    body: Any = None  # a type, a tuple of types (any one of them), or Dynamic
    body_required: bool = True
    params: Sequence[Param] = ()
    tags: Sequence[str] = ()
    errors: Sequence[int] = field(default_factory=tuple)


def operation(summary: str, *, responses: Mapping[int, Any], body: Any = None,
              body_required: bool = True, params: Sequence[Param] = (),
              tags: Sequence[str] = (), errors: Sequence[int] = ()) -> Callable[[F], F]:
    """Declare a view's contract for the OpenAPI document; ``responses`` maps a status
    to a msgspec type (or None for no body). Error responses are added by the builder."""

    def mark(view: F) -> F:
        view.mlsuite_contract = Operation(  # type: ignore[attr-defined]
            summary, dict(responses), body, body_required, tuple(params), tuple(tags),
            tuple(errors))
        return view

    return mark


# -- decoding ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode(data: bytes, type_: type[T] | Any, *, root: str = "") -> T:
    """``data`` (JSON bytes) as ``type_``, or ``BadRequest`` naming the bad field; a path
    into a top-level array is named after ``root`` (``transactions[3].amount``)."""
    try:
        return _decoder(type_).decode(data)  # type: ignore[no-any-return,arg-type]
    except msgspec.ValidationError as exc:
        raise _bad_request(str(exc), type_, lambda: msgspec.json.decode(data), root) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body must be valid JSON: {exc}", field="body") from None


def convert(obj: Any, type_: type[T] | Any, *, root: str = "", where: str = "") -> T:
    """``obj`` (already decoded, as from a file or a test) as ``type_``: the same checks
    and messages as ``decode``; ``where`` prefixes field names (``transactions[3].``)."""
    try:
        return msgspec.convert(obj, type_)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _bad_request(str(exc), type_, lambda: obj, root, where) from None


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_JSON_NAMES = {"float": "a number", "int": "an integer", "str": "a string",
               "bool": "true or false", "object": "a JSON object", "array": "a list",
               "null": "null"}
_GOT_NAMES = {"float": "a number", "int": "a number", "str": "a string", "bool": "a boolean",
              "object": "an object", "array": "a list", "null": "null"}


def _bad_request(text: str, type_: Any, document: Callable[[], Any], root: str,
                 where: str = "") -> BadRequest:
    """msgspec's ``Expected `float` >= 0.0 - at `$.items[1].amount``` as a BadRequest on
    ``items[1].amount`` saying the rule (the field's description) and the value."""
    match = _AT.match(text)
    what, path = (match.group("what"), match.group("path") or "") if match else (text, "")
    parts: list[str | int] = [int(i) if i else str(n) for n, i in _SEGMENT.findall(path)]
    missing = re.match(r"Object missing required field `(.+)`", what)
    unknown = re.match(r"Object contains unknown field `(.+)`", what)
    if missing or unknown:
        parts.append((missing or unknown).group(1))  # type: ignore[union-attr]
    name = where + _field_name(parts, root)
    if missing:
        return BadRequest(f"{name} is required", field=name)
    info = _info_at(_type_info(type_), parts[:-1] if unknown else parts)
    if unknown:
        struct = info if isinstance(info, msgspec.inspect.StructType) else None
        expected = ", ".join(f.encode_name for f in struct.fields) if struct else "none"
        # TransactionBody -> "a transaction field", ListEntryBody -> "a list entry field"
        words = re.sub(r"(?<!^)(?=[A-Z])", " ", struct.cls.__name__.removesuffix("Body")
                       ).lower() if struct else "this object's"
        return BadRequest(f"{name} is not a {words} field; expected {expected}", field=name)
    rule = _description(info) or _rule_of(what)
    try:
        got = _got(document(), parts)
    except Exception:  # noqa: BLE001 - the value is a courtesy; the rule is the message
        got = ""
    return BadRequest(f"{name} must be {rule}{got}", field=name)


@functools.lru_cache(maxsize=256)
def _type_info(type_: Any) -> Any:
    return msgspec.inspect.type_info(type_)  # ~0.7 ms: once per type


def _field_name(parts: Sequence[str | int], root: str) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    if out.startswith("[") or not out:  # a top-level list is named after what it holds
        out = (root or "body") + out
    return out


def _info_at(info: Any, parts: Sequence[str | int]) -> Any:
    """The msgspec type info at ``parts``, keeping the last description met on the way."""
    for part in parts:
        info = _unwrap(info, part)
        if info is None:
            return None
    return info


def _unwrap(info: Any, part: str | int) -> Any:
    inspect = msgspec.inspect
    while isinstance(info, inspect.Metadata):
        info = info.type
    if isinstance(info, inspect.UnionType):
        want = inspect.StructType if isinstance(part, str) else inspect.ListType
        info = next((t for t in info.types if isinstance(t, want)), None)
    if isinstance(info, inspect.StructType) and isinstance(part, str):
        return next((f.type for f in info.fields if f.encode_name == part), None)
    if isinstance(info, inspect.ListType | inspect.SetType | inspect.VarTupleType) \
            and isinstance(part, int):
        return info.item_type
    if isinstance(info, inspect.DictType):
        return info.value_type
    return None


def _description(info: Any) -> str:
    if isinstance(info, msgspec.inspect.Metadata):
        text = (info.extra_json_schema or {}).get("description")
        return str(text) if text else ""
    return ""


def _rule_of(what: str) -> str:
    """msgspec's expectation in JSON words: Expected `float` >= 0.0 -> a number >= 0.0."""
    text = re.sub(r", got `[^`]+`$", "", what)
    match = re.match(r"Expected `([^`]+)`(.*)$", text)
    if not match:
        return text[:1].lower() + text[1:]  # "Invalid enum value 'x'", "Number out of range"
    names = " or ".join(_JSON_NAMES.get(t.strip(), t.strip()) for t in match.group(1).split("|"))
    return names + match.group(2).replace("matching regex", "matching")


def _got(document: Any, parts: Sequence[str | int]) -> str:
    value = document
    for part in parts:
        value = value[part]
    if isinstance(value, dict):
        return ", got an object"
    if isinstance(value, list):
        return ", got a list"
    text = msgspec.json.encode(value).decode()
    return f", got {text[:64]}"


# -- the document --------------------------------------------------------------------------


_OPS_ROUTES: dict[str, Operation] = {}  # filled below, once the types exist


def build_spec(app: Flask, *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``: every route whose view declares an operation,
    plus the platform's health, readiness and metrics routes."""
    types: list[Any] = [ErrorResponse]
    paths: dict[str, dict[str, Any]] = {}
    pending: list[tuple[dict[str, Any], Operation, Any, tuple[Any, ...]]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op: Operation | None = getattr(view, "mlsuite_contract", None) or _OPS_ROUTES.get(
            rule.endpoint)
        if op is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {"operationId": f"{rule.endpoint}.{method.lower()}",
                                     "summary": op.summary}
            if op.tags:
                entry["tags"] = list(op.tags)
            paths.setdefault(path, {})[method.lower()] = entry
            body = op.body.resolve(app) if isinstance(op.body, Dynamic) else op.body
            bodies = body if isinstance(body, tuple) else () if body is None else (body,)
            pending.append((entry, op, view, bodies))
            types.extend(t for t in (*bodies, *op.responses.values()) if t is not None)
            entry["parameters"] = _parameters(rule.arguments, op.params)
    schemas, components = msgspec.json.schema_components(
        _unique(types), ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(_unique(types), schemas))
    _refine(components)
    for entry, op, view, bodies in pending:
        scope = _scope_of(view, entry["operationId"])
        if scope != _OPEN_SCOPE:
            entry["security"] = [{"bearer": [scope]}]
            entry["x-mlsuite-scope"] = scope
        else:
            entry["security"] = []
        if bodies:
            schema = schema_of[bodies[0]] if len(bodies) == 1 else {
                "oneOf": [schema_of[b] for b in bodies]}
            entry["requestBody"] = {"required": op.body_required, "content": {
                "application/json": {"schema": schema}}}
        responses: dict[str, Any] = {}
        for status, type_ in op.responses.items():
            if type_ is None:
                responses[str(status)] = {"description": "no body"}
            elif type_ is str:
                responses[str(status)] = {"description": "text", "content": {
                    "text/plain": {"schema": {"type": "string"}}}}
            else:
                responses[str(status)] = {"description": _first_line(type_), "content": {
                    "application/json": {"schema": schema_of[type_]}}}
        for status in _errors_of(op, scope):
            responses.setdefault(str(status), {"description": _ERRORS[status], "content": {
                "application/json": {"schema": schema_of[ErrorResponse]}}})
        # Any other status (405, a 500 that should never come) has the same error shape.
        responses.setdefault("default", {"$ref": "#/components/responses/Error"})
        entry["responses"] = responses
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": {**components, "Id": {
                "type": "string", "pattern": ID_REGEX, "description": ID_RULE}},
            "responses": {"Error": {
                "description": "an error: " + "; ".join(f"{s} {t}" for s, t in _ERRORS.items()),
                "content": {"application/json": {"schema": schema_of[ErrorResponse]}}}},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "an API key (mlsuite keys create); each operation names "
                               "the scope its key needs"}},
        },
    }


def _refine(node: Any) -> None:
    """Give every Timestamp its bounds and format (see ``_TIMESTAMP_ANY_OF``)."""
    if isinstance(node, dict):
        if node.get("description") == TIMESTAMP_RULE and "anyOf" in node:
            node["anyOf"] = _TIMESTAMP_ANY_OF
        for value in node.values():
            _refine(value)
    elif isinstance(node, list):
        for value in node:
            _refine(value)


def _parameters(arguments: Iterable[str], params: Sequence[Param]) -> list[dict[str, Any]]:
    declared = {p.name: p for p in params}
    out = []
    for name in sorted(arguments):  # path parameters: an id unless declared otherwise
        p = declared.pop(name, None) or Param(name, {"$ref": "#/components/schemas/Id"})
        out.append({"name": name, "in": "path", "required": True, "schema": p.schema,
                    "description": p.description or f"the {name.replace('_', ' ')}"})
    for p in declared.values():
        out.append({"name": p.name, "in": p.where, "required": p.required,
                    "schema": p.schema, "description": p.description})
    return out


def _errors_of(op: Operation, scope: str) -> list[int]:
    statuses = {400, 503, *op.errors}
    if scope != _OPEN_SCOPE:
        statuses |= {401, 403, 429}
    if op.body is not None:
        statuses.add(413)
    return sorted(statuses)


def _scope_of(view: Any, endpoint: str) -> str:
    scope = getattr(view, "mlsuite_scope", "admin")
    if endpoint.split(".")[0] in ("healthz", "readyz", "metrics_endpoint") \
            or not isinstance(scope, str):
        return _OPEN_SCOPE  # security's open marker is a private sentinel object
    return scope


def _unique(types: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for t in types:
        if t not in seen and t is not str:
            seen.append(t)
    return seen


def _first_line(type_: Any) -> str:
    doc = str(getattr(type_, "__doc__", None) or getattr(type_, "__name__", "")).strip()
    return doc.splitlines()[0] if doc else "OK"


# -- the platform's own routes -------------------------------------------------------------


class Health(msgspec.Struct):
    """The process is alive."""

    status: str
    service: str
    pid: int


class Check(msgspec.Struct):
    ok: bool
    detail: str


class Readiness(msgspec.Struct):
    """Whether this replica can serve: ready, degraded (a shared dependency is down) or
    not_ready (503)."""

    status: str
    service: str
    instance: str
    degraded: list[str]
    checks: dict[str, Check]


_OPS_ROUTES.update({
    "healthz": Operation("Liveness", {200: Health}, tags=("operations",)),
    "readyz": Operation("Readiness", {200: Readiness, 503: Readiness}, tags=("operations",)),
    "metrics_endpoint": Operation("Prometheus metrics", {200: str}, tags=("operations",)),
})


def init_app(app: Flask, *, title: str, version: str = "1", description: str = "") -> None:
    """Serve ``/openapi.json`` (built once, on first request, after every blueprint is
    registered) and ``/docs`` with its assets, all open (no key)."""
    cache: dict[str, bytes] = {}

    @requires(None)
    def openapi_json() -> Response:
        if "spec" not in cache:
            spec = build_spec(current_app, title=title, version=version,
                              description=description)
            cache["spec"] = msgspec.json.encode(spec)
        return Response(cache["spec"], mimetype="application/json")

    @requires(None)
    def docs() -> Response:
        return send_from_directory(ASSETS, "docs.html", max_age=300)

    @requires(None)
    def docs_asset(name: str) -> Response:
        return send_from_directory(ASSETS, name, max_age=300)

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    app.add_url_rule("/docs", "openapi_docs", docs, methods=["GET"])
    app.add_url_rule("/docs/assets/<path:name>", "openapi_asset", docs_asset, methods=["GET"])
