"""nDCG@10 and latency of hybrid search with and without re-ranking, in the same run.

    python bench/rerank.py [../shared/data/scifact] [--home /tmp/rerank_bench_home]
        [--candidates 50] [--top 20] [--limit 0]

SciFact's 300 labelled test queries. Each query is searched once (hybrid, the default
MiniLM model, ``--candidates`` hits), and the same list is scored twice: as fused (its top
10) and after ``services.rerank.rerank_hits`` re-scored its first ``--top`` hits with the
local re-ranker (all-mpnet-base-v2, cosine; SEMSEARCH_RERANKER=local). Latency "without" is
the search alone; "with" adds the re-ranking. The re-ranker's passage vectors go through an
in-memory cache keyed like the embedding cache, empty at the start: the first pass measures
passages mostly seen for the first time (each one embedded by mpnet), and a second pass over
the same queries (skipped with ``--no-warm``) measures the steady state of a collection
whose passage vectors are already cached, where only the query is embedded (queries never
come from the cache). The re-ranker is the one ``SEMSEARCH_RERANKER=local`` builds
(``BiEncoderReranker`` over ``MpnetEmbedder``), with that cache split made explicit. The
query embedding of the search itself is never cached (``cache_url=none`` for the
measurement), so "without" includes the MiniLM query embedding as a first-time query would.

The collection is indexed into ``--home`` when it is not already there."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from semsearch.adapters.caches.lru import LruEmbeddingCache
from semsearch.adapters.caches.sqlite import NullEmbeddingCache
from semsearch.adapters.rerankers.local import BiEncoderReranker
from semsearch.adapters.rerankers.mpnet import MpnetEmbedder
from semsearch.config import Settings
from semsearch.core.metering import percentiles
from semsearch.core.metrics import ndcg_at
from semsearch.core.types import Hit, InputType, Mode
from semsearch.errors import NotFoundError
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.services.ingest import index_path
from semsearch.services.rerank import rerank_hits
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))
COLLECTION = "scifact"


def load(data: Path) -> tuple[int, dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in qrels}
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        documents = sum(1 for _ in f)
    return documents, queries, qrels


def ensure_indexed(home: Path, data: Path, documents: int) -> None:
    engine = open_engine(Settings(home=home))
    try:
        try:
            have = engine.collection(COLLECTION).info.documents
        except NotFoundError:
            have = 0
        if have == documents:
            print(f"{COLLECTION}: {have} documents already indexed in {home}")
            return
        print(f"indexing {data} into {COLLECTION} in {home}", flush=True)
        t0 = time.perf_counter()
        report = index_path(engine, COLLECTION, data)
        print(f"indexed in {time.perf_counter() - t0:.0f}s: {report.to_dict()['documents']}")
    finally:
        engine.close()


class PassagesCached:
    """The re-ranker's embedder for the measurement: passages through ``cached`` (the
    in-memory cache), queries always through the model, as a new query would be."""

    def __init__(self, model: Any, cached: CachedEmbedder) -> None:
        self.model = model
        self.cached = cached

    @property
    def identity(self) -> Any:
        return self.model.identity

    def embed(self, texts: Any, input_type: InputType) -> Any:
        if input_type is InputType.QUERY:
            return self.model.embed(texts, input_type)
        return self.cached.embed(texts, input_type)


def ndcg10(hits: list[Hit], qrels_q: dict[str, int]) -> float:
    run = {h.doc_id: float(len(hits) - i) for i, h in enumerate(hits)}
    return ndcg_at(run, qrels_q, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=SHARED / "data" / "scifact")
    ap.add_argument("--home", type=Path, default=Path("/tmp/rerank_bench_home"))
    ap.add_argument("--candidates", type=int, default=50, help="hits the search returns")
    ap.add_argument("--top", type=int, default=20, help="hits the re-ranker re-scores")
    ap.add_argument("--limit", type=int, default=0, help="only the first N queries")
    ap.add_argument("--no-warm", dest="warm", action="store_false",
                    help="skip the second (cached passages) pass")
    args = ap.parse_args()

    documents, queries, qrels = load(args.data)
    items = list(queries.items())[:args.limit or None]
    ensure_indexed(args.home, args.data, documents)
    settings = Settings(home=args.home, cache_url="none", reranker="local")
    engine = open_engine(settings)
    cache = LruEmbeddingCache(NullEmbeddingCache(), max_items=1_000_000)
    model = MpnetEmbedder(settings.models_dir, threads=settings.embedder_threads,
                          batch_size=settings.embed_batch_size)
    reranker = BiEncoderReranker(PassagesCached(model, CachedEmbedder(model, cache)),
                                 on_close=model.close)
    engine.reranker_factory = lambda: reranker
    try:
        engine.collection(COLLECTION)
        warm_up = search(engine, COLLECTION, SearchRequest(query="warm up", k=5))
        rerank_hits(engine, "warm up", list(warm_up.hits), 1)  # builds/loads mpnet
        print(f"{len(items)} queries, hybrid k={args.candidates}, re-rank top {args.top}, "
              f"{engine.reranker.identity if engine.reranker else None}", flush=True)
        base_ms: list[float] = []
        rr_ms: list[float] = []
        warm_ms: list[float] = []
        base_ndcg: list[float] = []
        rr_ndcg: list[float] = []
        started = time.perf_counter()
        lists: list[tuple[str, list[Hit], dict[str, int]]] = []
        for n, (qid, text) in enumerate(items, start=1):
            t0 = time.perf_counter()
            hits = list(search(engine, COLLECTION, SearchRequest(
                query=text, mode=Mode.HYBRID, k=args.candidates)).hits)
            t1 = time.perf_counter()
            reranked = rerank_hits(engine, text, hits, args.top)
            t2 = time.perf_counter()
            base_ms.append((t1 - t0) * 1000)
            rr_ms.append((t2 - t0) * 1000)
            base_ndcg.append(ndcg10(hits, qrels[qid]))
            rr_ndcg.append(ndcg10(reranked, qrels[qid]))
            lists.append((text, hits, qrels[qid]))
            if n % 50 == 0:
                print(f"  {n}/{len(items)} {time.perf_counter() - started:.0f}s", flush=True)
        if args.warm:
            for (text, hits, _), base in zip(lists, base_ms, strict=True):
                t0 = time.perf_counter()
                rerank_hits(engine, text, hits, args.top)
                warm_ms.append(base + (time.perf_counter() - t0) * 1000)
    finally:
        engine.close()

    b, r = statistics.fmean(base_ndcg), statistics.fmean(rr_ndcg)
    wins = sum(x > y for x, y in zip(rr_ndcg, base_ndcg, strict=True))
    losses = sum(x < y for x, y in zip(rr_ndcg, base_ndcg, strict=True))
    print(f"\nnDCG@10  hybrid {b:.4f}   + re-rank top {args.top} {r:.4f}   "
          f"ratio {r / b:.3f} ({r - b:+.4f}); queries better {wins}, worse {losses}")
    rows = [("hybrid", base_ms), ("hybrid + re-rank, passages new", rr_ms)]
    if warm_ms:
        rows.append(("hybrid + re-rank, passages cached", warm_ms))
    p50b, p99b = percentiles(base_ms)["p50"], percentiles(base_ms)["p99"]
    for name, ms in rows:
        p50, p99 = percentiles(ms)["p50"], percentiles(ms)["p99"]
        print(f"{name:36s} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  "
              f"(x{p50 / p50b:.1f} / x{p99 / p99b:.1f})")


if __name__ == "__main__":
    main()
