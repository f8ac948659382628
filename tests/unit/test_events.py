"""The change-event format: what parses, what is poison and why, the shipped JSON Schema
agreeing with the parser, and per-id ordering by version within a batch."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semsearch.core.events import ChangeEvent, latest, parse_event, parse_version, schema
from semsearch.errors import InputError

LIMIT = 1000

VALID: list[dict[str, Any]] = [
    {"op": "upsert", "id": "p-1", "text": "hello", "title": "T", "metadata": {"a": 1},
     "version": 17},
    {"op": "upsert", "id": "p-1", "text": "hello", "version": "2026-11-30T12:00:00Z"},
    {"op": "upsert", "id": "é", "text": "x", "title": None, "metadata": None, "version": -3},
    {"op": "upsert", "id": "p", "text": "x", "version": "2026-11-30T12:00:00.5+01:00"},
    {"op": "delete", "id": "p-1", "version": 18},
    {"op": "delete", "id": "p-1", "version": 18, "extra": "ignored"},
]
INVALID: list[tuple[Any, str]] = [
    ([1, 2], "not an object"),
    ({"id": "a", "version": 1}, "'op'"),
    ({"op": "merge", "id": "a", "version": 1}, "'op'"),
    ({"op": "delete", "version": 1}, "no 'id'"),
    ({"op": "delete", "id": "  ", "version": 1}, "no 'id'"),
    ({"op": "delete", "id": 7, "version": 1}, "no 'id'"),
    ({"op": "delete", "id": "a"}, "no 'version'"),
    ({"op": "delete", "id": "a", "version": True}, "'version'"),
    ({"op": "delete", "id": "a", "version": 1.5}, "'version'"),
    ({"op": "delete", "id": "a", "version": 2**63}, "64 bits"),
    ({"op": "delete", "id": "a", "version": "yesterday"}, "RFC 3339"),
    ({"op": "delete", "id": "a", "version": "2026-11-30T12:00:00"}, "offset"),
    ({"op": "delete", "id": "a", "version": "2026-11-30"}, "RFC 3339"),
    ({"op": "upsert", "id": "a", "version": 1}, "no 'text'"),
    ({"op": "upsert", "id": "a", "text": " \n", "version": 1}, "no 'text'"),
    ({"op": "upsert", "id": "a", "text": 5, "version": 1}, "no 'text'"),
    ({"op": "upsert", "id": "a", "text": "x", "title": 3, "version": 1}, "'title'"),
    ({"op": "upsert", "id": "a", "text": "x", "metadata": [1], "version": 1}, "'metadata'"),
    ({"op": "delete", "id": "x" * 513, "version": 1}, "characters"),
]


@pytest.mark.parametrize("event", VALID)
def test_valid_events_parse_and_match_the_schema(event: dict[str, Any]) -> None:
    jsonschema.validate(event, schema())
    parsed = parse_event(json.dumps(event).encode(), LIMIT)
    assert parsed.id == event["id"] and parsed.op == event["op"]
    if parsed.op == "upsert":
        doc = parsed.document()
        assert doc.text == event["text"] and doc.title == (event.get("title") or "")
        assert dict(doc.metadata) == (event.get("metadata") or {})


@pytest.mark.parametrize(("event", "reason"), INVALID)
def test_invalid_events_say_why_and_the_schema_refuses_them(event: Any, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse_event(json.dumps(event).encode(), LIMIT)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, schema(),
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 5000 + b"]" * 5000, "not JSON"),
    (b'{"op":"delete","id":"\\ud800","version":1}', "surrogate"),
    (json.dumps({"op": "upsert", "id": "a", "text": "x" * (LIMIT + 1), "version": 1}).encode(),
     "limit is 1,000"),
    (b" " * (4 * LIMIT + 65_537), "bytes; the limit"),
], ids=["syntax", "utf8", "deep", "surrogate", "long-text", "huge"])
def test_poison_bodies_are_input_errors(body: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse_event(body, LIMIT)


def test_timestamps_compare_in_time_whatever_the_offset() -> None:
    assert parse_version("2026-11-30T12:00:00+01:00") == parse_version("2026-11-30T11:00:00Z")
    assert parse_version("2026-11-30T11:00:00.000001Z") > parse_version("2026-11-30T11:00:00Z")
    assert parse_version("1970-01-01T00:00:01Z") == 1_000_000


def _ev(i: str, v: int, op: str = "upsert") -> ChangeEvent:
    return ChangeEvent(op, i, v, text="t") if op == "upsert" else ChangeEvent("delete", i, v)  # type: ignore[arg-type]


def test_latest_keeps_the_newest_per_id_and_an_update_then_delete_ends_deleted() -> None:
    events = [(0, _ev("a", 1)), (1, _ev("a", 2, "delete")), (2, _ev("b", 5)), (3, _ev("b", 4)),
              (4, _ev("c", 1))]
    best, superseded = latest(events)
    assert {i: (p, e.op) for i, (p, e) in best.items()} == {
        "a": (1, "delete"), "b": (2, "upsert"), "c": (4, "upsert")}
    assert sorted(superseded) == [0, 3]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(-5, 5)), max_size=30),
       st.randoms())
def test_latest_does_not_depend_on_delivery_order(pairs: list[tuple[str, int]],
                                                  rnd: Any) -> None:
    events = [(p, _ev(i, v)) for p, (i, v) in enumerate(pairs)]
    shuffled = events[:]
    rnd.shuffle(shuffled)
    a, sa = latest(events)
    b, sb = latest(shuffled)
    assert {i: e.version for i, (_, e) in a.items()} == {i: e.version for i, (_, e) in b.items()}
    assert len(sa) == len(sb) == len(events) - len(a)
