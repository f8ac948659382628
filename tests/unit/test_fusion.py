from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semsearch.core.fusion import fuse, normalize, rrf, weighted
from semsearch.errors import InputError

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
KEYWORD = [("c", 12.0), ("a", 3.0), ("d", 1.0)]


def test_rrf_matches_the_formula_and_keeps_components() -> None:
    fused = rrf({"dense": DENSE, "keyword": KEYWORD}, k=60)
    scores = {f.key: f.score for f in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 63)
    assert [f.key for f in fused][:2] == ["a", "c"]
    a = next(f for f in fused if f.key == "a")
    assert a.components["dense"].rank == 1 and a.components["keyword"].rank == 2
    assert a.components["keyword"].score == 3.0


def test_weighted_minmax_and_missing_counts_as_minimum() -> None:
    fused = weighted({"dense": DENSE, "keyword": KEYWORD}, "minmax",
                     weights={"dense": 0.5, "keyword": 0.5})
    scores = {f.key: f.score for f in fused}
    # a: dense (0.9-0.1)/0.8 = 1, keyword (3-1)/11
    assert scores["a"] == pytest.approx(0.5 * 1 + 0.5 * (2 / 11))
    assert scores["b"] == pytest.approx(0.5 * (0.7 / 0.8) + 0.0)
    assert scores["d"] == pytest.approx(0.0)


def test_zscore_normalization() -> None:
    z = normalize([1.0, 2.0, 3.0], "zscore")
    assert sum(z) == pytest.approx(0.0) and z[2] == pytest.approx(1.2247, rel=1e-3)
    assert normalize([5.0, 5.0], "minmax") == [1.0, 1.0]


def test_weights_change_the_winner() -> None:
    dense_heavy = weighted({"dense": DENSE, "keyword": KEYWORD}, "minmax",
                           weights={"dense": 1.0, "keyword": 0.0})
    keyword_heavy = weighted({"dense": DENSE, "keyword": KEYWORD}, "minmax",
                             weights={"dense": 0.0, "keyword": 1.0})
    assert dense_heavy[0].key == "a" and keyword_heavy[0].key == "c"


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="fusion"):
        fuse({"dense": DENSE}, "borda")
    with pytest.raises(InputError, match="weight"):
        fuse({"dense": DENSE, "keyword": KEYWORD}, "rrf", weights={"dense": 1.0})
    with pytest.raises(InputError, match=">= 0"):
        fuse({"dense": DENSE}, "minmax", weights={"dense": -1.0})
    with pytest.raises(InputError):
        rrf({"dense": DENSE}, k=0)


ranked_lists = st.lists(st.tuples(st.sampled_from("abcdefghij"),
                                  st.floats(-100, 100, allow_nan=False)), max_size=10,
                        unique_by=lambda t: t[0])


@given(ranked_lists, ranked_lists, st.sampled_from(["rrf", "minmax", "zscore"]))
def test_fusion_invariants(dense: list[tuple[str, float]], keyword: list[tuple[str, float]],
                           method: str) -> None:
    lists = {"dense": dense, "keyword": keyword}
    before = copy.deepcopy(lists)
    fused = fuse(lists, method)
    assert lists == before  # inputs untouched
    keys = [f.key for f in fused]
    assert sorted(keys) == sorted({k for k, _ in dense} | {k for k, _ in keyword})
    assert [f.score for f in fused] == sorted((f.score for f in fused), reverse=True)
    for f in fused:
        for name, comp in f.components.items():
            assert lists[name][comp.rank - 1][0] == f.key
    # Under RRF a key first in both lists can never lose to anything.
    if method == "rrf" and dense and keyword and dense[0][0] == keyword[0][0]:
        assert fused[0].key == dense[0][0]
