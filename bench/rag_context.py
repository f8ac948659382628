"""Context recall of the answer path's context assembly against plain top-k truncation.

    python bench/rag_context.py [../shared/data/scifact] [--home /tmp/rag_bench_home]

SciFact's labelled test queries (qrels score > 0 is relevant). Each query is retrieved
once, as ``services.ask.prepare`` retrieves (hybrid, chunks, ``group=False``, 3*k
candidates), and the same ranked chunks are then assembled both ways at every budget:

- ``pack``: semsearch's assembly, exactly as ``prepare`` calls it (near-duplicates dropped,
  at most k chunks, packed in rank order into the budget, merged per document);
- ``truncate_top_k``: the baseline, the top k chunks in rank order concatenated until the
  budget, the last one cut; ``--wide`` also runs it over all 3*k candidates.

Per method and budget: the fraction of queries whose context holds at least one relevant
document (context recall), the mean fraction of a query's relevant documents it holds, the
mean distinct documents, the mean tokens of the sources as the prompt renders them
(``core.prompt.render_source``, counted with ``TokenEstimate``, the same for both), the
share of contexts whose rendered sources exceed the budget, and the assembly's p50 time.
"recall, uncut chunks" counts a document only when a chunk of it is there whole (a chunk
cut at the budget still names its document however little of it is left).
The first ``--check`` queries are also run through ``prepare`` itself, to show the measured
``pack`` is the service's. The collection is indexed into ``--home`` if it is not there yet
(the embedding cache in the home makes a rebuild fast); queries are embedded with no cache,
so retrieval latency includes the query's embedding."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from semsearch.config import Settings
from semsearch.core.context import PackedContext, Passage, TokenEstimate, pack, truncate_top_k
from semsearch.core.prompt import render_source
from semsearch.core.types import Mode
from semsearch.errors import NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.ask import AskRequest, prepare
from semsearch.services.ingest import index_path
from semsearch.services.search import MAX_K, SearchRequest, search
from semsearch.wiring import open_engine

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))
Qrels = dict[str, set[str]]  # query id -> relevant doc ids (score > 0)
Assembler = Callable[[Sequence[Passage], int, Callable[[str], int]], PackedContext]


@dataclass
class Tally:
    """Per-query measurements of one assembly method at one budget."""

    hit: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)  # counting uncut chunks only
    covered: list[float] = field(default_factory=list)
    docs: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    over: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def add(self, docs: set[str], relevant: set[str], tokens: int, seconds: float,
            budget: int = 0, whole: set[str] | None = None) -> None:
        found = len(docs & relevant)
        self.whole.append(float(bool((docs if whole is None else whole) & relevant)))
        self.over.append(float(budget > 0 and tokens > budget))
        self.hit.append(float(found > 0))
        self.covered.append(found / len(relevant))
        self.docs.append(float(len(docs)))
        self.tokens.append(float(tokens))
        self.ms.append(seconds * 1000)


def load(data: Path) -> tuple[int, dict[str, str], Qrels]:
    """Corpus size, the test queries that have relevant documents, and their qrels."""
    qrels: Qrels = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, set()).add(did)
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in qrels}
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        documents = sum(1 for line in f if line.strip())
    return documents, queries, qrels


def ensure_indexed(home: Path, collection: str, data: Path, documents: int) -> None:
    """Index ``data`` into ``collection`` unless it already holds every document."""
    engine = open_engine(Settings(home=home))
    try:
        try:
            have = engine.collection(collection).info.documents
        except NotFoundError:
            have = 0
        if have == documents:
            print(f"{collection}: {have} documents already indexed in {home}")
            return
        print(f"indexing {data} into {collection} in {home} ({have} of {documents} there)")
        t0 = time.perf_counter()
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            if done[0] // 500 != (done[0] - n) // 500 or done[0] == documents:
                print(f"  {done[0]}/{documents} documents, {time.perf_counter() - t0:.0f}s",
                      flush=True)

        report = index_path(engine, collection, data, on_progress=progress)
        print(f"indexed in {time.perf_counter() - t0:.1f}s: {report.to_dict()}")
    finally:
        engine.close()


def uncut_docs(ctx: PackedContext, ends: dict[str, int]) -> set[str]:
    """Documents with a source that holds at least one of its chunks whole: a chunk cut
    at the budget may be a title and a few words, and still names its document."""
    return {s.doc_id for s in ctx.sources
            if max(e for _, e in s.spans) >= min(ends[c] for c in s.chunk_ids)}


def rendered_tokens(ctx: PackedContext, count: Callable[[str], int]) -> int:
    """Tokens the sources take in the prompt, delimiters and titles included."""
    if not ctx.sources:
        return 0
    return count("\n\n".join(render_source(s.number, s.doc_id, s.title, s.text)
                             for s in ctx.sources))


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, nargs="?", default=SHARED / "data" / "scifact",
                    help="a BEIR folder (default $SEMSEARCH_SHARED/data/scifact)")
    ap.add_argument("--home", type=Path, default=Path("/tmp/rag_bench_home"),
                    help="the semsearch home the collection is indexed into and kept in")
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=None, help="chunks packed (default ask_k)")
    ap.add_argument("--budgets", default="500,1000,2000",
                    help="context token budgets, comma-separated")
    ap.add_argument("--limit", type=int, default=0, help="only the first N queries (0 = all)")
    ap.add_argument("--check", type=int, default=20,
                    help="queries also run through services.ask.prepare to compare")
    ap.add_argument("--variants", action="store_true",
                    help="also pack without spread, without fill, and without both")
    ap.add_argument("--wide", action="store_true",
                    help="also truncate over all 3*k candidates, not only the top k")
    args = ap.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"{args.data} is not a BEIR folder (no corpus.jsonl)")
    try:
        budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        raise SystemExit(f"--budgets must be integers, got {args.budgets!r}") from None
    if args.k is not None and not 1 <= args.k <= 100:
        raise SystemExit(f"--k must be between 1 and 100, got {args.k}")
    if not budgets or min(budgets) < 64:
        raise SystemExit("--budgets: each budget must be at least 64 tokens")

    started = time.perf_counter()
    documents, queries, qrels = load(args.data)
    items = list(queries.items())[:args.limit or None]
    ensure_indexed(args.home, args.collection, args.data, documents)

    # Queries: no embedding cache, so each retrieval embeds its query as a first ask would.
    engine: Engine = open_engine(Settings(home=args.home, cache_url="none"))
    try:
        k = args.k or engine.settings.ask_k
        depth = min(3 * k, MAX_K)
        count = TokenEstimate(engine.embedder.tokenizer)
        methods: dict[str, Assembler] = {
            "pack (semsearch)": lambda ps, b, c: pack(ps, b, c, max_chunks=k),
            f"truncate_top_k (top {k})": lambda ps, b, c: truncate_top_k(ps[:k], b, c)}
        if args.variants:  # what each of pack's choices is worth, on the same retrieval
            methods["pack, no spread"] = lambda ps, b, c: pack(ps, b, c, max_chunks=k,
                                                               spread=False)
            methods["pack, no fill"] = lambda ps, b, c: pack(ps, b, c, max_chunks=k,
                                                             fill=False)
            methods["pack, neither (first version)"] = lambda ps, b, c: pack(
                ps, b, c, max_chunks=k, spread=False, fill=False)
        if args.wide:
            methods[f"truncate_top_k (all {depth})"] = truncate_top_k
        tallies = {(m, b): Tally() for m in methods for b in budgets}
        ceiling = {f"top {k} chunks": Tally(), f"all {depth} candidates": Tally()}
        retrieve_ms: list[float] = []
        agree = checked = 0
        dropped: dict[int, list[tuple[int, int]]] = {b: [] for b in budgets}  # dupes, skipped
        search(engine, args.collection, SearchRequest("warm up", k=1))  # model + indexes
        print(f"{len(items)} queries, k={k}, {depth} candidates, budgets {budgets}")
        for i, (qid, question) in enumerate(items, start=1):
            relevant = qrels[qid]
            t0 = time.perf_counter()
            found = search(engine, args.collection, SearchRequest(
                query=question, mode=Mode.HYBRID, k=depth, group=False))
            retrieve_ms.append((time.perf_counter() - t0) * 1000)
            passages = [Passage(h.doc_id, h.chunk_id, h.ordinal, h.start, h.end, h.text,
                                h.title, h.score, h.metadata) for h in found.hits]
            ends = {p.chunk_id: p.end for p in passages}
            for name, ps in ((f"top {k} chunks", passages[:k]),
                             (f"all {depth} candidates", passages)):
                ceiling[name].add({p.doc_id for p in ps}, relevant, 0, 0.0)
            for budget in budgets:
                for name, assemble in methods.items():
                    t0 = time.perf_counter()
                    ctx = assemble(passages, budget, count)
                    spent = time.perf_counter() - t0
                    tallies[name, budget].add({s.doc_id for s in ctx.sources}, relevant,
                                              rendered_tokens(ctx, count), spent, budget,
                                              uncut_docs(ctx, ends))
                    if name == "pack (semsearch)":
                        dropped[budget].append((ctx.near_duplicates, ctx.over_budget))
                    if name == "pack (semsearch)" and i <= args.check:
                        served = prepare(engine, AskRequest(
                            question, args.collection, k=k, max_context_tokens=budget))
                        checked += 1
                        agree += [(s.doc_id, s.chunk_ids) for s in served.context.sources] \
                            == [(s.doc_id, s.chunk_ids) for s in ctx.sources]
            if i % 50 == 0 or i == len(items):
                print(f"  {i}/{len(items)} queries, {time.perf_counter() - started:.0f}s",
                      flush=True)
    finally:
        engine.close()

    print(f"\nprepare() agreement: {agree}/{checked} (query, budget) pairs give the same "
          "sources as the measured pack")
    print(f"retrieval (hybrid, {depth} chunks, query embedded) p50 {p50(retrieve_ms):.2f} ms\n")
    print("| method | budget | context recall | recall, uncut chunks | relevant covered | "
          "distinct docs | tokens | over budget | assembly p50 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for budget in budgets:
        for name in methods:
            t = tallies[name, budget]
            print(f"| {name} | {budget} | {mean(t.hit):.4f} | {mean(t.whole):.4f} | "
                  f"{mean(t.covered):.4f} | "
                  f"{mean(t.docs):.2f} | {mean(t.tokens):.0f} | {mean(t.over):.1%} | "
                  f"{p50(t.ms):.2f} |")
    for name, t in ceiling.items():
        print(f"| retrieved, no budget: {name} | - | {mean(t.hit):.4f} | - | "
              f"{mean(t.covered):.4f} | {mean(t.docs):.2f} | - | - | - |")
    for budget, pairs in dropped.items():
        print(f"pack at {budget}: near-duplicates dropped per query "
              f"{mean([float(d) for d, _ in pairs]):.2f} (queries with any: "
              f"{sum(d > 0 for d, _ in pairs)}), chunks skipped as over budget "
              f"{mean([float(o) for _, o in pairs]):.2f}")
    print(f"\n{len(items)} queries in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
