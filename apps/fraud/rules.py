"""Rules before and after the model (as Stripe Radar and Marble give payment teams).

A ``Policy`` turns the model's decision into the final one. Its rules come from a TOML
file (``MLSUITE_FRAUD_RULES_FILE``, default the ``rules.toml`` shipped here), reloaded
when the file changes (its mtime is looked at, at most every ``rules_check_seconds``;
the file is never read per request), and its lists from ``fraud.lists`` (the snapshot
this process follows: no Redis call per request either).

- ``[[before]]`` rules: block lists and hard limits on the transaction and its features,
  with the action ``decline`` or ``review``. A decline always wins: nothing after the
  model undoes it. A review is the least the transaction gets.
- ``[[after]]`` rules: allow lists that override a model decline (``overrides``, default
  ``["decline"]``) with ``approve`` or ``review``. The first one that fires applies.

A rule fires when the transaction's value is on its ``list`` (if it names one) and every
condition of its ``when`` holds. A condition is ``"<field> <op> <value>"``: ``op`` one of
``> >= < <= == != in``, ``not in`` (``in`` takes a comma-separated list); ``field`` a
transaction field (``amount currency country channel card_id merchant_id device_id``),
a feature of the vector (``card_count_1h``, ``mcat=jewelry``, ... absent -> 0), or, in
``[[after]]`` rules only, ``score``.

Each rule that fires adds a reason ``rule:<name>`` (``fraud.reasons.rule_reason``) and
counts in ``mlsuite_fraud_rule_hits_total{rule, action}``.

>>> from fraud.schema import Transaction
>>> rules = parse_rules({"before": [{"name": "big", "when": ["amount > 1000"],
...                                  "action": "review"}]}, "example")
>>> t = Transaction("t1", 1735732800.0, "c1", "m1", 5000.0, "EUR", "FR", "online", "d1")
>>> [(decision, reasons)] = Policy(rules).apply([t], [{}], [0.1], ["approve"])
>>> decision, [r["code"] for r in reasons]
('review', ['rule:big'])
"""

from __future__ import annotations

import logging
import operator
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fraud import metrics
from fraud.config import FraudConfig
from fraud.features import BASE_FEATURES, CATEGORY_PREFIX
from fraud.lists import EMPTY, LISTS, Entry, ListSet
from fraud.pii import ID_COLUMNS, is_token
from fraud.reasons import rule_reason
from fraud.schema import Transaction
from mlplatform.errors import ConfigError

__all__ = ["Policy", "Rule", "RuleSet", "Condition", "ListSource", "parse_rules", "load_rules",
           "DEFAULT_RULES", "SEVERITY"]

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).with_name("rules.toml")
SEVERITY = {"approve": 0, "review": 1, "decline": 2}
_ACTIONS = {"before": ("decline", "review"), "after": ("approve", "review")}
_RULE_KEYS = {"before": {"name", "list", "when", "action", "text"},
              "after": {"name", "list", "when", "action", "text", "overrides"}}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CONDITION = re.compile(
    r"^\s*(?P<field>[A-Za-z_][\w=.:@-]*?)\s*(?P<op>>=|<=|==|!=|>|<|\s+not\s+in\s+|\s+in\s+)"
    r"\s*(?P<value>\S.*?)\s*$")
_TEXT_FIELDS = ("currency", "country", "channel", "card_id", "merchant_id", "device_id")
_NUMERIC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_EQUALITY_OPS: dict[str, Callable[[Any, Any], bool]] = {"==": operator.eq, "!=": operator.ne}

Getter = Callable[[Transaction, Mapping[str, float], float], Any]


class ListSource(Protocol):
    """Where a policy reads the lists: ``fraud.lists.Lists`` (or a fixed ``ListSet``)."""

    def current(self) -> ListSet: ...


@dataclass(frozen=True)
class Condition:
    """One compiled ``"<field> <op> <value>"`` test."""

    text: str
    field: str
    test: Callable[[Transaction, Mapping[str, float], float], bool]


@dataclass(frozen=True)
class Rule:
    """One rule of the file, compiled."""

    name: str
    stage: str  # "before" or "after"
    action: str
    list: str | None
    list_field: str | None
    conditions: tuple[Condition, ...]
    text: str
    overrides: frozenset[str]
    # Compiled for the request path: the list's key of a transaction, the tests to pass.
    key: Callable[[Transaction], Any] | None = None
    tests: tuple[Callable[[Transaction, Mapping[str, float], float], bool], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "stage": self.stage, "action": self.action}
        if self.list:
            out["list"] = self.list
        if self.conditions:
            out["when"] = [c.text for c in self.conditions]
        if self.text:
            out["text"] = self.text
        if self.stage == "after":
            out["overrides"] = sorted(self.overrides)
        return out


