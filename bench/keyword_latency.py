"""Keyword (and hybrid) search latency against LanceDB's native full-text search, same chunks,
same run.

    SEMSEARCH_HOME=<home with scifact indexed> python bench/keyword_latency.py \
        ../shared/data/scifact --collection scifact

LanceDB (``pip install lancedb``; a bench-only comparison, never a semsearch dependency) gets
the collection's own chunks (title + text, read from the store) in a temporary table with its
native FTS index (``FTS()``: its default English analysis, stemming and stop words on).
Both sides answer the 300 SciFact test queries with k=10: semsearch through the library entry
point the CLI and the API use (``services.search.search``, mode keyword: analysis, BM25, store
look-ups and hit hydration), LanceDB through ``table.search(q, query_type="fts").limit(10)``
materialised to a list. ``--mode hybrid`` compares hybrid search instead: LanceDB gets the
chunks' vectors too (from the embedding cache the indexing run filled) and answers
``table.search(query_type="hybrid").vector(qv).text(q).limit(10)`` (exact vector search, its
default RRF), both sides embedding the query with semsearch's model, the cache off.
Each side runs in its own process (their native thread pools and
allocators kept apart), warmed up first (50 queries, 2 s for background work such as the
keyword postings, then every query once); then the two alternate, round by round (the order
flips every round), each round every query once, and the table gives each side's median
p50 / p99 over the rounds and the ratio semsearch / LanceDB, so machine noise hits both
alike."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _queries(data: Path) -> list[str]:
    qrels = data / "qrels" / "test.tsv"
    wanted = {line.split("\t")[0] for line in qrels.open().readlines()[1:]}
    rows = [json.loads(line) for line in (data / "queries.jsonl").open() if line.strip()]
    return [r["text"] for r in rows if r["_id"] in wanted]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _chunks(collection: str, vectors: bool) -> tuple[list[int], list[str], Any]:
    """The collection's chunks as the keyword index sees them (title, then text) and, for a
    hybrid run, their vectors (through the embedding cache the indexing run filled)."""
    from semsearch.config import Settings
    from semsearch.core.types import InputType
    from semsearch.wiring import open_engine

    engine = open_engine(Settings())
    labels: list[int] = []
    texts: list[str] = []
    embed_texts: list[str] = []
    try:
        version = engine.collection(collection).version
        for batch in engine.store.iter_chunks(version):
            for sc in batch:
                labels.append(sc.label)
                texts.append(f"{sc.chunk.title}\n{sc.chunk.text}" if sc.chunk.title
                             else sc.chunk.text)
                embed_texts.append(sc.chunk.embed_text)
        vecs = engine.embedder.embed(embed_texts, InputType.PASSAGE) if vectors else None
    finally:
        engine.close()
    return labels, texts, vecs


def _lance_side(args: argparse.Namespace) -> Callable[[str], object]:
    import lancedb  # type: ignore[import-not-found, unused-ignore]
    import pyarrow as pa
    from lancedb.index import FTS  # type: ignore[import-not-found, unused-ignore]

    hybrid = args.mode == "hybrid"
    labels, texts, vecs = _chunks(args.collection, hybrid)
    columns: dict[str, Any] = {"label": labels, "text": texts}
    if hybrid:
        columns["vector"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.astype("float32").ravel()), vecs.shape[1])
    tmp = tempfile.mkdtemp(prefix="lance-kw-")
    table = lancedb.connect(tmp).create_table("chunks", pa.table(columns))
    table.create_index("text", config=FTS())
    print(f"LanceDB {lancedb.__version__}: {len(labels)} chunks, native FTS index"
          f"{', exact vector search, RRF' if hybrid else ''}", file=sys.stderr)
    if not hybrid:
        def lance(q: str) -> object:
            return table.search(q, query_type="fts").limit(args.k).to_list()

        return lance

    from semsearch.config import Settings
    from semsearch.core.types import InputType
    from semsearch.wiring import open_engine

    embedder = open_engine(Settings(cache_url="none")).embedder  # as semsearch embeds

    def lance_hybrid(q: str) -> object:
        qv = embedder.embed([q], InputType.QUERY)[0]
        return (table.search(query_type="hybrid").vector(qv).text(q)
                .limit(args.k).to_list())

    return lance_hybrid


def _semsearch_side(args: argparse.Namespace) -> Callable[[str], object]:
    from semsearch.config import Settings
    from semsearch.core.types import Mode
    from semsearch.services.search import SearchRequest, search
    from semsearch.wiring import open_engine

    engine = open_engine(Settings(cache_url="none"))

    mode = Mode(args.mode)

    def ours(q: str) -> object:
        return search(engine, args.collection, SearchRequest(q, mode=mode, k=args.k)).hits

    return ours


def _timed(run: Callable[[str], object], queries: list[str]) -> list[float]:
    lat = []
    for q in queries:
        t = time.perf_counter()
        run(q)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


def _serve(args: argparse.Namespace) -> None:
    """A child: one side, warmed up, timing every query once per line read from stdin."""
    queries = _queries(args.data)
    run = _lance_side(args) if args.child == "lancedb" else _semsearch_side(args)
    _timed(run, queries[:50])  # open, load, start any background work
    time.sleep(2.0)
    _timed(run, queries)
    print("ready", flush=True)
    for _ in sys.stdin:
        lat = _timed(run, queries)
        print(json.dumps([_pct(lat, 50), _pct(lat, 99)]), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of native threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=["keyword", "hybrid"], default="keyword",
                    help="hybrid: both sides embed the query with semsearch's model")
    ap.add_argument("--child", choices=["semsearch", "lancedb"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _serve(args)
        return
    sides = ("semsearch", "lancedb")
    children = {}
    for name in sides:
        children[name] = subprocess.Popen(
            [sys.executable, __file__, str(args.data), "--collection", args.collection,
             "--k", str(args.k), "--mode", args.mode, "--child", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = children[name].stdout.readline()  # type: ignore[union-attr]
        if ready.strip() != "ready":
            raise SystemExit(f"the {name} side did not start")
    rounds: dict[str, list[list[float]]] = {name: [] for name in sides}
    try:
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else sides[::-1]:
                child = children[name]
                child.stdin.write("go\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                rounds[name].append(json.loads(child.stdout.readline()))  # type: ignore[union-attr]
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for child in children.values():
            child.stdin.close()  # type: ignore[union-attr]
            child.wait()
    print(f"{args.mode}: {len(_queries(args.data))} SciFact test queries, k={args.k}, median of "
          f"{args.rounds} alternating rounds, each side in its own process")
    print("| side | p50 ms | p99 ms |")
    print("| --- | --- | --- |")
    med = {name: (_median([x[0] for x in v]), _median([x[1] for x in v]))
           for name, v in rounds.items()}
    for name, (p50, p99) in med.items():
        print(f"| {name} | {p50:.2f} | {p99:.2f} |")
    ours, base = med["semsearch"], med["lancedb"]
    print(f"| ratio semsearch / lancedb | {ours[0] / base[0]:.2f} | {ours[1] / base[1]:.2f} |")


if __name__ == "__main__":
    main()
