"""Data-quality checks: pandera schemas for the rows, bounds for the whole table.

Row checks (nulls, malformed ids, unknown categories, timestamps in the future or
absurdly old) are a pandera ``DataFrameSchema`` built from a source's ``ColumnRule``s and
run lazily, so every failing row of every column is collected at once; the failure rate
of each (column, check) is then held against its bound. Table checks (volume against the
previous run, label rate and its change) compare one number with bounds.

A check's result names the check and the numbers, e.g.
``null_user_id_rate (lake mlsuite:rec:events): 0.31 > max 0.01``.

>>> import pandas as pd
>>> rules = (ColumnRule("user_id", "id"), ColumnRule("event_type", "category", ("view",)))
>>> frame = pd.DataFrame({"user_id": ["u1", None, "bad id!", "u4"],
...                       "event_type": ["view", "view", "view", "click"]})
>>> results, bad_rows = row_checks(frame, rules, PipelineConfig(), source="demo")
>>> [r.message for r in results if not r.passed]  # doctest: +NORMALIZE_WHITESPACE
['null_user_id_rate (demo): 0.25 > max 0.01', 'invalid_user_id_rate (demo): 0.25 > max 0.01',
 'invalid_event_type_rate (demo): 0.25 > max 0.01']
>>> sorted(bad_rows)
[1, 2, 3]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd

from mlplatform.http import ID_PATTERN
from mlplatform.pipeline.config import PipelineConfig

__all__ = ["CheckResult", "ColumnRule", "bound_check", "label_checks", "row_checks",
           "volume_checks"]

Kind = Literal["id", "category", "timestamp", "number"]
TIMESTAMP_DTYPE = pd.DatetimeTZDtype("ns", "UTC")


@dataclass(frozen=True)
class ColumnRule:
    """What one column of a source table must hold.

    ``id``: text matching ``ID_PATTERN``; ``category``: one of ``choices``; ``timestamp``:
    UTC ``datetime64[ns]``, not in the future, not older than ``max_age_days``; ``number``:
    finite, within [``minimum``, ``maximum``] when given. Nulls count against
    ``max_null_rate`` unless ``nullable``.
    """

    column: str
    kind: Kind
    choices: tuple[str, ...] = ()
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class CheckResult:
    """One measured check: its value against a bound, and whether it held."""

    name: str
    source: str
    value: float | None
    op: str  # "<=" or ">=": the relation that must hold between value and limit
    limit: float | None
    passed: bool
    note: str = ""

    @property
    def message(self) -> str:
        where = f" ({self.source})" if self.source else ""
        if self.value is None or self.limit is None:
            return f"{self.name}{where}: {self.note or 'not measured'}"
        shown = "<=" if self.op == "<=" else ">="
        if not self.passed:
            shown = ">" if self.op == "<=" else "<"
        bound = "max" if self.op == "<=" else "min"
        return f"{self.name}{where}: {_num(self.value)} {shown} {bound} {_num(self.limit)}" + (
            f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "value": self.value, "op": self.op,
                "limit": self.limit, "passed": self.passed, "message": self.message}


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e6 else f"{x:,.0f}"


def bound_check(name: str, source: str, value: float | None, *, maximum: float | None = None,
                minimum: float | None = None, note: str = "") -> CheckResult:
    """``value`` against one bound (``maximum`` or ``minimum``); None: not measurable, passes.

    >>> bound_check("label_rate", "x", 0.7, maximum=0.5).message
    'label_rate (x): 0.7 > max 0.5'
    """
    if (maximum is None) == (minimum is None):
        raise ValueError("bound_check needs exactly one of maximum or minimum")
    op, limit = ("<=", maximum) if maximum is not None else (">=", minimum)
    if value is None or limit is None:
        return CheckResult(name, source, None, op, limit, True, note)
    passed = value <= limit if op == "<=" else value >= limit
    return CheckResult(name, source, round(float(value), 6), op, float(limit), passed, note)


def _schema(rules: Sequence[ColumnRule], config: PipelineConfig, now: datetime) -> Any:
    """The pandera schema of ``rules``; each check's position maps back to its kind."""
    import pandera.pandas as pa

    columns = {}
    for rule in rules:
        checks: list[Any] = []
        dtype: Any = None
        if rule.kind == "id":
            checks.append(pa.Check.str_matches(ID_PATTERN.pattern))
        elif rule.kind == "category":
            checks.append(pa.Check.isin(list(rule.choices)))
        elif rule.kind == "timestamp":
            dtype = TIMESTAMP_DTYPE
            checks.append(pa.Check.le(pd.Timestamp(now + timedelta(
                seconds=config.future_skew_seconds))))
            checks.append(pa.Check.ge(pd.Timestamp(now - timedelta(days=config.max_age_days))))
        elif rule.kind == "number":
            dtype = "float64"
            checks.append(pa.Check(lambda s: s.abs() < float("inf"), element_wise=False))
            if rule.minimum is not None:
                checks.append(pa.Check.ge(rule.minimum))
            if rule.maximum is not None:
                checks.append(pa.Check.le(rule.maximum))
        columns[rule.column] = pa.Column(dtype, checks=checks, nullable=rule.nullable)
    return pa.DataFrameSchema(columns, strict=False, coerce=False)