@dataclass(frozen=True)
class RuleSet:
    """The rules of one version of the file."""

    before: tuple[Rule, ...]
    after: tuple[Rule, ...]
    source: str = ""


def load_rules(path: Path) -> RuleSet:
    """The rules in the TOML file ``path``; ConfigError naming the file and the rule."""
    try:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"rules file {str(path)!r} must be a readable TOML file: {exc}"
                          ) from exc
    return parse_rules(data, str(path))


def parse_rules(data: Mapping[str, Any], source: str) -> RuleSet:
    """Rules from parsed TOML: ``{"before": [...], "after": [...]}``."""
    unknown = set(data) - {"before", "after"}
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}; "
                          "rules go in [[before]] and [[after]]")
    stages: dict[str, list[Rule]] = {"before": [], "after": []}
    names: set[str] = set()
    for stage in stages:
        items = data.get(stage, [])
        if not isinstance(items, list):
            raise ConfigError(f"{source}: {stage} must be an array of tables ([[{stage}]])")
        for i, item in enumerate(items):
            rule = _parse_rule(item, stage, f"{source}: {stage}[{i}]")
            if rule.name in names:
                raise ConfigError(f"{source}: rule name {rule.name!r} is used twice")
            names.add(rule.name)
            stages[stage].append(rule)
    return RuleSet(tuple(stages["before"]), tuple(stages["after"]), source)


def _parse_rule(item: Any, stage: str, where: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table")
    extra = set(item) - _RULE_KEYS[stage]
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; expected "
                          f"{', '.join(sorted(_RULE_KEYS[stage]))}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name must be 1-64 of a-z 0-9 _ . - , got {name!r}")
    where = f"{where} ({name})"
    action = item.get("action")
    if action not in _ACTIONS[stage]:
        raise ConfigError(f"{where}: action must be one of {', '.join(_ACTIONS[stage])}, "
                          f"got {action!r}")
    list_name = item.get("list")
    list_field = None
    if list_name is not None:
        spec = LISTS.get(list_name) if isinstance(list_name, str) else None
        if spec is None:
            raise ConfigError(f"{where}: list must be one of {', '.join(LISTS)}, "
                              f"got {list_name!r}")
        if (spec.kind == "block") != (stage == "before"):
            raise ConfigError(f"{where}: {list_name} is an {spec.kind} list; "
                              f"{'block lists go in [[before]]' if spec.kind == 'block' else 'allow lists go in [[after]]'}")
        list_field = spec.field
    when = item.get("when", [])
    if isinstance(when, str):
        when = [when]
    if not isinstance(when, list) or not all(isinstance(w, str) for w in when):
        raise ConfigError(f"{where}: when must be a list of conditions like "
                          f"\"amount > 1000\", got {when!r}")
    if list_name is None and not when:
        raise ConfigError(f"{where}: a rule needs a list, conditions (when), or both")
    conditions = tuple(_condition(w, stage, where) for w in when)
    text = item.get("text", "")
    if not isinstance(text, str) or len(text) > 300:
        raise ConfigError(f"{where}: text must be a string of at most 300 characters")
    overrides = item.get("overrides", ["decline"])
    if stage == "after" and (not isinstance(overrides, list)
                             or not overrides
                             or any(o not in ("review", "decline") for o in overrides)):
        raise ConfigError(f"{where}: overrides must list model decisions among review, "
                          f"decline, got {overrides!r}")
    return Rule(name, stage, action, list_name, list_field, conditions, text,
                frozenset(overrides) if stage == "after" else frozenset(),
                operator.attrgetter(list_field) if list_field else None,
                tuple(c.test for c in conditions))


