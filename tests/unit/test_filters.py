from __future__ import annotations

import pytest

from semsearch.core.filters import matches, parse_cli_filters, parse_filter
from semsearch.errors import InputError


def test_parse_and_match() -> None:
    f = parse_filter({"category": "bio", "year": {"gte": 2000, "lt": 2010},
                      "tag": {"in": ["x", "y"]}})
    assert matches(f, {"category": "bio", "year": 2005, "tag": "y"})
    assert not matches(f, {"category": "bio", "year": 2010, "tag": "y"})
    assert not matches(f, {"category": "bio", "year": 2005, "tag": "z"})
    assert not matches(f, {"category": "bio", "tag": "y"})  # missing field never matches
    assert not matches(f, {"category": "bio", "year": "2005", "tag": "y"})  # type mismatch


def test_list_means_in() -> None:
    f = parse_filter({"lang": ["en", "de"]})
    assert f.conditions[0].op == "in"


@pytest.mark.parametrize("spec,msg", [
    ({"x": {"near": 1}}, "unknown filter operator"),
    ({"x": {"in": []}}, "non-empty list"),
    ({"x": {}}, "empty object"),
    ({"": 1}, "a name of 1-128"),
    ({"x" * 129: 1}, "a name of 1-128"),
    ({"x": []}, "empty list matches nothing"),
    ({"x": {"in": [1, None]}}, "not null"),
    ({"x": 10**30}, "64-bit"),
    ({"x": {"gte": float("inf")}}, "not a finite number"),
    ({"x": list(range(1001))}, "limit is 1,000"),
    ({f"k{i}": 1 for i in range(1001)}, "more than 100 conditions"),
    ({f"k{i}": list(range(900)) for i in range(6)}, "5,400 values in all"),
    ({"x;drop": 1}, "name"),
    ({"x": None}, "not null"),
])
def test_bad_filters(spec: dict[str, object], msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        parse_filter(spec)


def test_cli_forms() -> None:
    f = parse_cli_filters(["category=bio", '{"year": {"gte": 2000}}', "n=3"])
    assert matches(f, {"category": "bio", "year": 2001, "n": 3})
    with pytest.raises(InputError, match="JSON"):
        parse_cli_filters(["{not json"])
    with pytest.raises(InputError, match="key=value"):
        parse_cli_filters(["justaword"])
