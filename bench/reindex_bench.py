"""Re-indexing a real collection: dry-run estimate vs actual, and the eval gate, in one run.

    python bench/reindex_bench.py ../shared/data/medline --model paraphrase-MiniLM-L3-v2

1. index the BEIR corpus cold with the default model (the baseline time);
2. ``reindex --dry-run`` to the other model: estimated seconds, then the real re-index with
   ``--gate`` on the corpus's labelled queries: actual seconds and nDCG@10 old vs new;
3. a chunker change on the default model (half the chunk size): how many chunks the cache
   already held, and its time against the cold index.
Each step in a fresh engine over one home; the model is loaded before timing."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.ingest import index_documents
from semsearch.services.versions import plan_reindex, reindex
from semsearch.wiring import open_engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", default="paraphrase-MiniLM-L3-v2")
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--models", type=Path, default=Path(".semsearch/models"))
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="semsearch-reindex-bench-"))
    (home / "models").symlink_to(args.models.resolve(), target_is_directory=True)
    engine = open_engine(Settings(home=home))
    try:
        engine.embedder.embedder.embed(["warm up"])
        started = time.perf_counter()
        base = index_documents(engine, "c", iter_documents(args.data))
        cold = time.perf_counter() - started
        print(f"cold index, default model: {base.documents} docs, {base.chunks} chunks, "
              f"{cold:.1f} s")

        plan = plan_reindex(engine, "c", args.model)
        started = time.perf_counter()
        rep = reindex(engine, "c", model=args.model, gate=args.data,
                      tolerance=args.tolerance)
        took = time.perf_counter() - started
        gate_s = took - rep.build["seconds"]
        print(f"reindex to {args.model}: estimated {plan.estimated_seconds} s for "
              f"{plan.tokens_to_embed} tokens; build took {rep.build['seconds']:.1f} s "
              f"(estimate / actual = {(plan.estimated_seconds or 0) / rep.build['seconds']:.2f})"
              f"; gate {gate_s:.1f} s")
        assert rep.gate is not None
        for mode, r in rep.gate.modes.items():
            print(f"  {mode:<8} nDCG@10 {r['old_ndcg@10']:.4f} -> {r['new_ndcg@10']:.4f} "
                  f"({r['delta']:+.4f})")
        print(f"  gate passed: {rep.gate.passed}; swapped: {rep.swapped}; {rep.message}")

        half = 128  # the default chunk size is 256
        plan2 = plan_reindex(engine, "c", chunker={"max_tokens": half, "overlap_tokens": 16})
        started = time.perf_counter()
        rep2 = reindex(engine, "c", chunker={"max_tokens": half, "overlap_tokens": 16})
        took2 = time.perf_counter() - started
        print(f"chunker change to {half} tokens: {plan2.chunks} chunks, {plan2.cached_chunks} "
              f"already cached ({plan2.cached_chunks / max(plan2.chunks, 1):.0%}); "
              f"{rep2.build['embedded']} embedded; {took2:.1f} s = {cold / took2:.2f}x faster "
              f"than the cold index (estimated {plan2.estimated_seconds} s)")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
