"""Cold vs warm indexing of a BEIR corpus, per embedding-cache backend, in one run.

    python bench/index_cold_warm.py ../shared/data/scifact
    python bench/index_cold_warm.py ../shared/data/medline --caches sqlite,redis://127.0.0.1:6379/14

cold: empty cache (the model built beforehand, so only embedding is timed);
warm re-run: the same collection again (unchanged content hashes: nothing re-embedded);
warm cache: a new collection over the same text (every vector from the embedding cache).
A Redis database given here is flushed first."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.ingest import IndexReport, index_documents
from semsearch.wiring import open_engine


def run_one(data: Path, cache_url: str, home: Path) -> dict[str, IndexReport]:
    if cache_url.startswith("redis://"):
        import redis

        redis.Redis.from_url(cache_url).flushdb()
    engine = open_engine(Settings(home=home, cache_url="" if cache_url == "sqlite" else cache_url))
    try:
        engine.embedder.embedder.embed(["warm up"])  # build + load the model outside timing
        return {
            "cold": index_documents(engine, "cold", iter_documents(data)),
            "warm re-run (same collection)": index_documents(engine, "cold",
                                                             iter_documents(data)),
            "warm cache (new collection)": index_documents(engine, "warm",
                                                           iter_documents(data)),
        }
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--caches", default="sqlite",
                    help="comma list: sqlite, redis://host:port/db")
    ap.add_argument("--home", type=Path, help="data folder (default: a new temp one per cache)")
    args = ap.parse_args()
    print("| cache | run | seconds | vs cold | documents | chunks written | embedded | "
          "cache hits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    everything = {}
    for cache_url in args.caches.split(","):
        home = args.home or Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
        runs = run_one(args.data, cache_url, home)
        cold = runs["cold"].seconds
        for name, r in runs.items():
            print(f"| {cache_url.split('/')[0].rstrip(':')} | {name} | {r.seconds:.2f} | "
                  f"{cold / r.seconds:.1f}x faster | {r.documents} | {r.chunks} | "
                  f"{r.embedded} | {r.cache_hits} |")
        everything[cache_url] = {k: v.to_dict() for k, v in runs.items()}
    print(json.dumps(everything))


if __name__ == "__main__":
    main()
