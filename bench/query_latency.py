"""Query latency per mode on an indexed collection, query embedding included.

    semsearch index ../shared/data/scifact --collection scifact
    python bench/query_latency.py ../shared/data/scifact --collection scifact

Each mode runs every test query once with a cold query cache (the embedding cache is
bypassed for queries by giving this process an empty cache), so dense and hybrid times
include embedding the query.

``--baseline-env KEY=VALUE`` alone measures this checkout against itself with other settings
(``SEMSEARCH_BLAS_THREADS=0``: numpy's own BLAS threads). ``--baseline-src DIR
--baseline-home DIR`` measures another checkout of semsearch (its
``src`` folder, e.g. a ``git worktree`` of an earlier commit, with the collection indexed
into its own home) in the same run: the two alternate, round by round, each in its own
process, and the table gives each one's median over the rounds and the ratio current /
baseline, so machine noise hits both alike."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("keyword", "dense", "hybrid")


def measure(data: Path, collection: str, k: int) -> dict[str, list[float]]:
    """Latencies (ms) per mode in this process, with whatever semsearch it imports."""
    from semsearch.config import Settings
    from semsearch.core.types import Mode
    from semsearch.services.search import SearchRequest, search
    from semsearch.wiring import open_engine

    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()
               if line.strip()]
    qrels = data / "qrels" / "test.tsv"
    wanted = {line.split("\t")[0] for line in qrels.open().readlines()[1:]}
    queries = [q for q, qid in zip(queries, _ids(data), strict=True) if qid in wanted]
    engine = open_engine(Settings(cache_url="none"))
    out: dict[str, list[float]] = {}
    try:
        search(engine, collection, SearchRequest("warm up", k=k))  # load + open
        # Steady state, as a server reaches it: background work started by the first
        # searches (the keyword index's in-memory postings) is done before timing.
        for q in queries[:20]:
            search(engine, collection, SearchRequest(q, mode=Mode.KEYWORD, k=k))
        time.sleep(2.0)
        for mode in MODES:
            lat = []
            for q in queries:
                t = time.perf_counter()
                search(engine, collection, SearchRequest(q, mode=Mode(mode), k=k))
                lat.append((time.perf_counter() - t) * 1000)
            out[mode] = lat
    finally:
        engine.close()
    return out


def _ids(data: Path) -> list[str]:
    return [json.loads(line)["_id"] for line in (data / "queries.jsonl").open() if line.strip()]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _child(src: Path | None, home: Path | None, args: argparse.Namespace,
           extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, **(extra or {})}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    if home is not None:
        env["SEMSEARCH_HOME"] = str(home)
    out = subprocess.run([sys.executable, __file__, str(args.data), "--collection",
                          args.collection, "--k", str(args.k), "--child"],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--baseline-home", type=Path, help="SEMSEARCH_HOME for the baseline")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="a variable set only for the baseline (repeatable); without "
                         "--baseline-src the baseline is this checkout with these settings, "
                         "e.g. SEMSEARCH_BLAS_THREADS=0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        lat = measure(args.data, args.collection, args.k)
        print(json.dumps({m: [_pct(v, 50), _pct(v, 99)] for m, v in lat.items()}))
        return
    if any("=" not in kv for kv in args.baseline_env):
        ap.error("--baseline-env takes KEY=VALUE")
    base_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    if args.baseline_src is None and not base_env:
        lat = measure(args.data, args.collection, args.k)
        print(f"k={args.k}, query embedding included for dense/hybrid")
        print("| mode | p50 ms | p99 ms |")
        print("| --- | --- | --- |")
        for mode, v in lat.items():
            print(f"| {mode} | {_pct(v, 50):.2f} | {_pct(v, 99):.2f} |")
        return
    here = Path(__file__).resolve().parents[1] / "src"
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "baseline": []}
    for r in range(args.rounds):
        order = [("current", here, None, {}),
                 ("baseline", args.baseline_src or here, args.baseline_home, base_env)]
        for name, src, home, extra in order if r % 2 == 0 else order[::-1]:
            runs[name].append(_child(src, home, args, extra))
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    print(f"k={args.k}, query embedding included for dense/hybrid; median of {args.rounds} "
          "alternating rounds, each round every test query once per mode")
    print("| mode | current p50 / p99 ms | baseline p50 / p99 ms | ratio p50 / p99 |")
    print("| --- | --- | --- | --- |")
    for mode in MODES:
        cur = [_median([x[mode][i] for x in runs["current"]]) for i in (0, 1)]
        base = [_median([x[mode][i] for x in runs["baseline"]]) for i in (0, 1)]
        print(f"| {mode} | {cur[0]:.2f} / {cur[1]:.2f} | {base[0]:.2f} / {base[1]:.2f} | "
              f"{cur[0] / base[0]:.2f} / {cur[1] / base[1]:.2f} |")


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    main()
