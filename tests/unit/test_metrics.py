"""semsearch.core.metrics against hand-computed values and the pytrec_eval oracle."""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semsearch.core.metrics import (
    evaluate,
    map_at,
    mrr_at,
    ndcg_at,
    parse_measure,
    per_query,
    ranked,
    recall_at,
)
from semsearch.errors import InputError

pytrec_eval = pytest.importorskip("pytrec_eval")

from tests.conftest import DATA  # noqa: E402  (SEMSEARCH_SHARED, else ../shared beside the repo)

TOL = 1e-9
OURS = ("ndcg@1", "ndcg@3", "ndcg@10", "mrr@10", "recall@10", "recall@100", "map@10", "map@100")
THEIRS = {"ndcg@1": "ndcg_cut_1", "ndcg@3": "ndcg_cut_3", "ndcg@10": "ndcg_cut_10",
          "recall@10": "recall_10", "recall@100": "recall_100", "map@10": "map_cut_10",
          "map@100": "map_cut_100"}
TREC_MEASURES = {"ndcg_cut.1,3,10", "recall.10,100", "map_cut.10,100", "recip_rank"}


def _trec_cmp(a: tuple[str, float], b: tuple[str, float]) -> int:
    """trec_eval's comp_sim_docno: score descending, then strcmp(docno_b, docno_a)."""
    if a[1] != b[1]:
        return -1 if a[1] > b[1] else 1
    ab, bb = a[0].encode(), b[0].encode()
    return (bb > ab) - (bb < ab)


def _cut(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Top k of each query in trec_eval order, written independently of metrics.ranked."""
    return {q: dict(sorted(docs.items(), key=functools.cmp_to_key(_trec_cmp))[:k])
            for q, docs in run.items()}


def _assert_matches_oracle(run: dict[str, dict[str, float]],
                           qrels: dict[str, dict[str, int]]) -> None:
    ours = per_query(run, qrels, OURS)
    full = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    cut10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_cut(run, 10))
    judged = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    assert sorted(ours) == sorted(judged)
    for q in judged:
        for name in OURS:
            if name == "mrr@10":
                want = cut10[q]["recip_rank"] if q in cut10 else 0.0
                # independent cross-check: the first relevant is in the top 10 iff rr >= 1/10
                rr = full[q]["recip_rank"] if q in full else 0.0
                assert math.isclose(want, rr if rr >= 0.1 - 1e-12 else 0.0, abs_tol=TOL)
            else:
                want = full[q][THEIRS[name]] if q in full else 0.0
            assert ours[q][name] == pytest.approx(want, abs=TOL), (q, name)
    means = evaluate(run, qrels, OURS)
    for name in OURS:
        want = sum(ours[q][name] for q in judged) / len(judged) if judged else 0.0
        assert means[name] == pytest.approx(want, abs=TOL)


def _synthetic(seed: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(200)]  # "d10" < "d9" as strings: exercises tie order
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for qi in range(50):
        q = f"q{qi}"
        judged = rng.sample(docs, rng.randint(1, 30))
        qrels[q] = {d: rng.choice([0, 0, 1, 1, 1, 2, 3, -1]) for d in judged}
        if qi % 10 == 7:
            continue  # judged but not retrieved: scores 0
        retrieved = rng.sample(docs, rng.randint(0, 150))
        run[q] = {d: round(rng.random(), 1) for d in retrieved}  # few distinct scores: ties
    run["unjudged"] = {"d1": 1.0}
    qrels["no_relevant"] = {"d1": 0, "d2": -1}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_synthetic_with_ties(seed: int) -> None:
    run, qrels = _synthetic(seed)
    _assert_matches_oracle(run, qrels)


@settings(max_examples=200, deadline=None, database=None)
@given(
    run_q=st.dictionaries(st.sampled_from("abcdefghij"), st.sampled_from([0.0, 0.5, 1.0, -2.0])),
    qrels_q=st.dictionaries(st.sampled_from("abcdefghijkl"), st.integers(-1, 3), min_size=1),
)
def test_oracle_property(run_q: dict[str, float], qrels_q: dict[str, int]) -> None:
    _assert_matches_oracle({"q": run_q}, {"q": qrels_q})


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]{3,}", text.lower()))


@pytest.mark.parametrize("name", ["scifact", "cranfield"])
def test_oracle_real_collection(name: str) -> None:
    """Term-overlap run (integer scores: many ties) over a real collection's test qrels."""
    from semsearch.adapters.sources.beir import iter_corpus, load_qrels, load_queries

    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    qrels = load_qrels(path)
    queries = load_queries(path)
    index: dict[str, list[str]] = {}
    for doc in iter_corpus(path):
        for tok in _tokens(f"{doc.title} {doc.text}"):
            index.setdefault(tok, []).append(doc.id)
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        overlap = Counter(d for tok in _tokens(text) for d in index.get(tok, ()))
        run[qid] = {d: float(n) for d, n in overlap.most_common(300)}
    _assert_matches_oracle(run, qrels)
    scores = evaluate(run, qrels)
    assert 0.0 < scores["ndcg@10"] < 1.0


# --- hand-computed cases -------------------------------------------------------------------

RUN_Q = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}  # ranking: a, c, b, d (tie -> id descending)
QRELS_Q = {"c": 2, "d": 1, "e": 1}


