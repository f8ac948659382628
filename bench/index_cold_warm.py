"""Cold vs warm indexing of a BEIR corpus, in one run.

    python bench/index_cold_warm.py ../shared/data/scifact

cold: empty cache (the model built beforehand, so only embedding is timed);
warm re-run: the same collection again (unchanged content hashes: nothing re-embedded);
warm cache: a new collection over the same text (every vector from the embedding cache)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.ingest import index_documents
from semsearch.wiring import open_engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--home", type=Path, help="data folder to use (default: a new temp one)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
    engine = open_engine(Settings(home=home))
    try:
        engine.embedder.embedder.embed(["warm up"])  # build + load the model outside timing
        runs = {
            "cold": index_documents(engine, "cold", iter_documents(args.data)),
            "warm re-run (same collection)": index_documents(engine, "cold",
                                                             iter_documents(args.data)),
            "warm cache (new collection)": index_documents(engine, "warm",
                                                           iter_documents(args.data)),
        }
    finally:
        engine.close()
    cold = runs["cold"].seconds
    print("| run | seconds | vs cold | documents | chunks written | embedded | cache hits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        print(f"| {name} | {r.seconds:.2f} | {cold / r.seconds:.1f}x faster | {r.documents} | "
              f"{r.chunks} | {r.embedded} | {r.cache_hits} |")
    print(json.dumps({k: v.to_dict() for k, v in runs.items()}))


if __name__ == "__main__":
    main()
