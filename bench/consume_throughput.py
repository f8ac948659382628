"""Events per second through `semsearch consume`, per broker, against `semsearch index` of the
same documents from a file, measured in the same run.

    python bench/consume_throughput.py                       # 10,000 upserts, every broker
    python bench/consume_throughput.py --events 2000 --brokers redis

The documents are 10,000 short texts built from SciFact (../shared/data/scifact): each title,
and the first 400 characters of each abstract, as documents of their own. For each broker
they are published as upsert events first (not timed), then one consumer process applies
them (`--max-events N`, batches of SEMSEARCH_CONSUME_BATCH_SIZE): once into a new home (the
model in the loop: every text embedded) and once into a second collection of the same home
(a warm cache: no text reaches the model; what is left is the broker, parsing, the store and
the indexes). The baseline is `semsearch index docs.jsonl` of the same documents, cold and
warm the same way, run right before each consumer run (its own home). Seconds are each
run's own report (`seconds`: from its start to its last commit, the model's load included,
the process start-up not). The machine has 2 cores and is noisy: compare the ratios, not
the absolute numbers, and run it twice."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.brokers import NAMES, harness  # noqa: E402  (the test harnesses publish)

SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))


def documents(n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    with open(SHARED / "data" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": f"t-{d['_id']}", "text": d["title"] or d["_id"]})
            docs.append({"id": f"a-{d['_id']}", "text": (d["text"] or d["title"])[:400]})
            if len(docs) >= n:
                break
    return docs[:n]


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--brokers", default=",".join(NAMES))
    args = ap.parse_args()
    docs = documents(args.events)
    tokens_hint = sum(len(d["text"].split()) for d in docs)
    print(f"{len(docs)} documents, {tokens_hint} words; batch size "
          f"{os.environ.get('SEMSEARCH_CONSUME_BATCH_SIZE', '256')}", flush=True)
    rows: list[tuple[str, str, float, float, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        corpus = Path(tmp) / "docs.jsonl"
        corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        few = Path(tmp) / "few.jsonl"
        few.write_text("".join(json.dumps(d) + "\n" for d in docs[:10]), encoding="utf-8")

        def env(home: str) -> dict[str, str]:
            return dict(os.environ, SEMSEARCH_HOME=str(Path(tmp) / home),
                        SEMSEARCH_MODEL_CACHE_DIR=str(models), SEMSEARCH_NO_PROGRESS="1")

        semsearch = [sys.executable, "-m", "semsearch"]
        _run([*semsearch, "index", str(few), "-c", "warmup", "--json"], env("warmup"))
        bodies = [json.dumps({"op": "upsert", "version": 1, **d}).encode() for d in docs]
        for name in args.brokers.split(","):
            h = harness(name)
            if h.down() is not None:
                print(f"{name}: down ({h.down()}), skipped")
                continue
            # The baseline right before each consumer run (the machine is noisy): the same
            # documents indexed from a file, with the same state of the cache.
            for phase, coll in (("cold", "c1"), ("warm", "c2")):
                base = _run([*semsearch, "index", str(corpus), "-c", coll, "--json"],
                            env(f"index-{name}"))
                base_rate = len(docs) / base["seconds"]
                sub = h.fresh()
                try:
                    started = time.perf_counter()
                    h.publish(sub, bodies)
                    publish_s = time.perf_counter() - started
                    r = _run([*semsearch, "consume", *h.cli_args(sub), "-c", coll, "--json",
                              "--max-events", str(len(docs))], env(f"consume-{name}"))
                finally:
                    h.cleanup(sub)
                rate = r["events"] / r["seconds"]
                rows.append((name, phase, rate, base_rate, r["embedded"], r["cache_hits"]))
                print(f"{name} {phase}: {rate:.0f} events/s, index {base_rate:.0f} docs/s "
                      f"(published in {publish_s:.1f} s)", flush=True)
    print("\n| broker | cache | consume events/s | index docs/s (same run) | ratio | "
          "texts embedded | cache hits |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, phase, rate, base_rate, embedded, hits in rows:
        print(f"| {name} | {phase} | {rate:,.0f} | {base_rate:,.0f} | {rate / base_rate:.2f}x | "
              f"{embedded:,} | {hits:,} |")


if __name__ == "__main__":
    main()
