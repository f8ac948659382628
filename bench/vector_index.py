"""Compare dense-search backends on clustered unit vectors: build time, recall@k, latency.

    PYTHONPATH=src python bench/vector_index.py --n 50000

Contenders: exact numpy (matmul + argpartition), LocalVectorIndex on its exact path and on its
ANN path (with and without ``allowed`` filters), plain hnswlib, usearch, and faiss flat/HNSW when
faiss is installed. Graph indexes share M=16, ef_construction=200, ef_search=256. Builds use
every core; queries run one at a time on one thread (BLAS is pinned to one thread when
threadpoolctl is available), and the contenders take turns query by query so a noisy machine
slows them all alike instead of whichever happens to run during a burst.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from usearch.index import Index as UsearchIndex

from semsearch.adapters.vectors.local import LocalVectorIndex

M, EF_CONSTRUCTION, EF_SEARCH = 16, 200, 256
Search = Callable[[np.ndarray], list[int]]


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """Gaussian blobs around random centres, normalised: neighbours are dense within a
    cluster, which is harder for a graph than uniform noise and closer to real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    v = centres[rng.integers(0, clusters, n)]
    v = v + noise / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int,
               rows: np.ndarray | None = None) -> np.ndarray:
    """Ground truth as row ids (labels are row ids here), in chunks to bound memory."""
    mat = base if rows is None else base[rows]
    out = []
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ mat.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out.append(top if rows is None else rows[top])
    return np.concatenate(out)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def build_all(base: np.ndarray, k: int, workdir: Path, fractions: list[float]) -> Iterator[
        tuple[str, float, Search, np.ndarray | None]]:
    """Yield (name, build seconds, search function, allowed rows or None) per contender."""
    n, dim = base.shape
    labels = list(range(n))

    def numpy_search(q: np.ndarray) -> list[int]:
        scores = base @ q
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])].tolist()
    yield "numpy exact (matmul+argpartition)", 0.0, numpy_search, None

    def local(threshold: int, name: str) -> LocalVectorIndex:
        idx = LocalVectorIndex(workdir / name, dim, ann_threshold=threshold, ef_search=EF_SEARCH,
                               m=M, ef_construction=EF_CONSTRUCTION)
        idx.add(labels, base)
        idx.search(base[0], 1)  # the graph is built lazily on the first search
        return idx
    exact, secs = timed(lambda: local(n + 1, "exact"))
    yield "LocalVectorIndex exact path", secs, lambda q: [x for x, _ in exact.search(q, k)], None
    ann, secs = timed(lambda: local(0, "ann"))
    yield "LocalVectorIndex ANN path", secs, lambda q: [x for x, _ in ann.search(q, k)], None
    rng = np.random.default_rng(1)
    for frac in fractions:
        rows = np.sort(rng.choice(n, max(k, int(n * frac)), replace=False))
        allowed = set(rows.tolist())
        path = "hnswlib filter" if len(rows) >= max(2000, 0.1 * n) else "exact rows"
        yield (f"LocalVectorIndex ANN, allowed={frac:.0%} ({path})", 0.0,
               lambda q, a=allowed: [x for x, _ in ann.search(q, k, a)], rows)

    def plain_hnswlib() -> Any:
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
        index.add_items(base, np.arange(n))
        index.set_ef(EF_SEARCH)
        return index
    hn, secs = timed(plain_hnswlib)
    yield "hnswlib", secs, lambda q: hn.knn_query(q, k=k, num_threads=1)[0][0].tolist(), None

    def plain_usearch() -> UsearchIndex:
        index = UsearchIndex(ndim=dim, metric="ip", dtype="f32", connectivity=M,
                             expansion_add=EF_CONSTRUCTION, expansion_search=EF_SEARCH)
        index.add(np.arange(n), base, threads=0)
        return index
    us, secs = timed(plain_usearch)
    yield "usearch (f32)", secs, lambda q: us.search(q, k, threads=1).keys.tolist(), None

    try:
        import faiss
    except ImportError:
        return
    flat, secs = timed(lambda: _faiss_add(faiss.IndexFlatIP(dim), base))
    yield "faiss IndexFlatIP", secs, lambda q: flat.search(q[None, :], k)[1][0].tolist(), None

    def faiss_hnsw() -> Any:
        index = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        _faiss_add(index, base)
        index.hnsw.efSearch = EF_SEARCH
        return index
    fh, secs = timed(faiss_hnsw)
    yield "faiss IndexHNSWFlat", secs, lambda q: fh.search(q[None, :], k)[1][0].tolist(), None


def _faiss_add(index: Any, base: np.ndarray) -> Any:
    index.add(base)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--noise", type=float, default=1.0, help="per-vector noise / centre norm")
    parser.add_argument("--filters", type=float, nargs="*", default=[0.25, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = clustered(args.n + args.queries, args.dim, args.clusters, args.noise, args.seed)
    base, queries = np.ascontiguousarray(data[: args.n]), data[args.n:]
    with tempfile.TemporaryDirectory() as tmp:
        contenders = []
        for name, secs, search, rows in build_all(base, args.k, Path(tmp), args.filters):
            print(f"built {name} in {secs:.1f}s", flush=True)
            truth = exact_topk(base, queries, args.k, rows)
            contenders.append((name, secs, search, truth, []))
        try:
            from threadpoolctl import threadpool_limits
            limit: Any = threadpool_limits(limits=1)
        except ImportError:
            limit = contextlib.nullcontext()
        found = np.zeros(len(contenders))
        order = np.random.default_rng(args.seed)
        with limit:
            # Round robin in a fresh order per query: machine noise and cache warmth from the
            # previous contender fall on every contender alike.
            for qi, q in enumerate(queries):
                for ci in order.permutation(len(contenders)):
                    _, _, search, truth, lat = contenders[ci]
                    start = time.perf_counter()
                    got = search(q)
                    lat.append(time.perf_counter() - start)
                    found[ci] += len(set(got) & set(truth[qi].tolist()))

    print(f"\nN={args.n} dim={args.dim} queries={args.queries} k={args.k} "
          f"clusters={args.clusters} noise={args.noise}; M={M} efC={EF_CONSTRUCTION} "
          f"ef={EF_SEARCH}; build on all cores, queries single-threaded\n")
    print(f"| method | build (s) | recall@{args.k} | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for ci, (name, secs, _, _, lat) in enumerate(contenders):
        ms = np.array(lat) * 1000
        build = f"{secs:.1f}" if secs else "-"
        print(f"| {name} | {build} | {found[ci] / (args.k * len(queries)):.4f} | "
              f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} |")


if __name__ == "__main__":
    main()
