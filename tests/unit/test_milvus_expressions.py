"""Filters -> Milvus expressions: the exact strings and the refusals (no server; the
equivalence with filters.matches against a real Milvus is tests/e2e/test_milvus_filters.py)."""

from __future__ import annotations

from typing import Any

import pytest

from semsearch.adapters.milvus.expressions import label_expression, milvus_expression
from semsearch.core.filters import Condition, Filter, parse_filter
from semsearch.errors import InputError


def expr(spec: dict[str, Any]) -> str:
    return milvus_expression(parse_filter(spec))


def test_empty_filter_is_empty_string() -> None:
    assert milvus_expression(Filter()) == ""
    assert milvus_expression(parse_filter(None)) == ""


@pytest.mark.parametrize("spec,want", [
    ({"c": "bio"}, '(metadata["c"] == "bio")'),
    ({"n": 2}, '(metadata["n"] == 2)'),
    ({"n": 1}, '(metadata["n"] == 1 or metadata["n"] == true)'),
    ({"n": 1.0}, '(metadata["n"] == 1 or metadata["n"] == true)'),
    ({"n": True}, '(metadata["n"] == 1 or metadata["n"] == true)'),
    ({"n": False}, '(metadata["n"] == 0 or metadata["n"] == false)'),
    ({"n": -0.0}, '(metadata["n"] == 0 or metadata["n"] == false)'),
    ({"n": 2.5}, '(metadata["n"] == 2.5)'),
    ({"n": 1e-05}, '(metadata["n"] == 1e-05)'),
    ({"n": 2**53}, '(metadata["n"] == 9007199254740992)'),
    ({"n": 2**62}, '(metadata["n"] == 4611686018427387904)'),
    ({"n": float(2**60)}, '(metadata["n"] == 1152921504606846976)'),
])
def test_equals(spec: dict[str, Any], want: str) -> None:
    assert expr(spec) == want


def test_in_splits_types_and_adds_booleans() -> None:
    assert expr({"t": ["a", 1, 2.5, "b", True, 3, 0.0, 1.0]}) == (
        '(metadata["t"] in ["a", "b"] or metadata["t"] in [1, 3, 0] or '
        'metadata["t"] == 2.5 or metadata["t"] in [true, false])')
    assert expr({"t": {"in": ["x"]}}) == '(metadata["t"] == "x")'
    assert expr({"t": [2, 3]}) == '(metadata["t"] in [2, 3])'


@pytest.mark.parametrize("spec,want", [
    ({"y": {"gte": 2000}}, 'metadata["y"] >= 2000'),
    ({"y": {"gt": 0}}, 'metadata["y"] > 0 or metadata["y"] == true'),
    ({"y": {"gte": 0}}, 'metadata["y"] >= 0 or metadata["y"] == true or metadata["y"] == false'),
    ({"y": {"lt": 0.5}}, 'metadata["y"] < 0.5 or metadata["y"] == false'),
    ({"y": {"lte": 1}}, 'metadata["y"] <= 1 or metadata["y"] == true or metadata["y"] == false'),
    ({"y": {"lt": -1}}, 'metadata["y"] < -1'),
    ({"y": {"gt": True}}, 'metadata["y"] > 1'),
    ({"y": {"gte": True}}, 'metadata["y"] >= 1 or metadata["y"] == true'),
    ({"y": {"lt": "b"}}, 'metadata["y"] < "b"'),
    ({"y": {"gte": ""}}, 'metadata["y"] >= ""'),
])
def test_ranges(spec: dict[str, Any], want: str) -> None:
    assert expr(spec) == f"({want})"


def test_conditions_are_anded_in_parentheses() -> None:
    assert expr({"a": "x", "y": {"gte": 2, "lt": 5}}) == (
        '(metadata["a"] == "x") and (metadata["y"] >= 2) and '
        '(metadata["y"] < 5 or metadata["y"] == true or metadata["y"] == false)')


def test_field_parameter() -> None:
    assert milvus_expression(parse_filter({"a": "x"}), field="meta_2") == '(meta_2["a"] == "x")'
    with pytest.raises(ValueError, match="identifier"):
        milvus_expression(parse_filter({"a": "x"}), field='m["x"] or 1')


@pytest.mark.parametrize("value,literal", [
    ('q"uo', r'"q\"uo"'),
    ("back\\slash", r'"back\\slash"'),
    ('"] or true or m["', r'"\"] or true or m[\""'),
    ("line\nbreak\x00nul", r'"line\nbreak\u0000nul"'),
    ("é😀日本", '"é😀日本"'),
])
def test_strings_are_escaped(value: str, literal: str) -> None:
    assert expr({"s": value}) == f'(metadata["s"] == {literal})'
    assert expr({"s": {"gt": value}}) == f'(metadata["s"] > {literal})'


def test_keys_are_quoted_including_unicode_dots_and_dashes() -> None:
    assert expr({"a.b-c_d": 1.5}) == '(metadata["a.b-c_d"] == 1.5)'
    assert expr({"Jahr": 1.5, "日本": "x", "é": "y"}) == (
        '(metadata["Jahr"] == 1.5) and (metadata["日本"] == "x") and (metadata["é"] == "y")')


@pytest.mark.parametrize("spec,what", [
    ({"n": 2**53 + 1}, "integer 9007199254740993 exactly"),
    ({"n": {"gte": 2**63 - 1}}, "integer 9223372036854775807"),
    ({"n": [1, -2**63]}, "integer -9223372036854775808"),
    ({"n": {"lt": 2.0**63}}, r"9\.223372036854776e\+18"),
    ({"n": 1e300}, r"1e\+300"),
    ({"n": {"eq": None}}, "equality with null"),
    ({"n": {"eq": [1]}}, r"equality with \[1\]"),
    ({"n": {"eq": {"x": 1}}}, "equality with"),
])
def test_refusals_name_the_field_and_milvus(spec: dict[str, Any], what: str) -> None:
    with pytest.raises(InputError, match=r"filter 'n': the Milvus vector index cannot "
                                         rf"evaluate .*{what}"):
        expr(spec)


@pytest.mark.parametrize("cond", [
    Condition("x", "near", 1),
    Condition("x", "gt", None),
    Condition("x", "gt", [1]),
    Condition("x", "eq", float("nan")),
    Condition("x", "in", ()),
    Condition("x", "eq", "\ud800"),
])
def test_refuses_conditions_parse_filter_would_not_build(cond: Condition) -> None:
    with pytest.raises(InputError, match="filter 'x': the Milvus vector index cannot"):
        milvus_expression(Filter((cond,)))


def test_label_expression() -> None:
    assert label_expression([3, 1, 2]) == "label in [3, 1, 2]"
    assert label_expression([7], pk="id") == "id in [7]"
    for bad in ([True], [2**63], ["1"]):
        with pytest.raises(ValueError, match="64-bit"):
            label_expression(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifier"):
        label_expression([1], pk="label or 1")
