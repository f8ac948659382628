"""The Milvus expressions select exactly what filters.matches selects, on a real Milvus.

A few hundred entities carry metadata mixing integers (also beyond 2**53 and 2**64), floats,
booleans, strings with quotes, backslashes, NUL, non-ASCII and emoji, null, arrays, objects and
missing keys; hand-picked and seeded random filters are translated with milvus_expression and
the labels a strong-consistency query returns must equal the labels matches() accepts. A
filter the translator refuses must be one it cannot express exactly (InputError naming Milvus).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections

from semsearch.adapters.milvus.expressions import label_expression, milvus_expression
from semsearch.core.filters import Filter, matches, parse_filter
from semsearch.errors import InputError

pytestmark = pytest.mark.milvus

DIM = 8
KEYS = ["a", "n", "s", "é.x-1", "日本"]
SCALARS: list[Any] = [
    0, 1, 2, 3, -1, -3, 2**53 - 1, 2**53, 2**53 + 1, 2**62, 2**62 + 1, 2**63 - 1, -2**63,
    2**63, 2**64 - 1, 10**30, -10**30,
    0.0, -0.0, 0.5, 1.0, 2.0, 2.5, -2.5, 1e-05, float(2**53), 2.0**62, 2.0**63, 1e30, 1e300,
    -1e300, True, False,
    "", "a", "A", "ab", "b", "B", "1", "true", 'q"uo', "back\\slash", "é", "e", "😀", "a\x00b",
    "a\x00", "line\nx", "日本", '"] or true or metadata["',
]
# parse_filter takes 64-bit integers only; metadata may hold any
FILTER_SCALARS = [v for v in SCALARS if not isinstance(v, int) or -2**63 <= v < 2**63]
OTHERS: list[Any] = [None, [1], ["a"], [], [1, "a"], {"x": 1}, {}, {"a": "a"}]


def random_metadata(rng: random.Random) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in KEYS:
        roll = rng.random()
        if roll < 0.2:
            continue  # missing key
        meta[key] = rng.choice(OTHERS) if roll < 0.3 else rng.choice(SCALARS)
    return meta


def random_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for key in rng.sample(KEYS, rng.choice([1, 1, 1, 2])):
        kind = rng.random()
        if kind < 0.3:
            spec[key] = rng.choice(FILTER_SCALARS)
        elif kind < 0.55:
            spec[key] = rng.sample(FILTER_SCALARS, rng.randint(1, 6))
        else:
            ops = rng.sample(["gt", "gte", "lt", "lte"], rng.choice([1, 1, 2]))
            spec[key] = {op: rng.choice(FILTER_SCALARS) for op in ops}
    return spec


HAND_PICKED: list[dict[str, Any]] = [
    {"a": 1}, {"a": 1.0}, {"a": True}, {"a": False}, {"a": 0}, {"a": -0.0}, {"a": 2},
    {"a": "1"}, {"a": "true"}, {"a": 'q"uo'}, {"a": "back\\slash"}, {"a": "😀"},
    {"a": "a\x00b"}, {"a": '"] or true or metadata["'}, {"日本": "日本"}, {"é.x-1": 1},
    {"a": [1, "a", True, 2.5]}, {"a": [0, False]}, {"a": [2**53, 2.0**62]},
    {"a": {"gt": 0}}, {"a": {"gte": 0}}, {"a": {"lt": 1}}, {"a": {"lte": 1}},
    {"a": {"gt": True}}, {"a": {"gte": False}}, {"a": {"lt": 0.5}}, {"a": {"gt": -2.5}},
    {"a": {"gt": 2**53}}, {"a": {"gte": 2**53}}, {"a": {"lt": 2**53}}, {"a": {"gt": 2.0**62}},
    {"a": {"gte": 1e-05}}, {"a": {"gt": 2**62}}, {"a": {"lt": -2**53}},
    {"a": {"gt": ""}}, {"a": {"gte": ""}}, {"a": {"gt": "a"}}, {"a": {"lt": "b", "gte": "a"}},
    {"a": {"gt": "a\x00"}}, {"a": {"lt": "😀"}}, {"a": {"gt": "é"}},
    {"a": {"gt": 0, "lt": 3}, "s": {"gte": "a"}}, {"a": 1, "n": 1},
]


def _entities(n: int) -> list[dict[str, Any]]:
    rng = random.Random(20240611)
    metas = [random_metadata(rng) for _ in range(n)]
    # every key's interesting values at least once
    metas += [{key: v} for v in SCALARS + OTHERS for key in ("a",)]
    return metas


@pytest.fixture(scope="module")
def loaded(milvus_server: Any) -> Iterator[tuple[Collection, list[dict[str, Any]]]]:
    alias = f"filters-{uuid.uuid4().hex[:8]}"
    connections.connect(alias=alias, uri=milvus_server.uri)
    name = f"filters_{uuid.uuid4().hex[:8]}"
    schema = CollectionSchema([
        FieldSchema("label", DataType.INT64, is_primary=True),
        FieldSchema("doc_id", DataType.VARCHAR, max_length=64),
        FieldSchema("metadata", DataType.JSON),
        FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
    ])
    col = Collection(name, schema, using=alias, consistency_level="Strong")
    metas = _entities(320)
    rng = random.Random(7)
    col.insert([list(range(len(metas))), [f"d{i}" for i in range(len(metas))], metas,
                [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in metas]])
    col.create_index("vector", {"index_type": "HNSW", "metric_type": "IP",
                                "params": {"M": 8, "efConstruction": 64}})
    col.load()
    # what Milvus stored is what matches() sees (big integers, -0.0 and NUL survive the trip)
    stored = {r["label"]: r["metadata"] for r in col.query("label >= 0",
                                                           output_fields=["metadata"])}
    assert [json.dumps(stored[i]) for i in range(len(metas))] == [json.dumps(m) for m in metas]
    yield col, metas
    col.release()
    col.drop()
    connections.disconnect(alias)


def milvus_labels(col: Collection, filt: Filter) -> set[int]:
    rows = col.query(milvus_expression(filt), output_fields=["label"],
                     consistency_level="Strong")
    return {r["label"] for r in rows}


def reference_labels(metas: list[dict[str, Any]], filt: Filter) -> set[int]:
    return {i for i, m in enumerate(metas) if matches(filt, m)}


def check(col: Collection, metas: list[dict[str, Any]], spec: dict[str, Any]) -> bool:
    """True when translated and equal to the reference; False when refused (as it may)."""
    filt = parse_filter(spec)
    try:
        milvus_expression(filt)
    except InputError as exc:
        assert "the Milvus vector index cannot evaluate" in str(exc)
        return False
    got, want = milvus_labels(col, filt), reference_labels(metas, filt)
    assert got == want, (spec, milvus_expression(filt),
                         [metas[i] for i in sorted(got ^ want)][:5])
    return True


@pytest.mark.parametrize("spec", HAND_PICKED, ids=[json.dumps(s, ensure_ascii=False)[:40]
                                                   for s in HAND_PICKED])
def test_hand_picked_filters(loaded: tuple[Collection, list[dict[str, Any]]],
                             spec: dict[str, Any]) -> None:
    col, metas = loaded
    assert check(col, metas, spec)


def test_random_filters(loaded: tuple[Collection, list[dict[str, Any]]]) -> None:
    col, metas = loaded
    rng = random.Random(1234)
    specs = [random_spec(rng) for _ in range(400)]
    # strong-consistency queries mostly wait for the server's clock: overlap the waits
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda spec: check(col, metas, spec), specs))
    # most filters are translated: the refusals are the big numbers Milvus rounds
    assert sum(results) >= 250, sum(results)


def test_refused_big_integer_would_be_wrong(
        loaded: tuple[Collection, list[dict[str, Any]]]) -> None:
    """The evidence behind a refusal: the plain expression selects the wrong entities."""
    col, metas = loaded
    filt = parse_filter({"a": 2**53 + 1})
    with pytest.raises(InputError, match=r"'a'.*Milvus vector index cannot evaluate"):
        milvus_expression(filt)
    rows = col.query(f'metadata["a"] == {2**53 + 1}', output_fields=["label"])
    assert {r["label"] for r in rows} > reference_labels(metas, filt)  # 2.0**53 comes too


def test_filtered_search_returns_k(loaded: tuple[Collection, list[dict[str, Any]]]) -> None:
    col, metas = loaded
    for spec in ({"a": {"gt": 0}}, {"s": ["a", "b", "😀"]}, {"n": {"lt": "b"}}):
        filt = parse_filter(spec)
        want = reference_labels(metas, filt)
        assert len(want) >= 5, spec
        hits = col.search([[0.1] * DIM], "vector", {"metric_type": "IP", "params": {"ef": 64}},
                          limit=5, expr=milvus_expression(filt), consistency_level="Strong")
        labels = [h.id for h in hits[0]]
        assert len(labels) == 5 and set(labels) <= want, (spec, labels)


def test_label_expression_selects_labels(
        loaded: tuple[Collection, list[dict[str, Any]]]) -> None:
    col, _ = loaded
    rows = col.query(label_expression([3, 1, 2, 99999]), output_fields=["label"])
    assert {r["label"] for r in rows} == {1, 2, 3}
