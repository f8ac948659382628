"""The embedded vector index and Milvus side by side, in one run.

    unshare -n sh -c 'ip link set lo up &&
        exec python bench/milvus_backend.py ../shared/data/scifact'

(Run plainly, the script re-executes itself that way: Milvus listens on every interface, so it
only ever runs in a private network namespace where loopback is the only one.)

One Milvus 2.3.5 standalone (tests/milvus_server.py, default time tick 200 ms) and, per
backend, a fresh home; the documents, chunks and keyword index stay in SQLite in the home
either way, only the dense vectors move. Measured:

1. index time of SciFact through `semsearch index`, the embedding cache warm and shared (a
   warm-up index into a throwaway home fills it first; that run is the cold figure), the
   backends alternating E, M, M, E; for Milvus also the time until its HNSW is built;
2. search latency p50/p99 in-process through ``services.search.search`` (query embedding
   included, no embedding cache) for dense, hybrid and a filtered dense search, and the
   vector index's own ``search`` on pre-embedded queries (no model), backends alternating
   round by round so machine noise hits them alike;
3. recall@10 of each vector index against exact inner product (numpy ``Q @ V.T`` over every
   chunk vector of the collection, read back through the cache), unfiltered and filtered;
4. nDCG@10 through `semsearch eval` (a sanity check: it should barely move).

"embedded HNSW" is the embedded index with ``ann_threshold=0``: SciFact (9,987 chunks) is
below the default 20,000, where the embedded index searches exactly.

The filtered searches use a copy of the corpus with metadata ``{"part": crc32(id) % 4}``
(SciFact has no metadata), filter ``part == 0`` (about a quarter of the documents)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cli_runs import semsearch

HERE = Path(__file__).resolve().parent
STARTED = time.monotonic()
K = 10
COLLECTION = "scifact"
TAGGED = "scifact_tagged"
FILTER = {"part": 0}
BACKENDS = ("embedded", "embedded HNSW", "Milvus")


def say(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the CLI runs ------------------------------------------------------------------------

def base_env(cache_url: str, threads: int) -> dict[str, str]:
    """This process's environment without any SEMSEARCH_* setting but the model cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SEMSEARCH_") or k == "SEMSEARCH_MODEL_CACHE_DIR"}
    return {**env, "SEMSEARCH_NO_PROGRESS": "1", "SEMSEARCH_CACHE_URL": cache_url,
            "SEMSEARCH_EMBEDDER_THREADS": str(threads)}


def timed_index(env: dict[str, str], source: Path, collection: str) -> tuple[float, int]:
    t = time.perf_counter()
    report = json.loads(semsearch(env, "index", str(source), "-c", collection, "--json").stdout)
    return time.perf_counter() - t, int(report["chunks"])


def milvus_env(env: dict[str, str], uri: str, prefix: str) -> dict[str, str]:
    return {**env, "SEMSEARCH_VECTOR_INDEX": "milvus://" + uri.split("://", 1)[1],
            "SEMSEARCH_MILVUS_PREFIX": prefix}


