"""Query latency per mode on an indexed collection, query embedding included.

    semsearch index ../shared/data/scifact --collection scifact
    python bench/query_latency.py ../shared/data/scifact --collection scifact

Each mode runs every test query once with a cold query cache (the embedding cache is
bypassed for queries by giving this process an empty cache), so dense and hybrid times
include embedding the query. Dense-exact is the baseline the ratios are against."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from semsearch.adapters.sources import beir
from semsearch.config import Settings
from semsearch.core.types import Mode
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    queries = list(beir.load_queries(args.data).values())
    engine = open_engine(Settings(cache_url="none"))
    try:
        search(engine, args.collection, SearchRequest("warm up", k=args.k))  # load + open
        rows = []
        for mode in (Mode.KEYWORD, Mode.DENSE, Mode.HYBRID):
            lat = []
            for q in queries:
                t = time.perf_counter()
                search(engine, args.collection, SearchRequest(q, mode=mode, k=args.k))
                lat.append((time.perf_counter() - t) * 1000)
            rows.append((mode.value, np.percentile(lat, 50), np.percentile(lat, 99)))
    finally:
        engine.close()
    print(f"{len(queries)} queries, k={args.k}, query embedding included for dense/hybrid")
    print("| mode | p50 ms | p99 ms |")
    print("| --- | --- | --- |")
    for name, p50, p99 in rows:
        print(f"| {name} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