def test_ranked_breaks_ties_by_doc_id_descending() -> None:
    assert ranked(RUN_Q) == ["a", "c", "b", "d"]
    assert ranked({"d10": 1.0, "d9": 1.0, "d100": 1.0}) == ["d9", "d100", "d10"]


def test_hand_computed() -> None:
    assert mrr_at(RUN_Q, QRELS_Q, 10) == 0.5
    assert mrr_at(RUN_Q, QRELS_Q, 1) == 0.0
    assert recall_at(RUN_Q, QRELS_Q, 2) == pytest.approx(1 / 3)
    assert recall_at(RUN_Q, QRELS_Q, 10) == pytest.approx(2 / 3)
    # relevant at ranks 2 and 4: (1/2 + 2/4) / 3 relevant
    assert map_at(RUN_Q, QRELS_Q, 10) == pytest.approx((0.5 + 0.5) / 3)
    assert map_at(RUN_Q, QRELS_Q, 3) == pytest.approx(0.5 / 3)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(RUN_Q, QRELS_Q, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at({"c": 1.0, "d": 0.5, "e": 0.1}, QRELS_Q, 3) == pytest.approx(1.0)


def test_nothing_relevant_retrieved_and_empty_run() -> None:
    for fn in (ndcg_at, mrr_at, recall_at, map_at):
        assert fn({"x": 1.0, "y": 0.5}, QRELS_Q, 10) == 0.0
        assert fn({}, QRELS_Q, 10) == 0.0
        assert fn(RUN_Q, {"a": 0}, 10) == 0.0  # no relevant judgment at all
    assert evaluate({}, {"q": QRELS_Q}) == {m: 0.0 for m in
                                             ("ndcg@10", "mrr@10", "recall@100", "map@100")}
    assert evaluate({"q": RUN_Q}, {}) == {m: 0.0 for m in
                                          ("ndcg@10", "mrr@10", "recall@100", "map@100")}


def test_evaluate_averages_over_judged_queries_only() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": {"a": 1.0}, "q3": {"c": 1.0}, "extra": {"a": 1.0}}
    assert evaluate(run, qrels, ["mrr@10", "recall@1"]) == {"mrr@10": 0.5, "recall@1": 0.5}


def test_parse_measure() -> None:
    assert parse_measure("ndcg@10") == ("ndcg", 10)
    assert parse_measure(" nDCG @ 5 ") == ("ndcg", 5)
    assert parse_measure("MAP@100") == ("map", 100)
    for bad in ("ndcg", "bleu@10", "ndcg@0", "ndcg@-1", "ndcg@x", "", "recall@10@2"):
        with pytest.raises(InputError, match="measure"):
            parse_measure(bad)
    with pytest.raises(InputError, match="unknown measure 'p@10'"):
        evaluate({}, {"q": {"a": 1}}, ["p@10"])
    with pytest.raises(InputError):
        ndcg_at({}, {}, 0)
