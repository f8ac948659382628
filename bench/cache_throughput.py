"""Embedding-cache throughput: SQLite file vs Redis vs the in-process LRU over SQLite.

    python bench/cache_throughput.py [--n 10000] [--repeats 3]

10,000 random keys (shaped like ``core.cache_keys``) with 384-d float32 vectors, written with
``put_many`` and read back with ``get_many`` in batches of 256 keys, as ingest does. Every
repeat starts from empty caches (a new SQLite file, a flushed Redis db 15, a new LRU); the
contenders take turns within a repeat, in a rotating order, so a noisy machine slows them all
alike. The LRU over SQLite is timed cold (memory empty, every key from SQLite) and warm (every
key in memory). Reports the best of the repeats in keys/s and as a ratio to SQLite measured in
the same run. Needs a Redis server on 127.0.0.1:6379 (db 15 is flushed before and after).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from semsearch.adapters.caches.lru import LruEmbeddingCache
from semsearch.adapters.caches.redis_cache import RedisEmbeddingCache
from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache
from semsearch.ports import EmbeddingCache, Vectors


def make_data(n: int, dim: int, seed: int) -> tuple[list[str], dict[str, Vectors]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scope = hashlib.sha256(b"bench|document").hexdigest()[:16]
    keys = [f"{scope}:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(n)]
    return keys, dict(zip(keys, vectors, strict=True))


def timed_puts(cache: EmbeddingCache, keys: list[str], items: dict[str, Vectors],
               batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        cache.put_many({k: items[k] for k in keys[i:i + batch]})
    return time.perf_counter() - start


def timed_gets(cache: EmbeddingCache, keys: list[str], batch: int) -> float:
    found = 0
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        found += len(cache.get_many(keys[i:i + batch]))
    elapsed = time.perf_counter() - start
    if found != len(keys):
        raise SystemExit(f"{type(cache).__name__}: {found} of {len(keys)} keys read back")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = ap.parse_args()

    keys, items = make_data(args.n, args.dim, seed=0)
    admin = redis.Redis.from_url(args.redis_url)
    try:
        admin.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"no Redis at {args.redis_url}: {exc}") from exc
    server = admin.info("server")
    admin.flushdb()

    best: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def run_sqlite(rep: int) -> None:
            cache = SqliteEmbeddingCache(root / f"sqlite-{rep}.db")
            try:
                record("sqlite put", timed_puts(cache, keys, items, args.batch))
                record("sqlite get", timed_gets(cache, keys, args.batch))
            finally:
                cache.close()

        def run_redis(rep: int) -> None:
            admin.flushdb()
            cache = RedisEmbeddingCache(args.redis_url, namespace=f"bench{rep}")
            try:
                record("redis put", timed_puts(cache, keys, items, args.batch))
                record("redis get", timed_gets(cache, keys, args.batch))
                if cache.meter.errors:
                    raise SystemExit(f"Redis errors during the run: {cache.meter}")
            finally:
                cache.close()
                admin.flushdb()

        def run_lru(rep: int) -> None:
            cache = LruEmbeddingCache(SqliteEmbeddingCache(root / f"lru-{rep}.db"),
                                      max_items=args.n)
            try:
                record("lru put", timed_puts(cache, keys, items, args.batch))
                cache.clear()  # SQLite holds everything, memory nothing
                record("lru get cold", timed_gets(cache, keys, args.batch))
                if len(cache) != args.n:
                    raise SystemExit(f"LRU holds {len(cache)} of {args.n} after a cold pass")
                record("lru get warm", timed_gets(cache, keys, args.batch))
            finally:
                cache.close()

        contenders: list[Callable[[int], None]] = [run_sqlite, run_redis, run_lru]
        for rep in range(args.repeats):
            shift = rep % len(contenders)
            for run in contenders[shift:] + contenders[:shift]:
                run(rep)
    admin.close()

    def rate(name: str) -> float:
        return args.n / best[name]

    def cell(name: str, base: str) -> tuple[str, str]:
        return f"{rate(name):,.0f}", f"{best[base] / best[name]:.2f}x"

    rows = [
        ("SQLite (tmp file)", "sqlite put", "sqlite get"),
        (f"Redis {server.get('redis_version', '?')} (127.0.0.1, db 15)",
         "redis put", "redis get"),
        ("LRU over SQLite, cold (all from SQLite)", "lru put", "lru get cold"),
        ("LRU over SQLite, warm (all in LRU)", None, "lru get warm"),
    ]
    print(f"{args.n:,} keys, {args.dim}-d float32, batches of {args.batch}, "
          f"best of {args.repeats}\n")
    print("| cache | put_many keys/s | put vs SQLite | get_many keys/s | get vs SQLite |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, put, get in rows:
        put_rate, put_ratio = cell(put, "sqlite put") if put else ("-", "-")
        get_rate, get_ratio = cell(get, "sqlite get")
        print(f"| {label} | {put_rate} | {put_ratio} | {get_rate} | {get_ratio} |")


if __name__ == "__main__":
    main()
