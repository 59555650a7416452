"""Drift reports: a service's recent live inputs against its production model's training reference.

``drift_report(settings, service)`` finds the model the service serves (the registry
version whose reference profile says so, see ``mlplatform.monitoring.reference``), reads
the live window from the stream the profile names (Redis, plus the lake for what the
worker already trimmed), featurises it as training was, and tests every feature
(``mlplatform.monitoring.drift``). The shape, which other tools read (keys may be added,
never renamed)::

    {"model": "fraud-online:v3", "window": "1h", "window_seconds": 3600, "rows": 1234,
     "enough_data": true, "drift_share": 0.05, "dataset_drift": false,
     "features": {"amount": {"kind": "numeric", "statistic": "wasserstein",
                             "value": 0.42, "threshold": 0.1, "drifted": true, "psi": 1.3}}}

With fewer than ``MIN_ROWS`` live rows the statistics are still shown but nothing is
flagged (``enough_data: false``). Features that follow the time of day (the profile
source's ``clock``: an hour, its sine and cosine) are compared with an all-day reference
only on windows of a day or more: an hour of live traffic holds one hour of the day, so
they would be flagged every time. On a shorter window their statistics are shown, they
are not flagged, ``not_judged`` says why, and they do not count in ``drift_share``.

The worker of each service publishes a report every ``INTERVAL_SECONDS`` (``publish``:
one Redis key per service, and Prometheus gauges); ``latest`` reads it back for the
console.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import redis
from prometheus_client import Gauge

from mlplatform.config import Settings
from mlplatform.errors import NotFound
from mlplatform.lake import Lake
from mlplatform.monitoring.drift import (
    DATASET_DRIFT_SHARE,
    LARGE_REFERENCE,
    THRESHOLDS,
    FeatureDrift,
    categorical_drift,
    numeric_drift,
)
from mlplatform.monitoring.reference import category_key, featurise, served_reference
from mlplatform.registry import ModelRegistry
from mlplatform.streams import first_ids, id_key, read_recent

__all__ = ["drift_report", "live_rows", "LiveWindow", "publish", "latest", "report_key",
           "format_window", "drift_job",
           "MIN_ROWS", "INTERVAL_SECONDS", "DRIFT_SHARE", "DRIFT_VALUE", "DRIFTED"]

log = logging.getLogger(__name__)

MIN_ROWS = 50  # fewer live rows than this: too noisy to flag anything
DAY_SECONDS = 86400  # windows shorter than this do not judge the time-of-day features
MAX_ROWS = 50_000  # the newest rows of a busy window: plenty for every statistic
CHUNK = 1000  # stream entries per read
INTERVAL_SECONDS = 60.0
KEY_PREFIX = "mlsuite:drift:"

# "mostrecent": the last report written wins, whichever worker process wrote it.
DRIFT_SHARE = Gauge("mlsuite_feature_drift_share", "Share of input features drifted",
                    ["service"], multiprocess_mode="mostrecent")
DRIFT_VALUE = Gauge("mlsuite_feature_drift_value",
                    "Drift statistic of an input feature (see the report for which)",
                    ["service", "feature"], multiprocess_mode="mostrecent")
DRIFTED = Gauge("mlsuite_feature_drifted", "1 if the input feature drifted, else 0",
                ["service", "feature"], multiprocess_mode="mostrecent")
_published: dict[str, set[str]] = {}


def report_key(service: str) -> str:
    return f"{KEY_PREFIX}{service}"


def format_window(seconds: float) -> str:
    """A window's length as the CLI writes it.

    >>> format_window(3600), format_window(900), format_window(86400), format_window(90)
    ('1h', '15m', '1d', '90s')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def drift_report(settings: Settings, service: str, *, window_seconds: float = 3600.0,
                 redis_client: redis.Redis | None = None, now: float | None = None
                 ) -> dict[str, Any]:
    """The drift report of ``service`` over the last ``window_seconds`` (see the module)."""
    registry = ModelRegistry(settings.data_dir / "models")
    found = served_reference(registry, service)
    if found is None:
        raise NotFound(f"no production model of {service!r} with a drift reference: train "
                       f"one with `mlsuite {service} train`", field="service")
    served, reference_version, profile = found
    until = time.time() if now is None else now
    client = redis_client
    if client is None and settings.redis_url:
        from mlplatform.redisdb import connect

        client = connect(settings.redis_url)
    source = profile["source"]
    window = live_rows(client, Lake.from_settings(settings), source, until - window_seconds,
                       until)
    features = [x for x, keep in zip(featurise(window.rows, source), window.in_window) if keep]
    enough = len(features) >= MIN_ROWS
    results = {name: _feature(spec, [x[name] for x in features if name in x], enough)
               for name, spec in profile["features"].items()}
    clock = set(source.get("clock") or ()) if window_seconds < DAY_SECONDS else set()
    for name in clock & results.keys():
        results[name]["drifted"] = False
        results[name]["not_judged"] = (
            f"follows the time of day: a {format_window(window_seconds)} window holds part of "
            "the day, so it is compared with the all-day reference on windows of 1d or more")
    judged = [r for name, r in results.items()
              if r.get("value") is not None and name not in clock]
    drifted = sum(1 for r in judged if r["drifted"])
    share = round(drifted / len(judged), 4) if judged and enough else 0.0
    return {
        "service": service, "model": served.label, "model_version": served.version,
        "reference": reference_version.label, "reference_rows": profile["rows"],
        "window": format_window(window_seconds),
        "window_seconds": int(window_seconds) if float(window_seconds).is_integer()
        else window_seconds,
        "rows": len(features), "truncated": window.truncated, "skipped": window.skipped,
        "enough_data": enough, "min_rows": MIN_ROWS,
        "drift_share": share, "n_drifted": drifted,
        "dataset_drift": enough and share >= DATASET_DRIFT_SHARE,
        "at": round(until, 3), "features": results,
    }