def _condition(text: str, stage: str, where: str) -> Condition:
    m = _CONDITION.match(text)
    if m is None:
        raise ConfigError(f"{where}: condition {text!r} must read \"<field> <op> <value>\" "
                          "with op one of > >= < <= == != in, not in")
    field, op, raw = m["field"], " ".join(m["op"].split()), m["value"]
    values = [_unquote(v) for v in raw.split(",")] if op in ("in", "not in") else [_unquote(raw)]
    get: Getter
    if field in _TEXT_FIELDS:
        if op in _NUMERIC_OPS:
            raise ConfigError(f"{where}: {field} is text; compare it with == != in, not {op}")
        get = _attribute(field)
        typed: list[Any] = values
        kind = ID_COLUMNS.get(field)
        raw_ids = [v for v in values if kind is not None and not is_token(kind, v)]
        if raw_ids:  # transactions carry tokens: a raw id would never match, and leaks
            raise ConfigError(f"{where}: {field} is compared as a token ({kind}_...; the "
                              f"value a review case or GET /v1/lists shows), got "
                              f"{raw_ids[0][:4]}...")
    else:
        if field == "amount":
            get = _amount
        elif field == "score":
            if stage != "after":
                raise ConfigError(f"{where}: score is known only after the model "
                                  "([[after]] rules)")
            get = _score
        elif field in BASE_FEATURES or field.startswith((CATEGORY_PREFIX, "x_")):
            get = _feature(field)
        else:
            raise ConfigError(f"{where}: unknown field {field!r} in {text!r}; expected amount, "
                              f"{', '.join(_TEXT_FIELDS)}, a feature ({BASE_FEATURES[0]}, ...)"
                              + (" or score" if stage == "after" else ""))
        try:
            typed = [float(v) for v in values]
        except ValueError:
            raise ConfigError(f"{where}: {field} is a number; {raw!r} is not") from None
    test: Callable[[Transaction, Mapping[str, float], float], bool]
    if op in ("in", "not in"):
        members = frozenset(typed)
        negate = op == "not in"

        def test(t: Transaction, x: Mapping[str, float], s: float) -> bool:
            return (get(t, x, s) in members) != negate
    elif get is _amount or field in _TEXT_FIELDS or field == "score":
        compare = _NUMERIC_OPS.get(op) or _EQUALITY_OPS[op]
        value = typed[0]

        def test(t: Transaction, x: Mapping[str, float], s: float) -> bool:
            return compare(get(t, x, s), value)
    else:  # a feature: the hot case, one call less
        compare = _NUMERIC_OPS.get(op) or _EQUALITY_OPS[op]
        value = typed[0]

        def test(t: Transaction, x: Mapping[str, float], s: float) -> bool:
            return compare(x.get(field, 0.0), value)
    return Condition(text.strip(), field, test)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _amount(t: Transaction, x: Mapping[str, float], s: float) -> float:
    return t.amount


def _score(t: Transaction, x: Mapping[str, float], s: float) -> float:
    return s


def _attribute(name: str) -> Getter:
    get = operator.attrgetter(name)
    return lambda t, x, s: get(t)


def _feature(name: str) -> Getter:
    return lambda t, x, s: x.get(name, 0.0)


