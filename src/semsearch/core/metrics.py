"""Retrieval quality measures with trec_eval semantics (pure functions, no I/O).

Definitions follow trec_eval 9.x (and so pytrec_eval, which wraps it):

* **Ranking** (``form_res_rels.c``): a query's documents are sorted by score descending, ties
  broken by document id descending (``strcmp(b, a)``). Code-point order of Python strings equals
  byte order of their UTF-8 encoding, so ``str`` comparison reproduces ``strcmp``.
* **Relevant**: a judgment with relevance > 0 (trec_eval's default ``relevance_level`` 1);
  unjudged documents are non-relevant.
* ``ndcg@k`` = trec_eval ``ndcg_cut_k``: graded gain = relevance (negative judgments gain 0),
  discount ``log2(rank + 1)``; the ideal ranking is every judgment sorted by gain, cut at k.
* ``mrr@k`` = trec_eval ``recip_rank`` computed on the run cut at k: 1 / rank of the first
  relevant document within the top k, else 0.
* ``recall@k`` = trec_eval ``recall_k``: relevant documents in the top k / all relevant.
* ``map@k`` = trec_eval ``map_cut_k``: sum of precision at the rank of each relevant document
  in the top k, divided by the number of relevant documents in the qrels (not in the top k).

:func:`evaluate` averages over the queries of the qrels that have at least one relevant
document; a query absent from the run scores 0 on every measure (``trec_eval -c``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping

from semsearch.errors import InputError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
MeasureFn = Callable[[Mapping[str, float], Mapping[str, int], int], float]

DEFAULT_MEASURES: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map@100")

_MEASURE_RE = re.compile(r"^\s*([a-z]+)\s*@\s*(\d+)\s*$")


def ranked(run_q: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then document id descending."""
    return [doc for doc, _ in sorted(run_q.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"cutoff k must be a positive integer, got {k!r}")


def _num_relevant(qrels_q: Mapping[str, int]) -> int:
    return sum(1 for rel in qrels_q.values() if rel > 0)


def ndcg_at(run_q: Mapping[str, float], qrels_q: Mapping[str, int], k: int) -> float:
    """nDCG@k (trec_eval ``ndcg_cut_k``): ``DCG@k / IDCG@k`` with
    ``DCG@k = sum_{i=1..k} gain_i / log2(i + 1)`` and ``gain = max(rel, 0)``; the ideal DCG
    ranks all judged documents by gain. 0 when the query has no positive judgment."""
    _check_k(k)
    ideal = sorted((rel for rel in qrels_q.values() if rel > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    if idcg == 0.0:
        return 0.0
    dcg = 0.0
    for i, doc in enumerate(ranked(run_q)[:k]):
        gain = qrels_q.get(doc, 0)
        if gain > 0:
            dcg += gain / math.log2(i + 2)
    return dcg / idcg


def mrr_at(run_q: Mapping[str, float], qrels_q: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k, else 0 (trec_eval
    ``recip_rank`` on the run truncated to k)."""
    _check_k(k)
    for i, doc in enumerate(ranked(run_q)[:k]):
        if qrels_q.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at(run_q: Mapping[str, float], qrels_q: Mapping[str, int], k: int) -> float:
    """Relevant documents retrieved in the top k / total relevant (trec_eval ``recall_k``);
    0 when the query has no relevant document."""
    _check_k(k)
    num_rel = _num_relevant(qrels_q)
    if num_rel == 0:
        return 0.0
    hits = sum(1 for doc in ranked(run_q)[:k] if qrels_q.get(doc, 0) > 0)
    return hits / num_rel


def map_at(run_q: Mapping[str, float], qrels_q: Mapping[str, int], k: int) -> float:
    """Average precision cut at k (trec_eval ``map_cut_k``): the sum of precision@i over the
    ranks i <= k holding a relevant document, divided by the total number of relevant documents
    in the qrels; 0 when there is none."""
    _check_k(k)
    num_rel = _num_relevant(qrels_q)
    if num_rel == 0:
        return 0.0
    hits = 0
    total = 0.0
    for i, doc in enumerate(ranked(run_q)[:k]):
        if qrels_q.get(doc, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / num_rel


MEASURES: dict[str, MeasureFn] = {
    "ndcg": ndcg_at,
    "mrr": mrr_at,
    "recall": recall_at,
    "map": map_at,
}


def parse_measure(name: str) -> tuple[str, int]:
    """``"nDCG@10"`` -> ``("ndcg", 10)``. Raises :class:`InputError` for an unknown measure or
    a missing / non-positive cutoff."""
    match = _MEASURE_RE.match(name.lower()) if isinstance(name, str) else None
    known = ", ".join(f"{m}@k" for m in MEASURES)
    if match is None or match.group(1) not in MEASURES:
        raise InputError(f"unknown measure {name!r}; expected one of {known} (e.g. ndcg@10)")
    k = int(match.group(2))
    if k < 1:
        raise InputError(f"measure {name!r}: cutoff must be at least 1")
    return match.group(1), k


def per_query(run: Run, qrels: Qrels,
              measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, dict[str, float]]:
    """Scores per query (query id -> measure name -> value) for every query of ``qrels`` with
    at least one relevant document; queries missing from ``run`` score 0."""
    names = list(measures)
    parsed = [(name, *parse_measure(name)) for name in names]
    if not parsed:
        raise InputError("no measures requested")
    empty: dict[str, float] = {}
    out: dict[str, dict[str, float]] = {}
    for qid, qrels_q in qrels.items():
        if _num_relevant(qrels_q) == 0:
            continue
        run_q = run.get(qid, empty)
        out[qid] = {name: MEASURES[m](run_q, qrels_q, k) for name, m, k in parsed}
    return out


def evaluate(run: Run, qrels: Qrels,
             measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure (keyed by the name as given) over the qrels queries with at least
    one relevant document (see :func:`per_query`); all zeros when there is no such query."""
    names = list(measures)
    scores = per_query(run, qrels, names)
    n = len(scores)
    return {name: (sum(s[name] for s in scores.values()) / n if n else 0.0) for name in names}
