"""semsearch filters -> Milvus boolean expressions with exactly the semantics of filters.matches.

Milvus 2.3 compares JSON values differently from the reference, so each condition is rewritten
rather than passed through (all measured against a real Milvus 2.3.5 server):

* ``m["k"] == true`` matches only JSON true and ``m["k"] == 1`` matches 1 and 1.0 but not true,
  while the reference says True == 1 == 1.0: equality and ``in`` on 0/1 add the boolean.
* range operators skip booleans, while the reference orders them as 0/1: the boolean is added
  when it satisfies the bound.
* an ``in`` list mixing types crashes the query server-side: one list per type, ORed.
* an integer literal is compared with a JSON float after converting the literal to a double,
  and a float literal with a JSON integer after converting the integer: both exact only when
  the literal is a double exactly. Integral floats are therefore written as integer literals,
  and integers a double cannot hold (beyond 2**53, not a multiple of the spacing there) are
  refused, as is -2**63 (the parser rejects it) and any number of magnitude >= 2**63.
* a string range compares UTF-8 bytes, which is code point order, and matches strings only.

Keys and strings are written with ``json.dumps(..., ensure_ascii=False)``, which the Milvus
parser reads back unchanged; nothing else in an expression comes from user text."""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

from semsearch.core.filters import Condition, Filter
from semsearch.errors import InputError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_INT64_MAX = 2**63 - 1


def milvus_expression(filt: Filter, field: str = "metadata") -> str:
    """The filter as a Milvus expression over JSON field ``field``; "" for an empty filter.

    Raises InputError, naming the filter field, for a condition Milvus cannot evaluate exactly."""
    _check_ident(field)
    return " and ".join(f"({_condition(field, c)})" for c in filt.conditions)


def label_expression(labels: Sequence[int], pk: str = "label") -> str:
    """``label in [1, 2]``: select entities by their int64 primary key."""
    _check_ident(pk)
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int) or \
                not -2**63 < label <= _INT64_MAX:
            raise ValueError(f"a label is a 64-bit integer, not {label!r:.40}")
    return f"{pk} in [{', '.join(str(label) for label in labels)}]"


def _check_ident(name: str) -> None:
    if not _IDENT.match(name):
        raise ValueError(f"Milvus field name {name!r:.80} is not an identifier")


def _refuse(cond: Condition, why: str) -> InputError:
    return InputError(f"filter {cond.field!r}: the Milvus vector index cannot evaluate {why}")


def _condition(field: str, cond: Condition) -> str:
    key = f"{field}[{json.dumps(cond.field, ensure_ascii=False)}]"
    if cond.op == "eq":
        return _equals(key, cond, (cond.value,))
    if cond.op == "in":
        if not isinstance(cond.value, tuple | list) or not cond.value:
            raise _refuse(cond, "'in' without a non-empty list of values")
        return _equals(key, cond, tuple(cond.value))
    if cond.op not in _SYMBOLS:
        raise _refuse(cond, f"the operator {cond.op!r:.20}")
    value = cond.value
    if isinstance(value, str):
        return f"{key} {_SYMBOLS[cond.op]} {_string(cond, value)}"
    if not isinstance(value, int | float):
        raise _refuse(cond, f"a range bound {json.dumps(value, default=repr)[:60]}")
    number = _number(cond, value)
    parts = [f"{key} {_SYMBOLS[cond.op]} {number}"]
    # the reference orders booleans as 0/1; Milvus ranges skip them
    parts += [f"{key} == {_bool(b)}" for b in (True, False) if _PY_OPS[cond.op](int(b), value)]
    return " or ".join(parts)


def _equals(key: str, cond: Condition, values: tuple[Any, ...]) -> str:
    """Equality with any of ``values``, one Milvus list per type (mixed lists crash it)."""
    strings: list[str] = []
    ints: list[str] = []
    floats: list[str] = []
    bools: list[str] = []
    for v in values:
        if isinstance(v, str):
            lst, lit = strings, _string(cond, v)
        elif isinstance(v, int | float):
            lit = _number(cond, v)
            lst = floats if "." in lit or "e" in lit else ints
            # True == 1 == 1.0 and False == 0 to the reference; Milvus keeps them apart
            if v == 1 and "true" not in bools:
                bools.append("true")
            if v == 0 and "false" not in bools:
                bools.append("false")
        else:
            raise _refuse(cond, f"equality with {json.dumps(v, default=repr)[:60]}")
        if lit not in lst:
            lst.append(lit)
    parts = []
    for lst in (strings, ints, floats, bools):
        if len(lst) == 1:
            parts.append(f"{key} == {lst[0]}")
        elif lst:
            parts.append(f"{key} in [{', '.join(lst)}]")
    return " or ".join(parts)


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _string(cond: Condition, s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(cond, "a string that is not valid Unicode") from None
    return json.dumps(s, ensure_ascii=False)


def _number(cond: Condition, v: int | float) -> str:
    """A literal that Milvus compares exactly with JSON integers and floats alike."""
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _refuse(cond, f"the number {v}")
        if not v.is_integer():
            # |v| < 2**52 here: a JSON integer beyond 2**53 loses precision as a double but
            # keeps its order relative to v and is never equal to it
            return repr(v)
        if not -2**63 < v < 2**63:
            raise _refuse(cond, f"the number {v!r} exactly (Milvus compares numbers of "
                                "magnitude 2**63 and beyond as rounded doubles)")
        v = int(v)
    n = int(v)
    if not -2**63 < n <= _INT64_MAX or float(n) != n:
        raise _refuse(cond, f"the integer {n} exactly (Milvus compares it with JSON floats "
                            "as a rounded double; integers up to 2**53 are exact)")
    return str(n)
