"""The embedded dense index at scale: the new LocalVectorIndex (usearch int8 graph + float32
rows memory-mapped from disk + append-only change log) against the one it replaced
(hnswlib + in-memory float32 + whole-file save), measured in the same run.

    nice -n 5 PYTHONPATH=src python bench/vector_scale.py --n 1000000 --old-n 200000

Vectors are derived from the 5,000 real MiniLM passage vectors of the contract fixture
(tests/fixtures/scifact_minilm_vectors.npz): each derived vector is
normalize((1-w)*p_i + w*p_j + s*g) with p_i, p_j two random real passages, w ~ U(0, 0.5) and
g a standard normal vector scaled to norm ~1 (s=0.5), so neighbourhoods keep the shape of
real sentence vectors (far from orthogonal, clustered by topic) instead of uniform noise.
Queries: the 300 real fixture queries, plus derived ones (the same recipe on queries) up to
``--queries``. Ground truth: exact inner-product top 10 over the same vectors.

Each side is measured in its own fresh process (so RSS is that index's alone): build (add in
10,000-vector batches, then save), open (from files, in a new process), queries (recall@10
against exact, one thread, p50/p99), single-document (8 chunks) upsert-and-save and
delete-and-save latency. The old index is measured at ``--old-n`` (default 200,000) and the
new one at the same n, giving like-for-like ratios; the new one then at ``--n``, where the
old one's figures are extrapolated per vector (linear: its memory, save and open are linear
in n; its build slightly more). Open/query phases alternate old/new and run twice.
The old implementation is read from git (``--old-commit``; SEMSEARCH_REPO names the
checkout when running from a copy), not copied into the tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "scifact_minilm_vectors.npz"
OLD_PATH = "src/semsearch/adapters/vectors/local.py"
DIM = 384
K = 10
BATCH = 10_000
DOC_CHUNKS = 8


def unit(a: np.ndarray) -> np.ndarray:
    v = a.astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def derive(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    w = rng.uniform(0, 0.5, (n, 1)).astype(np.float32)
    g = rng.standard_normal((n, real.shape[1])).astype(np.float32) / np.sqrt(real.shape[1])
    return unit((1 - w) * real[i] + w * real[j] + 0.5 * g)


def make_data(work: Path, n: int, queries: int) -> None:
    """base.f32 (n x DIM float32, written in chunks), queries.npy, truth-<n>.npy."""
    data = np.load(FIXTURE, allow_pickle=False)
    passages, real_q = unit(data["passages"]), unit(data["queries"])
    with (work / "base.f32").open("wb") as fh:
        for start in range(0, n, 100_000):
            fh.write(derive(passages, min(100_000, n - start), seed=start).tobytes())
    extra = max(0, queries - len(real_q))
    q = np.concatenate([real_q, derive(real_q, extra, seed=-1 % 2**31)])[:queries]
    np.save(work / "queries.npy", q)


def read_base(work: Path, start: int, stop: int) -> np.ndarray:
    with (work / "base.f32").open("rb") as fh:  # read, not mapped: RSS stays the index's
        fh.seek(start * DIM * 4)
        return np.frombuffer(fh.read((stop - start) * DIM * 4), np.float32).reshape(-1, DIM)


def truth(work: Path, n: int) -> np.ndarray:
    path = work / f"truth-{n}.npy"
    if path.exists():
        return np.load(path)
    q = np.load(work / "queries.npy")
    best_s = np.full((len(q), K), -np.inf, np.float32)
    best_i = np.zeros((len(q), K), np.int64)
    for start in range(0, n, 100_000):
        s = q @ read_base(work, start, min(n, start + 100_000)).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.arange(start, start + s.shape[1])[None, :]
                                .repeat(len(q), 0)], axis=1)
        top = np.argpartition(-s_all, K - 1, axis=1)[:, :K]
        best_s = np.take_along_axis(s_all, top, 1)
        best_i = np.take_along_axis(i_all, top, 1)
    np.save(path, best_i)
    return best_i


def rss() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # MB
    return out


def open_class(side: str, old_commit: str) -> Any:
    if side == "new":
        from semsearch.adapters.vectors.local import LocalVectorIndex
        return LocalVectorIndex
    repo = os.environ.get("SEMSEARCH_REPO", str(ROOT))  # a checkout holding old_commit
    src = subprocess.run(["git", "-C", repo, "show", f"{old_commit}:{OLD_PATH}"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_local_vectors.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_local_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalVectorIndex


def phase_build(args: argparse.Namespace) -> dict[str, Any]:
    cls = open_class(args.side, args.old_commit)
    work, folder = Path(args.work), Path(args.folder)
    t = time.perf_counter()
    index = cls(folder, DIM)
    for start in range(0, args.n, BATCH):
        vecs = read_base(work, start, min(args.n, start + BATCH))
        index.add(list(range(start, start + len(vecs))), vecs)
    index.save(1)
    secs = time.perf_counter() - t
    return {"build_s": secs, "disk_mb": index.disk_bytes() / 1e6, **rss()}


def phase_query(args: argparse.Namespace) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    cls = open_class(args.side, args.old_commit)
    work, folder = Path(args.work), Path(args.folder)
    before = rss()
    t = time.perf_counter()
    index = cls(folder, DIM)
    open_s = time.perf_counter() - t
    assert len(index) == args.n, (len(index), args.n)
    after_open = rss()
    q = np.load(work / "queries.npy")
    want = np.load(work / f"truth-{args.n}.npy")
    lat, found = [], 0
    with threadpool_limits(limits=1):
        t = time.perf_counter()
        index.search(q[0], K)  # first query: lazy parts (a graph never is: it was saved)
        first_s = time.perf_counter() - t
        for qi, qv in enumerate(q):
            t = time.perf_counter()
            hits = index.search(qv, K)
            lat.append(time.perf_counter() - t)
            found += len({label for label, _ in hits} & set(want[qi].tolist()))
    after_queries = rss()
    pools = {}
    if hasattr(index, "rescore_pool"):  # recall by candidate pool, to pick the default
        default = index.rescore_pool
        for pool in (32, 64, 128):
            index.rescore_pool, index.rescore_factor = pool, 1
            got = sum(len({lb for lb, _ in index.search(qv, K)} & set(want[qi].tolist()))
                      for qi, qv in enumerate(q))
            pools[f"recall_pool{pool}"] = got / (K * len(q))
        index.rescore_pool, index.rescore_factor = default, 4
    rng = np.random.default_rng(7)
    upsert, delete = [], []
    generation = 1
    for _ in range(args.updates):
        labels = [int(x) for x in rng.choice(args.n, DOC_CHUNKS, replace=False)]
        vecs = read_base(work, labels[0], labels[0] + 1).repeat(DOC_CHUNKS, 0)
        generation += 1
        t = time.perf_counter()
        index.add(labels, vecs)  # a re-ingested document: its chunks replaced
        index.save(generation)
        upsert.append(time.perf_counter() - t)
        generation += 1
        t = time.perf_counter()
        index.remove(labels)  # a deleted document
        index.save(generation)
        delete.append(time.perf_counter() - t)
        index.add(labels, read_base(work, labels[0], labels[0] + 1).repeat(DOC_CHUNKS, 0))
        generation += 1
        index.save(generation)  # back to n vectors for the next run
    wait = getattr(index, "wait_compaction", None)
    if wait is not None:
        wait()
    out = {"open_s": open_s, "first_query_s": first_s,
           "recall": found / (K * len(q)),
           "p50_ms": float(np.percentile(lat, 50) * 1000),
           "p99_ms": float(np.percentile(lat, 99) * 1000),
           "upsert_p50_ms": float(np.percentile(upsert, 50) * 1000),
           "upsert_max_ms": float(np.max(upsert) * 1000),
           "delete_p50_ms": float(np.percentile(delete, 50) * 1000),
           "delete_max_ms": float(np.max(delete) * 1000),
           "rss_base_mb": before["VmRSS"], "rss_open_mb": after_open["VmRSS"],
           "rss_mb": after_queries["VmRSS"], "rss_anon_mb": after_queries["RssAnon"],
           "rss_file_mb": after_queries["RssFile"], "hwm_mb": after_queries["VmHWM"],
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **pools}
    if args.compact:
        t = time.perf_counter()
        index.compact()
        out["compact_s"] = time.perf_counter() - t
    return out


def run_phase(phase: str, side: str, n: int, work: Path, folder: Path,
              args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--side", side, "--n", str(n),
           "--work", str(work), "--folder", str(folder), "--old-commit", args.old_commit,
           "--updates", str(extra.get("updates", args.updates))]
    if extra.get("compact"):
        cmd.append("--compact")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    print(f"  {phase:5} {side} n={n}: {json.dumps({k: round(v, 3) for k, v in result.items()})}",
          flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--old-n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--old-commit", default="d57aa1e")
    ap.add_argument("--work", help="keep data and indexes here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --work: keep indexes an earlier run built (and its build times)")
    ap.add_argument("--phase", choices=["build", "query"], help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        fn = phase_build if args.phase == "build" else phase_query
        print(json.dumps(fn(args)))
        return

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="semsearch-vscale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"deriving {args.n} vectors into {work}", flush=True)
    if not (args.reuse and (work / "queries.npy").exists()):
        make_data(work, args.n, args.queries)
    truth(work, args.old_n)
    truth(work, args.n)
    small, big = args.old_n, args.n
    res: dict[tuple[str, int], dict[str, Any]] = {}

    def build(side: str, n: int) -> None:
        folder, saved = work / f"{side}-{n}", work / f"build-{side}-{n}.json"
        if args.reuse and saved.exists() and (folder / "manifest.json").exists():
            res[(side, n)] = json.loads(saved.read_text())  # built by an earlier run
            return
        shutil.rmtree(folder, ignore_errors=True)
        res[(side, n)] = run_phase("build", side, n, work, folder, args)
        saved.write_text(json.dumps(res[(side, n)]))

    build("old", small)
    build("new", small)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {
        ("old", small): [], ("new", small): [], ("new", big): []}
    for rnd in range(2):  # alternate the sides, twice
        order = [("old", small), ("new", small)] if rnd == 0 else [("new", small), ("old", small)]
        for side, n in order:
            runs[(side, n)].append(run_phase("query", side, n, work, work / f"{side}-{n}", args,
                                             updates=args.updates if side == "new" else 5))
    build("new", big)
    for rnd in range(2):
        runs[("new", big)].append(run_phase("query", "new", big, work, work / f"new-{big}",
                                            args, compact=rnd == 1))
    total = time.perf_counter() - started

    def med(key: tuple[str, int], field: str) -> float:
        return float(np.median([r[field] for r in runs[key]]))

    scale = big / small
    rows = [
        ("build (s)", "build_s", True, scale),
        ("disk (MB)", "disk_mb", True, scale),
        ("open (s)", "open_s", False, scale),
        ("RSS after open+queries (MB)", "rss_mb", False, scale),
        ("  of which anonymous (MB)", "rss_anon_mb", False, scale),
        ("  of which file-mapped (MB)", "rss_file_mb", False, scale),
        ("peak RSS (MB)", "hwm_mb", False, scale),
        ("recall@10", "recall", False, 1.0),
        ("query p50 (ms)", "p50_ms", False, 1.0),
        ("query p99 (ms)", "p99_ms", False, 1.0),
        ("upsert 1 doc + save p50 (ms)", "upsert_p50_ms", False, scale),
        ("upsert 1 doc + save max (ms)", "upsert_max_ms", False, scale),
        ("delete 1 doc + save p50 (ms)", "delete_p50_ms", False, scale),
        ("delete 1 doc + save max (ms)", "delete_max_ms", False, scale),
    ]
    print(f"\n{big:,} / {small:,} vectors x {DIM} derived from real MiniLM vectors, "
          f"{args.queries} queries, k={K}, doc = {DOC_CHUNKS} chunks; medians of 2 query "
          f"runs; total {total / 60:.1f} min\n")
    print(f"| measure | old @{small // 1000}k | new @{small // 1000}k | new/old | "
          f"new @{big // 1000}k | old @{big // 1000}k (extrapolated) | new/old |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, field, from_build, grow in rows:
        if from_build:
            o, s_new, b_new = (res[("old", small)][field], res[("new", small)][field],
                               res[("new", big)][field])
        else:
            o, s_new, b_new = (med(("old", small), field), med(("new", small), field),
                               med(("new", big), field))
        o_big = o * grow
        if field in ("rss_mb", "hwm_mb"):  # the interpreter's own share does not grow
            base = med(("old", small), "rss_base_mb")
            o_big = base + (o - base) * grow
        print(f"| {name} | {o:.3f} | {s_new:.3f} | {s_new / o:.2f} | {b_new:.3f} | "
              f"{o_big:.3f} | {b_new / o_big:.2f} |")
    if "compact_s" in runs[("new", big)][-1]:
        print(f"\nnew @{big // 1000}k: compact (rewrite float32 file + snapshot) "
              f"{runs[('new', big)][-1]['compact_s']:.1f} s; first query after open "
              f"{med(('new', big), 'first_query_s') * 1000:.1f} ms")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