def _feature(spec: Mapping[str, Any], values: Sequence[Any], enough: bool) -> dict[str, Any]:
    n_ref = int(spec["rows"])
    if spec["kind"] == "numeric":
        live = _numbers(values)
        live = live[np.isfinite(live)]
        if not len(live):
            return _empty("numeric", "wasserstein" if n_ref > LARGE_REFERENCE else "ks")
        result: FeatureDrift = numeric_drift(np.asarray(spec["sample"], float), live,
                                             reference_rows=n_ref)
        extra = {"reference_mean": round(spec["mean"], 6), "live_mean": round(float(live.mean()), 6)}
    else:
        counts = _category_counts(values)
        if not counts:
            return _empty("categorical", "jensenshannon" if n_ref > LARGE_REFERENCE else "chi2")
        result = categorical_drift(spec["counts"], counts, reference_rows=n_ref)
        extra = {"new_categories": sorted(set(counts) - set(spec["counts"]))[:10]}
    out = result.to_dict()
    out["drifted"] = bool(result.drifted and enough)
    return {**out, "live_rows": len(values), **extra}


def _category_counts(values: Sequence[Any]) -> dict[str, int]:
    """How many of ``values`` fall under each ``category_key``: the distinct values are
    counted first (a C loop), then keyed. Equal values share a key (1 == 1.0 == True:
    "1") except the zeros, where -0.0 is "-0"; unhashable values take the slow path."""
    counts: dict[str, int] = {}
    try:
        distinct = collections.Counter(values)
    except TypeError:  # a list or a dict among the values
        distinct = collections.Counter()
        for v in values:
            key = category_key(v)
            counts[key] = counts.get(key, 0) + 1
    for v, n in distinct.items():
        parts = [(category_key(v), n)]
        if type(v) is not str and v == 0:  # 0 == 0.0 == -0.0 == False
            negative = _negative_zeros(values)
            parts = [("-0", negative), ("0", n - negative)]
        for key, m in parts:
            if m:
                counts[key] = counts.get(key, 0) + m
    return counts


