"""Metadata filters: equals, in, and ranges, shared by all three search modes.

A filter is parsed once from the user's mapping into frozen conditions; stores compile those
into their own query language and :func:`matches` is the reference semantics they must agree
with (the contract tests check it)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semsearch.core.unicode import require_unicode
from semsearch.errors import InputError

RANGE_OPS = ("gt", "gte", "lt", "lte")
OPS = ("eq", "in", *RANGE_OPS)
# Bounds that keep every backend's compiled query small (SQLite refuses an expression tree
# deeper than 1000 and statements with too many parameters): far above what a person
# writes, low enough that no filter reaches a backend limit as a 500.
MAX_CONDITIONS = 100
MAX_IN_VALUES = 1000
MAX_TOTAL_VALUES = 5000
MAX_FIELD_CHARS = 128


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)


def parse_filter(spec: Mapping[str, Any] | None) -> Filter:
    """``{"category": "a", "year": {"gte": 2000}, "tag": {"in": ["x", "y"]}}`` -> Filter."""
    if not spec:
        return Filter()
    if not isinstance(spec, Mapping):
        raise InputError(f"a filter is a JSON object of field: condition, not {spec!r:.80}")
    conds: list[Condition] = []
    for field, value in spec.items():
        _check_field(field)
        conds += _conditions(field, value)
        if len(conds) > MAX_CONDITIONS:
            raise InputError(f"the filter has more than {MAX_CONDITIONS} conditions; combine "
                             "values with 'in' or filter in fewer fields")
    for c in conds:
        for v in c.value if c.op == "in" else (c.value,):
            _check_value(c.field, v)
    values = sum(len(c.value) if c.op == "in" else 1 for c in conds)
    if values > MAX_TOTAL_VALUES:
        raise InputError(f"the filter compares with {values:,} values in all; the limit is "
                         f"{MAX_TOTAL_VALUES:,}")
    return Filter(tuple(conds))


def _check_field(field: Any) -> None:
    if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS or \
            not field.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise InputError(f"filter field {field!r:.140} must be a name of 1-"
                         f"{MAX_FIELD_CHARS} letters, digits, '_', '-' or '.'")


def _conditions(field: str, value: Any) -> list[Condition]:
    """One field's conditions: an operator object, a list (in), or a scalar (equals)."""
    if isinstance(value, Mapping):
        if not value:
            raise InputError(f"filter on {field!r} is an empty object")
        return [_operator(field, op, arg) for op, arg in value.items()]
    if isinstance(value, list | tuple):
        if not value:
            raise InputError(f"filter {field!r}: an empty list matches nothing; give at "
                             "least one value")
        _check_in(field, value)
        return [Condition(field, "in", tuple(value))]
    if value is None:
        # JSON null compares unequal to everything in SQL; refuse it rather than silently
        # matching nothing.
        raise InputError(f"filter {field!r}: compare to a string, number or boolean, "
                         f"not {json.dumps(value)}")
    return [Condition(field, "eq", value)]


def _operator(field: str, op: Any, arg: Any) -> Condition:
    if op not in OPS:
        raise InputError(f"unknown filter operator {op!r} on {field!r}; "
                         f"use one of {', '.join(OPS)}")
    if op == "in":
        if not isinstance(arg, list | tuple) or not arg:
            raise InputError(f"filter {field!r} 'in' needs a non-empty list")
        _check_in(field, arg)
        return Condition(field, op, tuple(arg))
    if op in RANGE_OPS and not isinstance(arg, int | float | str):
        raise InputError(f"filter {field!r} {op!r} needs a number or string")
    return Condition(field, op, arg)


def _check_value(field: str, v: Any) -> None:
    """Values every backend can compare: 64-bit integers, finite floats, valid Unicode."""
    if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
        raise InputError(f"filter {field!r}: {v} is outside the 64-bit integer range")
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(f"filter {field!r}: {v} is not a finite number")
    if isinstance(v, str):
        require_unicode(v, f"filter {field!r}: a value")


def _check_in(field: str, values: Any) -> None:
    if len(values) > MAX_IN_VALUES:
        raise InputError(f"filter {field!r} 'in' has {len(values):,} values; the limit is "
                         f"{MAX_IN_VALUES:,}")
    for v in values:
        if isinstance(v, dict | list) or v is None:
            raise InputError(f"filter {field!r} 'in': values are strings, numbers or "
                             f"booleans, not {json.dumps(v)}")


def parse_cli_filters(items: list[str]) -> Filter:
    """CLI form: ``--filter '{"year": {"gte": 2000}}'`` or ``--filter category=a``."""
    spec: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if item.startswith("{"):
            try:
                loaded = json.loads(item)
            except json.JSONDecodeError as exc:
                raise InputError(f"--filter is not valid JSON: {exc.msg} at column {exc.colno}")\
                    from None
            if not isinstance(loaded, dict):
                raise InputError("--filter JSON must be an object")
            spec.update(loaded)
        elif "=" in item:
            key, _, raw = item.partition("=")
            spec[key.strip()] = _scalar(raw.strip())
        else:
            raise InputError(f"--filter {item!r}: use key=value or a JSON object")
    return parse_filter(spec)


def _scalar(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _compare(actual: Any, op: str, expected: Any) -> bool:
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        return bool(actual <= expected)
    except TypeError:
        return False


def matches(filt: Filter, metadata: Mapping[str, Any]) -> bool:
    for cond in filt.conditions:
        if cond.field not in metadata:
            return False
        actual = metadata[cond.field]
        if cond.op == "eq":
            ok = actual == cond.value
        elif cond.op == "in":
            ok = actual in cond.value
        else:
            ok = actual is not None and _compare(actual, cond.op, cond.value)
        if not ok:
            return False
    return True