class Policy:
    """The rules and lists applied around the model's decision; thread-safe.

    The compiled rules are swapped in one reference assignment when the file changes,
    so a request sees either the old rules or the new ones, never a mix."""

    def __init__(self, rules: RuleSet, lists: ListSource | None = None, *,
                 path: Path | None = None, check_seconds: float = 1.0) -> None:
        self._rules = rules
        self._lists = lists
        self.path = path
        self.check_seconds = check_seconds
        self._signature = _signature(path) if path is not None else None
        self._due = time.monotonic() + check_seconds
        self._reload_lock = threading.Lock()
        self._failed: tuple[int, int] | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        self._pid = os.getpid()
        self.loaded_at = time.time()

    @classmethod
    def load(cls, config: FraudConfig, lists: ListSource | None = None) -> Policy:
        """The policy of ``config.rules_file`` (the shipped rules when empty) and ``lists``."""
        path = Path(config.rules_file) if config.rules_file else DEFAULT_RULES
        rules = load_rules(path)
        metrics.RULE_RELOADS.labels("ok").inc()
        log.info("fraud rules: %d before and %d after the model, from %s", len(rules.before),
                 len(rules.after), path)
        return cls(rules, lists, path=path, check_seconds=config.rules_check_seconds)

    @property
    def rules(self) -> RuleSet:
        """The current rules (reloaded first if the file changed and a check is due)."""
        if self.path is not None and time.monotonic() >= self._due:
            self.reload()
        return self._rules

    def reload(self) -> bool:
        """Load the file now if its mtime or size changed; whether new rules were swapped
        in. A file that does not parse is logged and counted; the old rules stay."""
        if self.path is None or not self._reload_lock.acquire(blocking=False):
            return False  # another thread is checking: serve the current rules
        try:
            self._due = time.monotonic() + self.check_seconds
            signature = _signature(self.path)
            if signature is None or signature == self._signature or signature == self._failed:
                return False
            try:
                rules = load_rules(self.path)
            except ConfigError as exc:
                self._failed = signature
                metrics.RULE_RELOADS.labels("error").inc()
                log.error("fraud rules: keeping the previous rules: %s", exc)
                return False
            self._rules, self._signature, self._failed = rules, signature, None
            self.loaded_at = time.time()
            metrics.RULE_RELOADS.labels("ok").inc()
            log.info("fraud rules reloaded from %s: %d before, %d after the model", self.path,
                     len(rules.before), len(rules.after))
            return True
        finally:
            self._reload_lock.release()

    def apply(self, txs: Sequence[Transaction], xs: Sequence[Mapping[str, float]],
              scores: Sequence[float], decisions: Sequence[str]
              ) -> list[tuple[str, list[dict[str, Any]]]]:
        """Per transaction, the final decision and the reasons of the rules that fired."""
        rules = self.rules
        lists = self._lists.current() if self._lists is not None else EMPTY
        held = lists.lists
        # A rule on an empty list cannot fire: leave it out for the whole request.
        before = [(r, held[r.list] if r.list else None) for r in rules.before
                  if r.list is None or held[r.list]]
        after = [(r, held[r.list] if r.list else None) for r in rules.after
                 if r.list is None or held[r.list]]
        if not before and not after:
            return [(d, []) for d in decisions]
        now = time.time()
        out: list[tuple[str, list[dict[str, Any]]]] = []
        for t, x, s, decision in zip(txs, xs, scores, decisions):
            hits: list[dict[str, Any]] = []
            floor = 0
            for rule, table in before:
                fired, entry = _fires(rule, table, t, x, s, now)
                if fired:
                    hits.append(_reason(rule, entry, t, x, s))
                    self._count(rule)
                    floor = max(floor, SEVERITY[rule.action])
            if floor == 2:  # a block always wins
                out.append(("decline", hits))
                continue
            final = decision
            for rule, table in after:
                if decision not in rule.overrides:
                    continue
                fired, entry = _fires(rule, table, t, x, s, now)
                if fired:
                    hits.append(_reason(rule, entry, t, x, s))
                    self._count(rule)
                    final = rule.action
                    break
            if SEVERITY.get(final, 0) < floor:
                final = "review"
            out.append((final, hits))
        return out

    def _count(self, rule: Rule) -> None:
        if self._pid != os.getpid():  # forked: metric children belong to each process
            self._counters, self._pid = {}, os.getpid()
        key = (rule.name, rule.action)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.RULE_HITS.labels(rule.name, rule.action)
        counter.inc()

    def describe(self) -> dict[str, Any]:
        """The rules in force and the lists' version (``GET /v1/rules``)."""
        rules = self.rules
        lists = self._lists.current() if self._lists is not None else EMPTY
        return {"source": rules.source, "loaded_at": round(self.loaded_at, 3),
                "before": [r.to_dict() for r in rules.before],
                "after": [r.to_dict() for r in rules.after],
                "lists_version": lists.seq}


def _fires(rule: Rule, table: Any, t: Transaction, x: Mapping[str, float], s: float,
           now: float) -> tuple[bool, Entry | None]:
    """Whether ``rule`` fires for ``t``, and the list entry it matched (list rules: a live
    entry for the transaction's key, then every condition; other rules: the conditions)."""
    entry = None
    if table is not None:
        entry = table.get(rule.key(t))  # type: ignore[misc]
        if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
            return False, None
    return all(test(t, x, s) for test in rule.tests), entry


def _reason(rule: Rule, entry: Entry | None, t: Transaction, x: Mapping[str, float],
            s: float) -> dict[str, Any]:
    """The reason of ``rule``, which fired on ``t`` (``entry``: the list entry it matched)."""
    details: dict[str, Any] = {"action": rule.action}
    if entry is not None:
        text = rule.text or f"{rule.list_field} {entry.value} is on the {rule.list} list"
        if entry.reason:
            text += f" ({entry.reason})"
        details.update(list=rule.list, value=entry.value)
    else:
        first = rule.conditions[0].field
        value = t.amount if first == "amount" else s if first == "score" \
            else getattr(t, first) if first in _TEXT_FIELDS else x.get(first, 0.0)
        text = rule.text or " and ".join(c.text for c in rule.conditions)
        details.update(feature=first, value=round(value, 4) if isinstance(value, float)
                       else value)
    return rule_reason(rule.name, text, **details)


def _signature(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of the rules file; None while it is missing (the rules stay)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