def wait_until_indexed(uri: str, prefix: str, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until Milvus has built HNSW over every row of the collections named with
    ``prefix`` and its query node serves indexed segments; say what it serves."""
    from pymilvus import Collection, MilvusClient, utility

    client = MilvusClient(uri=uri, timeout=30)
    alias = client._using  # the ORM alias MilvusClient registered
    deadline = time.monotonic() + timeout
    try:
        names = [n for n in client.list_collections() if n.startswith(prefix)]
        info: dict[str, Any] = {}
        for name in names:
            # Rows still in growing segments (a run under 1,000 chunks is not flushed)
            # count in neither figure: nothing to wait for then.
            flushed = Collection(name, using=alias).num_entities
            while True:
                prog = utility.index_building_progress(name, using=alias)
                segs = utility.get_query_segment_info(name, using=alias)
                served = sum(s.num_rows for s in segs if s.index_name)
                if (prog["indexed_rows"] >= prog["total_rows"] and served >= flushed) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            info[name] = {"flushed_rows": flushed, "indexed_rows": prog["indexed_rows"],
                          "segments": len(segs),
                          "indexed_segments": sum(1 for s in segs if s.index_name)}
        return info
    finally:
        client.close()


def drop_milvus(uri: str, prefix: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=30)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                for alias in client.describe_collection(name)["aliases"]:
                    client.drop_alias(alias)
                client.release_collection(name)
                client.drop_collection(name)
    finally:
        client.close()


def tagged_copy(data: Path, out: Path) -> Path:
    """SciFact's corpus with a small integer field to filter on (it has no metadata)."""
    path = out / "scifact_tagged.jsonl"
    with (data / "corpus.jsonl").open() as src, path.open("w") as dst:
        for line in src:
            if line.strip():
                doc = json.loads(line)
                doc["metadata"] = {**doc.get("metadata", {}),
                                   "part": zlib.crc32(doc["_id"].encode()) % 4}
                dst.write(json.dumps(doc) + "\n")
    return path


# -- in-process measurement ------------------------------------------------------------

class Side:
    """One backend opened in this process: an engine without embedding cache (every query
    runs the model) and its two collections' vector indexes."""

    def __init__(self, name: str, **settings: Any) -> None:
        from semsearch.config import Settings
        from semsearch.wiring import open_engine

        self.name = name
        self.engine = open_engine(Settings(cache_url="none", **settings))
        self.vectors = {c: self.engine.fresh_indexes(self.engine.collection(c).info).vectors
                        for c in (COLLECTION, TAGGED)}
        self.lat: dict[str, list[tuple[float, float]]] = {}
        self.hits: dict[str, list[list[int]]] = {}

    def record(self, what: str, ms: list[float]) -> None:
        self.lat.setdefault(what, []).append((pct(ms, 50), pct(ms, 99)))

    def median(self, what: str) -> tuple[float, float]:
        runs = self.lat[what]
        return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def service_pass(side: Side, queries: list[str], mode: str, collection: str,
                 filt: dict[str, Any] | None) -> list[float]:
    from semsearch.core.filters import parse_filter
    from semsearch.core.types import Mode
    from semsearch.services.search import SearchRequest, search

    f = parse_filter(filt)
    ms = []
    for q in queries:
        t = time.perf_counter()
        search(side.engine, collection, SearchRequest(q, mode=Mode(mode), k=K, filter=f))
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def index_pass(side: Side, qvs: np.ndarray, collection: str,
               allowed: set[int] | None) -> tuple[list[float], list[list[int]]]:
    """The vector index's own search on pre-embedded queries: no model, no store."""
    from semsearch.core.filters import parse_filter

    vec = side.vectors[collection]
    where = parse_filter(FILTER) if allowed is not None and vec.filters else None
    ms, found = [], []
    for qv in qvs:
        t = time.perf_counter()
        hits = vec.search(qv, K, where=where) if where is not None else \
            vec.search(qv, K, allowed)
        ms.append((time.perf_counter() - t) * 1000)
        found.append([label for label, _ in hits])
    return ms, found


def exact_oracle(home: Path, collection: str, cache_url: str,
                 filt: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray, set[int] | None]:
    """Every chunk's label and vector of ``collection`` in ``home`` (vectors read back
    through the warm cache: the same floats the index was given), and the labels the
    filter allows."""
    from semsearch.config import Settings
    from semsearch.core.filters import parse_filter
    from semsearch.core.types import InputType
    from semsearch.wiring import open_engine

    engine = open_engine(Settings(home=home, cache_url=cache_url))
    try:
        handle = engine.collection(collection)
        labels, vecs = [], []
        for batch in engine.store.iter_chunks(handle.version, batch=1000):
            labels += [s.label for s in batch]
            vecs.append(handle.embedder.embed([s.chunk.embed_text for s in batch],
                                              InputType.PASSAGE))
        allowed = engine.store.labels_matching(handle.version, parse_filter(filt)) \
            if filt else None
        return np.array(labels, np.int64), np.vstack(vecs).astype(np.float32), allowed
    finally:
        engine.close()


def recall(found: list[list[int]], qvs: np.ndarray, labels: np.ndarray, vecs: np.ndarray,
           allowed: set[int] | None) -> float:
    scores = qvs @ vecs.T
    if allowed is not None:
        mask = np.fromiter((int(x) in allowed for x in labels), bool, len(labels))
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    hit = [len(set(labels[row].tolist()) & set(f)) / K for row, f in zip(top, found,
                                                                          strict=True)]
    return float(np.mean(hit))


def test_queries(data: Path) -> list[str]:
    wanted = {line.split("\t")[0] for line in (data / "qrels" / "test.tsv").open().readlines()[1:]}
    out = []
    for line in (data / "queries.jsonl").open():
        if line.strip():
            q = json.loads(line)
            if q["_id"] in wanted:
                out.append(q["text"])
    return out


# -- the run ---------------------------------------------------------------------------

def run(args: argparse.Namespace, root: Path, uri: str, results: dict[str, Any]) -> None:
    data: Path = args.data.resolve()
    cache_url = f"sqlite:///{root / 'cache.db'}"
    env = base_env(cache_url, args.threads)
    tagged = tagged_copy(data, root)

    say("warm-up index (embedded, cold cache: the model in the loop) ...")
    cold_e, chunks = timed_index({**env, "SEMSEARCH_HOME": str(root / "warmup")}, data,
                                 COLLECTION)
    say(f"  cold embedded index: {cold_e:.1f} s, {chunks} chunks")
    timed_index({**env, "SEMSEARCH_HOME": str(root / "warmup")}, tagged, TAGGED)
    results["chunks"], results["cold"] = chunks, {"embedded": cold_e}
    if args.cold:
        say("cold Milvus index (no cache) ...")
        cold_env = milvus_env({**base_env("none", args.threads),
                               "SEMSEARCH_HOME": str(root / "cold-m")}, uri, "cold_")
        results["cold"]["Milvus"], _ = timed_index(cold_env, data, COLLECTION)
        say(f"  cold Milvus index: {results['cold']['Milvus']:.1f} s")
        drop_milvus(uri, "cold_")

    # Warm index runs, alternating E, M, M, E; the first of each is searched afterwards.
    homes: dict[str, Path] = {}
    results["index"] = {"embedded": [], "Milvus": [], "Milvus built": []}
    order = [b for i in range(args.index_reps)
             for b in (("embedded", "Milvus") if i % 2 == 0 else ("Milvus", "embedded"))]
    for i, backend in enumerate(order):
        home = root / f"{backend.lower()}-{i}"
        prefix = f"r{i}_"
        e = {**env, "SEMSEARCH_HOME": str(home)}
        if backend == "Milvus":
            e = milvus_env(e, uri, prefix)
        secs, _ = timed_index(e, data, COLLECTION)
        results["index"][backend].append(secs)
        line = f"  warm index {i + 1}/{len(order)} {backend}: {secs:.1f} s"
        if backend == "Milvus":
            t = time.perf_counter()
            seg = wait_until_indexed(uri, prefix)
            built = time.perf_counter() - t
            results["index"]["Milvus built"].append(secs + built)
            line += f", HNSW built and served {built:.1f} s later ({seg})"
        say(line)
        if backend not in homes:
            homes[backend] = home
            timed_index(e, tagged, TAGGED)
            if backend == "Milvus":
                results["milvus_prefix"] = prefix
                wait_until_indexed(uri, prefix)
        elif backend == "Milvus":
            drop_milvus(uri, prefix)  # nothing searches it; free the query node

    say("semsearch eval per backend ...")
    results["ndcg"] = {}
    for backend, home in homes.items():
        e = {**env, "SEMSEARCH_HOME": str(home)}
        if backend == "Milvus":
            e = milvus_env(e, uri, results["milvus_prefix"])
        rep = json.loads(semsearch(e, "eval", str(data), "-c", COLLECTION, "--json").stdout)
        results["ndcg"][backend] = {m: v["ndcg@10"] for m, v in rep.items()}
        say(f"  {backend}: {results['ndcg'][backend]}")

    say("exact oracle: every chunk vector through the warm cache ...")
    oracle = {(b, c): exact_oracle(homes[b], c, cache_url, FILTER if c == TAGGED else None)
              for b in homes for c in (COLLECTION, TAGGED)}

    say("opening the three indexes in this process ...")
    common = {"embedder_threads": args.threads}
    sides = [Side("embedded", home=homes["embedded"], **common),
             Side("embedded HNSW", home=homes["embedded"], ann_threshold=0, **common),
             Side("Milvus", home=homes["Milvus"], vector_index="milvus://" + uri.split("://")[1],
                  milvus_prefix=results["milvus_prefix"], **common)]
    try:
        measure(args, data, sides, oracle, results)
    finally:
        for side in sides:
            side.engine.close()


def measure(args: argparse.Namespace, data: Path, sides: list[Side],
            oracle: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, set[int] | None]],
            results: dict[str, Any]) -> None:
    from semsearch.core.types import InputType

    queries = test_queries(data)
    qvs = sides[0].engine.embedder.embed(queries, InputType.QUERY).astype(np.float32)
    allowed = oracle[("embedded", TAGGED)][2]
    for side in sides:  # load models, open indexes, build the lazy graphs: not timed
        t = time.perf_counter()
        service_pass(side, queries[:3], "hybrid", COLLECTION, None)
        service_pass(side, queries[:3], "dense", TAGGED, FILTER)
        index_pass(side, qvs[:3], COLLECTION, None)
        index_pass(side, qvs[:3], TAGGED, allowed)
        say(f"  {side.name}: warmed in {time.perf_counter() - t:.1f} s"
            + (" (includes building two hnswlib graphs)" if "HNSW" in side.name else ""))
    steps: list[tuple[str, Callable[[Side], list[float]]]] = [
        ("dense", lambda s: service_pass(s, queries, "dense", COLLECTION, None)),
        ("hybrid", lambda s: service_pass(s, queries, "hybrid", COLLECTION, None)),
        ("dense filtered", lambda s: service_pass(s, queries, "dense", TAGGED, FILTER)),
    ]
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            for what, fn in steps:
                side.record(what, fn(side))
            for what, coll, allow in (("index only", COLLECTION, None),
                                      ("index only filtered", TAGGED, allowed)):
                ms, found = index_pass(side, qvs, coll, allow)
                side.record(what, ms)
                side.hits.setdefault(what, found)
            say(f"  round {r + 1}/{args.rounds} {side.name}: dense p50 "
                f"{side.lat['dense'][-1][0]:.2f} ms, index only p50 "
                f"{side.lat['index only'][-1][0]:.2f} ms")
    results["latency"] = {s.name: {w: s.median(w) for w in s.lat} for s in sides}
    results["recall"] = {}
    for side in sides:
        home_of = "Milvus" if side.name == "Milvus" else "embedded"
        results["recall"][side.name] = {
            what: recall(side.hits[what], qvs, *oracle[(home_of, coll)])
            for what, coll in (("index only", COLLECTION), ("index only filtered", TAGGED))}
    results["queries"], results["allowed"] = len(queries), len(allowed or ())