def _negative_zeros(values: Sequence[Any]) -> int:
    """How many of ``values`` are the float -0.0 (in numpy when they are all numbers)."""
    try:
        array = np.array(values)
    except ValueError:  # ragged lists among the values
        array = np.array([], dtype=object)
    if array.dtype == np.float64:
        return int(np.count_nonzero((array == 0) & np.signbit(array)))
    if array.dtype.kind in "biu":
        return 0
    return sum(1 for u in values if type(u) is float and u == 0 and math.copysign(1.0, u) < 0)


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """The numbers among ``values`` (bools as 0 and 1; text and missing values left out)
    as floats: one numpy conversion when every value is a number (the usual case)."""
    if values and all(type(v) is float for v in values[:64]):
        array = np.array(values)
        if array.dtype == np.float64:
            return array
    return np.array([v for v in values if isinstance(v, (int, float))], dtype=float)


def _empty(kind: str, statistic: str) -> dict[str, Any]:
    """A feature with no live value in the window: nothing to compare."""
    return {"kind": kind, "statistic": statistic, "value": None,
            "threshold": THRESHOLDS[statistic], "drifted": False, "live_rows": 0}


@dataclass
class LiveWindow:
    """The records read for a window, oldest first, and which of them fall inside it."""

    rows: list[dict[str, Any]]
    in_window: list[bool]
    truncated: bool  # the window held more than MAX_ROWS: these are its newest
    skipped: int  # records that were not valid JSON


def live_rows(client: redis.Redis | None, lake: Lake, source: Mapping[str, Any],
              since: float, until: float, *, max_rows: int = MAX_ROWS) -> LiveWindow:
    """The live records of ``source``'s stream appended in [since, until), with look-back.

    Rolling ``counts`` features look back up to their ``seconds`` before ``since``, so the
    first rows of the window count their history too; the caller drops those rows after
    featurising. Redis is read newest first in chunks (a reply of thousands of decision
    records would hold the server, and every request, for milliseconds); the lake adds
    what the worker already trimmed.
    """
    lookback = max((float(c["seconds"]) for c in (source.get("counts") or {}).values()),
                   default=0.0)
    stream, start_ms = source["stream"], int((since - lookback) * 1000)
    until_ms = int(until * 1000)
    json_field = source.get("json_field")
    # (ms, seq, the record's JSON when the source names its field, else every field)
    entries: list[tuple[int, int, Any]] = []
    # Per partition key: the first id Redis still holds (None: nothing there). Without a
    # client the whole window comes from the lake (every partition's folder).
    firsts: dict[str, str | None] = {stream: None}
    if client is not None:
        # Every partition of the stream (on a cluster the writers append to {p<k>}:...).
        wanted = json_field.encode() if json_field else b""
        for entry in read_recent(client, stream, max_rows, since_ms=start_ms,
                                 until_ms=until_ms, chunk=CHUNK):
            fields = entry.fields
            entries.append((*id_key(entry.id), fields.get(wanted, fields.get(json_field))
                            if json_field else {_text(k): _text(v) for k, v in fields.items()}))
        firsts = first_ids(client, stream)
    if len(entries) < max_rows:
        # The worker archived and trimmed the start of the window: the lake holds it, in
        # the folder of each partition key, up to that partition's first entry in Redis.
        for key, first in firsts.items():
            before = None if first is None else id_key(first)
            if before is None or before[0] > start_ms:
                entries.extend((ms, seq, fields.get(json_field) if json_field else fields)
                               for ms, seq, fields
                               in _from_lake(lake, key, start_ms, before, until))
        entries.sort(key=lambda e: (e[0], e[1]))
        entries = entries[-max_rows:]
    window_ms = since * 1000
    window = LiveWindow([], [], truncated=len(entries) >= max_rows, skipped=0)
    decode = _row_decoder(source)
    for ms, _, value in entries:
        if json_field:
            try:
                if value is None:
                    raise KeyError(json_field)
                row = decode(value)
            except (KeyError, ValueError):
                window.skipped += 1
                continue
        else:
            row = value
        window.rows.append(row)
        window.in_window.append(ms >= window_ms)
    return window


