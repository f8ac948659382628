"""Search latency while the embedded dense index compacts in the background.

    python bench/compaction_latency.py [--n 200000] [--rounds 2]

An index of N random unit vectors (384-d, graph on) is saved, a few thousand labels are
changed so that the next save starts a background snapshot that rewrites the float32 file,
and one thread searches without pause until the snapshot is done. Two sides, alternating,
on the same folder layout: "now" (the snapshot holds only the writers' lock while it writes
its files) and "held" (the same snapshot run with the index's lock held throughout, which
is how it ran before: every search waited for it). Random vectors are fine here: this
measures waiting, not recall."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def one_side(folder: Path, n: int, held: bool, seed: int) -> dict[str, Any]:
    from semsearch.adapters.vectors import local

    rng = np.random.default_rng(seed)
    index = local.LocalVectorIndex(folder, DIM, ann_threshold=0, compact_dead=0.001,
                                   compact_dead_min=1000)
    t = time.perf_counter()
    for start in range(0, n, 50_000):
        index.add(list(range(start, min(n, start + 50_000))), _unit(rng, min(50_000, n - start)))
    index.save(1)
    index.wait_compaction()
    built = time.perf_counter() - t
    if held:  # the snapshot as before: under the index's lock from start to end
        inner = index._compact_in_step

        def locked(rewrite: bool) -> None:
            with index._lock:
                inner(rewrite)

        index._compact_in_step = locked  # type: ignore[method-assign]
    queries = _unit(rng, 200)
    for q in queries[:20]:
        index.search(q, 10)  # warm
    index.add(list(range(2000)), _unit(rng, 2000))  # 2,000 dead rows: a rewrite
    lat: list[float] = []
    started = time.perf_counter()
    index.save(2)
    compactor = index._compactor
    assert compactor is not None, "the save did not start a background compaction"
    i = 0
    while compactor.is_alive():
        t = time.perf_counter()
        index.search(queries[i % len(queries)], 10)
        lat.append((time.perf_counter() - t) * 1000)
        i += 1
    compact_s = time.perf_counter() - started
    lat.sort()
    return {"build_s": built, "compact_s": compact_s, "searches": len(lat),
            "p50": lat[len(lat) // 2] if lat else 0.0,
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0,
            "max": lat[-1] if lat else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"now": [], "held": []}
    for r in range(args.rounds):
        for side in (("now", "held") if r % 2 == 0 else ("held", "now")):
            with tempfile.TemporaryDirectory(prefix="semsearch-compact-") as tmp:
                res = one_side(Path(tmp) / "vec", args.n, side == "held", seed=r)
            runs[side].append(res)
            print(f"round {r + 1}/{args.rounds} {side}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()),
                file=sys.stderr, flush=True)
    print(f"{args.n:,} x {DIM} vectors, graph on; a save with 2,000 changed labels starts a "
          f"background rewrite; one thread searches (k=10) until it ends; medians of "
          f"{args.rounds} rounds\n")
    print("| side | compaction s | searches during it | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for side, rs in runs.items()}
    for side, label in (("held", "lock held (before)"), ("now", "writers' lock only (now)")):
        m = med[side]
        print(f"| {label} | {m['compact_s']:.2f} | {m['searches']:.0f} | {m['p50']:.2f} | "
              f"{m['p99']:.2f} | {m['max']:.2f} |")
    if med["held"]["max"] > 0:
        print(f"\nmax search latency now / before: {med['now']['max'] / med['held']['max']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
