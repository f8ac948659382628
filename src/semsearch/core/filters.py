"""Metadata filters: equals, in, and ranges, shared by all three search modes.

A filter is parsed once from the user's mapping into frozen conditions; stores compile those
into their own query language and :func:`matches` is the reference semantics they must agree
with (the contract tests check it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semsearch.errors import InputError

RANGE_OPS = ("gt", "gte", "lt", "lte")
OPS = ("eq", "in", *RANGE_OPS)


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
    conds: list[Condition] = []
    for field, value in spec.items():
        if not isinstance(field, str) or not field or not field.replace("_", "").replace(
            "-", ""
        ).replace(".", "").isalnum():
            raise InputError(f"filter field {field!r} must be a non-empty name of letters, "
                             "digits, '_', '-' or '.'")
        if isinstance(value, Mapping):
            if not value:
                raise InputError(f"filter on {field!r} is an empty object")
            for op, arg in value.items():
                if op not in OPS:
                    raise InputError(f"unknown filter operator {op!r} on {field!r}; "
                                     f"use one of {', '.join(OPS)}")
                if op == "in" and (not isinstance(arg, list | tuple) or not arg):
                    raise InputError(f"filter {field!r} 'in' needs a non-empty list")
                if op in RANGE_OPS and not isinstance(arg, int | float | str):
                    raise InputError(f"filter {field!r} {op!r} needs a number or string")
                conds.append(Condition(field, op, tuple(arg) if op == "in" else arg))
        elif isinstance(value, list | tuple):
            conds.append(Condition(field, "in", tuple(value)))
        elif value is None:
            # JSON null compares unequal to everything in SQL; refuse it rather than
            # silently matching nothing.
            raise InputError(f"filter {field!r}: compare to a string, number or boolean, "
                             f"not {json.dumps(value)}")
        else:
            conds.append(Condition(field, "eq", value))
    return Filter(tuple(conds))


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