def report(args: argparse.Namespace, results: dict[str, Any], version: str) -> None:
    idx = results["index"]
    e, m, mb = (statistics.mean(idx[k]) for k in ("embedded", "Milvus", "Milvus built"))
    runs = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    print(f"\nSciFact ({results['chunks']} chunks, {results['queries']} test queries, k={K}); "
          f"Milvus {version} standalone, time tick {args.tick_ms} ms; one run, "
          f"{args.rounds} alternating rounds, median over rounds; ratios Milvus / embedded")
    print("\n| | embedded | embedded HNSW | Milvus | Milvus / embedded |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| index s, warm cache (runs) | {runs(idx['embedded'])} | - | {runs(idx['Milvus'])} | "
          f"{m / e:.2f} |")
    print(f"| index s until Milvus's HNSW is built and served | - | - | "
          f"{runs(idx['Milvus built'])} | {mb / e:.2f} |")
    cold = results["cold"]
    if "Milvus" in cold:
        print(f"| index s, cold (model in the loop) | {cold['embedded']:.1f} | - | "
              f"{cold['Milvus']:.1f} | {cold['Milvus'] / cold['embedded']:.2f} |")
    else:
        print(f"| index s, cold (model in the loop) | {cold['embedded']:.1f} | - | - | - |")
    lat = results["latency"]
    labels = {"dense": "dense p50 / p99 ms (query embedded)",
              "hybrid": "hybrid p50 / p99 ms (query embedded)",
              "dense filtered": f"dense, filter part=0 ({results['allowed']} chunks) p50 / p99 ms",
              "index only": "vector index search alone p50 / p99 ms",
              "index only filtered": "vector index search alone, filtered, p50 / p99 ms"}
    for what, label in labels.items():
        cells = [f"{lat[b][what][0]:.2f} / {lat[b][what][1]:.2f}" for b in BACKENDS]
        ratio = (f"{lat['Milvus'][what][0] / lat['embedded'][what][0]:.2f} / "
                 f"{lat['Milvus'][what][1] / lat['embedded'][what][1]:.2f}")
        print(f"| {label} | {' | '.join(cells)} | {ratio} |")
    rec = results["recall"]
    for what, label in (("index only", "recall@10 vs exact"),
                        ("index only filtered", "recall@10 vs exact, filtered")):
        cells = [f"{rec[b][what]:.4f}" for b in BACKENDS]
        print(f"| {label} | {' | '.join(cells)} | "
              f"{rec['Milvus'][what] - rec['embedded'][what]:+.4f} |")
    nd = results["ndcg"]
    for mode in ("keyword", "dense", "hybrid"):
        print(f"| nDCG@10 {mode} | {nd['embedded'][mode]:.4f} | - | {nd['Milvus'][mode]:.4f} | "
              f"{nd['Milvus'][mode] - nd['embedded'][mode]:+.4f} |")
    print("\n" + json.dumps(results, default=str))