def _from_lake(lake: Lake, stream: str, start_ms: int, before: tuple[int, int] | None,
               until: float) -> list[tuple[int, int, dict[str, Any]]]:
    """Archived entries of ``stream`` (a partition key: that partition's folder) from
    ``start_ms`` up to (not incl.) the id ``before`` (its first entry still in Redis:
    the entries of that millisecond before it were archived, the rest were not), as
    (ms, seq, fields)."""
    end = (math.ceil(until * 1000), 0) if before is None else before
    frame = lake.read(stream, since=datetime.fromtimestamp(start_ms / 1000, UTC))
    out = []
    for record in frame.to_dict("records"):
        ms, seq = id_key(record.pop("stream_id"))
        record.pop("stream_time", None)
        if start_ms <= ms and (ms, seq) < end:
            out.append((ms, seq, {k: v for k, v in record.items() if isinstance(v, str)}))
    return out


_decode_json = msgspec.json.Decoder().decode


def _json_row(text: bytes | str, decode: Callable[[bytes | str], Any] = _decode_json) -> Any:
    """A JSON record: msgspec's decoder (a third of the time of ``json.loads`` on a
    decision record, for tens of thousands of them per report), and ``json.loads`` for
    what it refuses but Python's JSON accepts (NaN, Infinity, numbers out of range, text
    that is not UTF-8), so the rows are the same either way."""
    try:
        return decode(text)
    except msgspec.MsgspecError:
        return json.loads(_text(text))


def _row_decoder(source: Mapping[str, Any]) -> Callable[[bytes | str], Any]:
    """What turns a record's JSON into the row ``featurise`` reads. A source that reads
    only its vector (the fraud decisions: ``features``) gets ``{vector: ...}`` and no
    other key: msgspec then skips the rest of the record (reasons, scores, ids) without
    building it, about half the time of a whole decision record."""
    vector = source.get("vector")
    if not vector or source.get("fields") or source.get("lookups") or source.get("counts"):
        return _json_row
    only = msgspec.json.Decoder(msgspec.defstruct(
        "VectorOnly", [("vector", Any, None)], rename={"vector": vector})).decode

    def row(text: bytes | str) -> Any:
        decoded = _json_row(text, only)
        if isinstance(decoded, msgspec.Struct):
            return {vector: decoded.vector}  # type: ignore[attr-defined]
        return decoded  # what msgspec refused, as json.loads reads it

    return row


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# -- publishing ---------------------------------------------------------------------------

def publish(client: redis.Redis, service: str, report: Mapping[str, Any]) -> None:
    """Keep ``report`` as the latest of ``service`` (one Redis key) and set the gauges."""
    client.set(report_key(service), json.dumps(report, default=float))
    DRIFT_SHARE.labels(service).set(float(report["drift_share"]))
    names = set(report["features"])
    for gone in _published.get(service, set()) - names:
        # prometheus-client cannot remove a series in multi-process mode (it asks whether
        # either spelling of the variable is set at all): stand the series down instead.
        if {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"} & set(os.environ):
            DRIFT_VALUE.labels(service, gone).set(math.nan)
            DRIFTED.labels(service, gone).set(0.0)
        else:
            DRIFT_VALUE.remove(service, gone)
            DRIFTED.remove(service, gone)
    for name, result in report["features"].items():
        if result.get("value") is not None:
            DRIFT_VALUE.labels(service, name).set(float(result["value"]))
        DRIFTED.labels(service, name).set(1.0 if result["drifted"] else 0.0)
    _published[service] = names


def latest(client: redis.Redis, service: str) -> dict[str, Any] | None:
    """The last published report of ``service`` (None before the first)."""
    raw: Any = client.get(report_key(service))
    return None if raw is None else dict(json.loads(raw))


def drift_job(settings: Settings, service: str, client: redis.Redis,
              window_seconds: float = 3600.0) -> Callable[[], str]:
    """The worker's periodic job: compute, publish, and say what drifted (a log line)."""
    def run() -> str:
        try:
            report = drift_report(settings, service, window_seconds=window_seconds,
                                  redis_client=client)
        except NotFound as exc:
            return f"no drift report: {exc}"
        publish(client, service, report)
        names = [n for n, r in report["features"].items() if r["drifted"]]
        if not report["enough_data"]:
            return (f"{report['model']}: {report['rows']} live rows in {report['window']}, "
                    f"fewer than {MIN_ROWS}: nothing flagged")
        return (f"{report['model']}: {len(names)}/{len(report['features'])} features drifted "
                f"over {report['rows']} rows in {report['window']}"
                + (f" ({', '.join(names)})" if names else ""))
    return run