def _check_name(rule: ColumnRule, number: int) -> str:
    """The name of check ``number`` of ``rule`` (its position in ``_schema``)."""
    if rule.kind == "timestamp":
        return f"{'future' if number == 0 else 'old'}_{rule.column}_rate"
    if rule.kind == "number" and number > 0:
        return f"out_of_range_{rule.column}_rate"
    return f"invalid_{rule.column}_rate"


def _limit(name: str, config: PipelineConfig) -> float:
    if name.startswith("null_"):
        return config.max_null_rate
    if name.startswith("future_"):
        return config.max_future_rate
    if name.startswith("old_"):
        return config.max_old_rate
    return config.max_invalid_rate


def row_checks(frame: pd.DataFrame, rules: Sequence[ColumnRule], config: PipelineConfig, *,
               source: str, now: datetime | None = None) -> tuple[list[CheckResult], set[Any]]:
    """Run the rules' pandera schema on ``frame``: one rate check per (column, check) and
    the index labels of every failing row (dropped before training if the rates pass).

    A missing column or a wrong dtype fails the ``schema`` check outright.
    """
    import pandera.pandas as pa

    now = now or datetime.now(UTC)
    n = len(frame)
    names: dict[str, ColumnRule] = {}
    for rule in rules:
        names[f"null_{rule.column}_rate"] = rule
        names[_check_name(rule, 0)] = rule
        if rule.kind == "timestamp":
            names[_check_name(rule, 1)] = rule
        if rule.kind == "number" and (rule.minimum is not None or rule.maximum is not None):
            names[_check_name(rule, 1)] = rule
    failing: dict[str, set[Any]] = {name: set() for name in names}
    schema_problems: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandera narrates its own deprecations
            _schema(rules, config, now).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        by_column = {r.column: r for r in rules}
        for row in exc.failure_cases.itertuples(index=False):
            found = by_column.get(str(row.column)) if row.column is not None else None
            if found is None or row.check == "column_in_dataframe" or str(row.check).startswith(
                    "dtype("):
                what = row.failure_case if row.check == "column_in_dataframe" else row.check
                schema_problems.append(f"{row.column or what}: {row.check} "
                                       f"(got {row.failure_case!r})")
                continue
            if row.check == "not_nullable":
                name = f"null_{found.column}_rate"
            else:
                name = _check_name(found, int(row.check_number or 0))
            if row.index is not None:
                failing[name].add(row.index)
    results = [CheckResult("schema", source, float(len(schema_problems)), "<=", 0.0,
                           not schema_problems, "; ".join(schema_problems[:3]))]
    if schema_problems:
        return results, set(frame.index)
    for name, rule in names.items():
        rate = len(failing[name]) / n if n else 0.0
        results.append(bound_check(name, source, rate, maximum=_limit(name, config)))
    bad_rows = set().union(*failing.values()) if failing else set()
    return results, bad_rows


def volume_checks(rows: dict[str, int], previous: dict[str, int] | None,
                  config: PipelineConfig) -> list[CheckResult]:
    """Rows per source and in all against the last run whose checks passed.

    A source may only shrink to ``min_volume_ratio`` of its previous rows; the total must
    also stay under ``max_volume_ratio`` times the previous total.

    >>> [r.message for r in volume_checks({"lake": 10}, {"lake": 100}, PipelineConfig())][:1]
    ['volume_ratio (lake): 0.1 < min 0.5 (10 rows, previous run 100)']
    """
    if not previous:
        return [bound_check("volume_ratio", "all", None, minimum=config.min_volume_ratio,
                            note="no previous run to compare with")]
    out = []
    for source, n in rows.items():
        before = previous.get(source)
        if before:
            out.append(bound_check("volume_ratio", source, n / before,
                                   minimum=config.min_volume_ratio,
                                   note=f"{n} rows, previous run {before}"))
    total, before_total = sum(rows.values()), sum(previous.values())
    if before_total:
        note = f"{total} rows, previous run {before_total}"
        out.append(bound_check("volume_ratio", "all", total / before_total,
                               minimum=config.min_volume_ratio, note=note))
        out.append(bound_check("volume_ratio", "all", total / before_total,
                               maximum=config.max_volume_ratio, note=note))
    return out


def label_checks(source: str, labels: pd.Series, previous_rate: float | None,
                 config: PipelineConfig) -> list[CheckResult]:
    """The share of positive labels within bounds, and within a factor of the last run's.

    >>> [r.passed for r in label_checks("x", pd.Series([1, 0, 0, 0]), 0.01, PipelineConfig())]
    [True, True, False, True]
    """
    values = pd.to_numeric(labels, errors="coerce").dropna()
    if values.empty:
        return [bound_check("label_rate", source, None, minimum=config.min_label_rate,
                            note="no labels")]
    rate = float(values.mean())
    out = [bound_check("label_rate", source, rate, minimum=config.min_label_rate),
           bound_check("label_rate", source, rate, maximum=config.max_label_rate)]
    if previous_rate:
        out.append(bound_check("label_rate_change", source, rate / previous_rate,
                               maximum=config.max_label_rate_change,
                               note=f"rate {rate:.4g}, previous run {previous_rate:.4g}"))
        if rate > 0:
            out.append(bound_check("label_rate_change", source, rate / previous_rate,
                                   minimum=1 / config.max_label_rate_change,
                                   note=f"rate {rate:.4g}, previous run {previous_rate:.4g}"))
    return out