def reexec_private() -> None:
    """Run again inside a private network namespace (loopback only) unless already there."""
    sys.path.insert(0, str(HERE.parent))
    from tests.milvus_server import private_network

    if private_network():
        return
    if os.environ.get("SEMSEARCH_BENCH_UNSHARED"):
        raise SystemExit("unshare -n did not give a private network namespace")
    say("not in a private network namespace: re-running under `unshare -n`")
    os.environ["SEMSEARCH_BENCH_UNSHARED"] = "1"
    os.execvp("unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                          sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--rounds", type=int, default=3, help="alternating search rounds")
    ap.add_argument("--index-reps", type=int, default=2, help="warm index runs per backend")
    ap.add_argument("--cold", action="store_true", help="also a cold Milvus index (~3 min)")
    ap.add_argument("--tick-ms", type=int, default=200, help="Milvus proxy.timeTickInterval")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    reexec_private()
    from tests.milvus_server import MilvusServer

    root = Path(tempfile.mkdtemp(prefix="semsearch-milvusbench-"))
    say(f"starting Milvus (time tick {args.tick_ms} ms) under {root} ...")
    server = MilvusServer(root, tick_ms=args.tick_ms)
    results: dict[str, Any] = {}
    try:
        version = server.server_version()
        say(f"Milvus {version} at {server.uri}")
        run(args, root, server.uri, results)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(args, results, version)
    say("done")


if __name__ == "__main__":
    main()
