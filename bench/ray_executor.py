"""Throughput of ``--executor ray`` against in-process embedding, and its scaling with 1 and 2
actors, on the same corpus in the same run. Ray listens on all interfaces: run it inside a
private network namespace,

    unshare -n sh -c 'ip link set lo up && exec python bench/ray_executor.py'
    unshare -n sh -c 'ip link set lo up && exec python bench/ray_executor.py --docs 600'

The corpus is the first N SciFact abstracts (../shared/data/scifact), indexed with the real
local model (int8, the default) into a fresh home per variant, so every chunk is embedded
(no cache hits). Each variant goes through ``index_documents``, the one write path, exactly
as ``semsearch index`` does; seconds are the run's own report (model loads and, on Ray, the
per-commit job start-up included; the local Ray's own start, measured once, excluded). The
machine has 2 cores and is noisy: compare ratios, not absolute numbers."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from semsearch.config import Settings
from semsearch.core.types import Document, InputType
from semsearch.services.ingest import index_documents
from semsearch.wiring import close_executor, make_embedder, open_engine, with_executor

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))

# name, executor, actors, CPUs (= onnxruntime threads) per actor, documents per commit (the
# CLI's defaults: 256 in-process, 1024 on Ray)
VARIANTS = [
    ("in-process (2 threads)", "local", 0, 0, 256),
    ("ray, 1 actor x 1 CPU", "ray", 1, 1, 1024),
    ("ray, 2 actors x 1 CPU", "ray", 2, 1, 1024),
    ("ray, 1 actor x 2 CPUs", "ray", 1, 2, 1024),
    ("ray, 2 actors x 1 CPU, commits of 256", "ray", 2, 1, 256),
]


def documents(n: int) -> list[Document]:
    docs = []
    with open(SHARED / "data" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(Document(id=row["_id"], text=row["text"], title=row.get("title", "")))
            if len(docs) == n:
                break
    return docs


def run(docs: list[Document], root: Path, name: str, executor: str, actors: int, cpus: int,
        batch: int, **extra: Any) -> dict[str, Any]:
    extra |= {"embedder_threads": 2} if executor == "local" else {
        "ray_actors": actors, "ray_actor_cpus": cpus}
    settings = Settings(home=root / name.replace(" ", "_").replace(",", ""), **extra)
    engine = open_engine(settings, executor=executor)
    try:
        report = index_documents(engine, "bench", docs, batch_size=batch)
    finally:
        engine.close()
        close_executor(engine)
    return {"variant": name, "documents": report.documents, "chunks": report.chunks,
            "tokens": report.tokens, "seconds": report.seconds,
            "docs_per_s": report.documents / report.seconds,
            "tokens_per_s": report.tokens / report.seconds}


def job_overhead(root: Path, texts: list[str], actors: int) -> float:
    """Seconds of one Ray job that embeds next to nothing (8 short texts): the actors'
    start, their model loads and Ray Data's scheduling, the fixed cost of every commit."""
    settings = Settings(home=root / f"overhead{actors}", ray_actors=actors)
    embedder = with_executor(settings, make_embedder(settings), "ray")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        embedder.embed(texts[:8], InputType.PASSAGE)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=300)
    args = ap.parse_args()
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    if names != ["lo"]:
        sys.exit("run inside a private network namespace: unshare -n sh -c 'ip link set lo "
                 "up && exec python bench/ray_executor.py' (Ray listens on all interfaces)")
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    docs = documents(args.docs)
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    ray_start = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory(prefix="semsearch-bench-ray-") as tmp:
        for variant in VARIANTS:
            rows.append(run(docs, Path(tmp), *variant))
            r = rows[-1]
            ratio = rows[0]["seconds"] / r["seconds"]
            print(f"{r['variant']:<42} {r['seconds']:7.1f} s  {r['docs_per_s']:6.1f} docs/s  "
                  f"{r['tokens_per_s']:8.0f} tokens/s  x{ratio:.2f}", flush=True)
        overhead = {n: job_overhead(Path(tmp), [d.title for d in docs], n) for n in (1, 2)}
        # The driver's own share (validate, hash, chunk, cache, store, indexes): it runs
        # between the jobs whatever the cluster, so it bounds what more actors can give.
        alone = run(docs, Path(tmp), "write path alone", "local", 0, 0, 1024, embedder="fake")
    ray.shutdown()
    base = rows[0]
    print(f"\n{args.docs} SciFact documents, {base['chunks']} chunks, {base['tokens']} tokens; "
          f"local Ray start-up {ray_start:.1f} s (once per run, not in the times above); "
          f"x = throughput relative to in-process; one Ray job embedding 8 short texts "
          f"(median of 3): {overhead[1]:.1f} s with 1 actor, {overhead[2]:.1f} s with 2; "
          f"the write path alone (fake embedder, in-process): {alone['seconds']:.1f} s, "
          f"{alone['docs_per_s']:.0f} docs/s")
    assert all(r["chunks"] == base["chunks"] and r["tokens"] == base["tokens"] for r in rows)


if __name__ == "__main__":
    main()
