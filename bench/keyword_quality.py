"""Keyword-search quality and speed on a BEIR-format dataset (e.g. SciFact).

    python bench/keyword_quality.py ../shared/data/scifact [--variants]

Indexes title + "\\n" + text per document in ``Fts5KeywordIndex``, runs the test queries with
k=100 and prints nDCG@10 (pytrec_eval ``ndcg_cut_10``), index build time and query p50/p99.
Baselines with the same analyzer: ``rank_bm25`` (BM25Okapi) and ``bm25s`` when installed.
``--variants`` also tries detail=column, stop-word lists and a separately weighted title column.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytrec_eval

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex, match_expression
from semsearch.core.analysis import (
    ENGLISH_STOP_WORDS,
    LUCENE_STOP_WORDS,
    Analyzer,
)

K = 100
Search = Callable[[str], list[tuple[int, float]]]
Corpus = list[tuple[str, str, str]]  # (doc id, title, text); a document's label is its position
Qrels = dict[str, dict[str, int]]


def load(root: Path) -> tuple[Corpus, dict[str, str], Qrels]:
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [(d["_id"], d.get("title", ""), d.get("text", "")) for d in map(json.loads, f)]
    qrels: Qrels = {}
    with open(root / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in qrels}
    return corpus, queries, qrels


def evaluate(name: str, search: Search, build_s: float, corpus: Corpus,
             queries: dict[str, str], qrels: Qrels) -> float:
    run: dict[str, dict[str, float]] = {}
    times = []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        hits = search(text)
        times.append(time.perf_counter() - t0)
        run[qid] = {corpus[label][0]: float(score) for label, score in hits}
    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    ndcg = float(np.mean([scores[q]["ndcg_cut_10"] for q in qrels if q in scores] +
                         [0.0] * sum(q not in scores for q in qrels)))
    ms = np.array(times) * 1e3
    print(f"{name:<58} nDCG@10={ndcg:.4f}  build={build_s:6.2f}s  "
          f"query p50={np.percentile(ms, 50):6.2f}ms p99={np.percentile(ms, 99):6.2f}ms")
    return ndcg


def fts5(tmp: Path, corpus: Corpus, analyzer: Analyzer,
         detail: str = "full") -> tuple[Search, float, Fts5KeywordIndex]:
    t0 = time.perf_counter()
    index = Fts5KeywordIndex(tmp / f"kw-{detail}-{id(analyzer)}.db", analyzer, detail=detail)
    items = [(i, f"{title}\n{text}") for i, (_, title, text) in enumerate(corpus)]
    for start in range(0, len(items), 1000):
        index.add(items[start:start + 1000])
    index.save(1)
    return (lambda q: index.search(q, K)), time.perf_counter() - t0, index


def fts5_title_weighted(tmp: Path, corpus: Corpus, analyzer: Analyzer,
                        title_weight: float) -> tuple[Search, float]:
    """Experiment only: title and text in separate columns, weighted in bm25()."""
    t0 = time.perf_counter()
    db = sqlite3.connect(str(tmp / f"kw-title-{title_weight}.db"))
    db.execute("CREATE VIRTUAL TABLE t USING fts5(title, body, tokenize='unicode61')")
    db.executemany("INSERT INTO t (rowid, title, body) VALUES (?, ?, ?)",
                   [(i, " ".join(analyzer.terms(ti)), " ".join(analyzer.terms(tx)))
                    for i, (_, ti, tx) in enumerate(corpus)])
    db.commit()
    sql = f"SELECT rowid, -bm25(t, {title_weight}, 1.0) AS s FROM t WHERE t MATCH ? " \
          "ORDER BY s DESC LIMIT ?"

    def search(q: str) -> list[tuple[int, float]]:
        expr = match_expression(analyzer.terms(q))
        return db.execute(sql, (expr, K)).fetchall() if expr else []

    return search, time.perf_counter() - t0


def rank_bm25_baseline(corpus: Corpus,
                       analyzer: Analyzer) -> tuple[Search, float] | None:
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        return None
    t0 = time.perf_counter()
    bm = BM25Okapi([analyzer.terms(f"{ti}\n{tx}") for _, ti, tx in corpus], k1=1.2, b=0.75)

    def search(q: str) -> list[tuple[int, float]]:
        s = bm.get_scores(list(dict.fromkeys(analyzer.terms(q))))
        top = np.argsort(-s)[:K]
        return [(int(i), float(s[i])) for i in top if s[i] > 0]

    return search, time.perf_counter() - t0


def bm25s_baseline(corpus: Corpus,
                   analyzer: Analyzer) -> tuple[Search, float] | None:
    try:
        import bm25s
    except ImportError:
        return None
    t0 = time.perf_counter()
    bm = bm25s.BM25(k1=1.2, b=0.75)
    bm.index([analyzer.terms(f"{ti}\n{tx}") for _, ti, tx in corpus], show_progress=False)
    vocab = bm.vocab_dict

    def search(q: str) -> list[tuple[int, float]]:
        terms = [t for t in dict.fromkeys(analyzer.terms(q)) if t in vocab]
        if not terms:
            return []
        docs, scores = bm.retrieve([terms], k=K, show_progress=False)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    return search, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--variants", action="store_true", help="also run configuration variants")
    args = ap.parse_args()
    corpus, queries, qrels = load(args.dataset)
    print(f"{args.dataset.name}: {len(corpus)} docs, {len(queries)} queries, k={K}")
    analyzer = Analyzer()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        search, build, index = fts5(tmp, corpus, analyzer)
        evaluate("Fts5KeywordIndex (detail=full, NLTK stop)", search, build, corpus, queries,
                 qrels)
        allowed = set(range(0, len(corpus), 2))
        for name, subset in (("allowed=50%", allowed), ("allowed=100 labels", set(range(100)))):

            def filtered(q: str, s: set[int] = subset) -> list[tuple[int, float]]:
                return index.search(q, K, s)

            evaluate(f"  filtered search ({name}; nDCG not comparable)", filtered, 0.0, corpus,
                     queries, qrels)
        for name, base in (("rank_bm25 BM25Okapi (same analyzer)",
                            rank_bm25_baseline(corpus, analyzer)),
                           ("bm25s (same analyzer)", bm25s_baseline(corpus, analyzer))):
            if base is None:
                print(f"{name}: not installed")
            else:
                evaluate(name, base[0], base[1], corpus, queries, qrels)
        if args.variants:
            search, build, _ = fts5(tmp, corpus, analyzer, detail="column")
            evaluate("Fts5 detail=column", search, build, corpus, queries, qrels)
            for stop_name, stop in (("Lucene-33", LUCENE_STOP_WORDS), ("none", frozenset())):
                search, build, _ = fts5(tmp, corpus, Analyzer(stop))
                evaluate(f"Fts5 stop words={stop_name}", search, build, corpus, queries, qrels)
            search, build, _ = fts5(tmp, corpus, Analyzer(ENGLISH_STOP_WORDS, stem=False))
            evaluate("Fts5 no stemming", search, build, corpus, queries, qrels)
            for weight in (1.0, 1.5, 2.0, 3.0):
                search, build = fts5_title_weighted(tmp, corpus, analyzer, weight)
                evaluate(f"Fts5 title column, weight {weight}", search, build, corpus,
                         queries, qrels)


if __name__ == "__main__":
    main()
