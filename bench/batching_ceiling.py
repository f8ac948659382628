"""The most dynamic batching can raise embedding throughput on this machine.

    python bench/batching_ceiling.py [--rounds 5] [--gather 8]

Why: the server is CPU-bound (8 clients serve about as many requests per second as one), so
batching can raise throughput only by making the model's CPU per text smaller. This measures
that directly, outside the server: the model on one onnxruntime thread (CPU time = wall
time, no thread barriers), fed exactly what bench/load_test.py's clients send (each
``POST /embed`` carries 1-8 random texts of 3-12 words, each search one query). Side
"alone": every request is its own model call, as without batching. Side "gathered": the
texts of ``--gather`` consecutive requests go in one call (sorted by length and cut into
``SEMSEARCH_EMBED_BATCH_SIZE`` batches, as the server's batcher does), as if every request
found the others already queued. Rounds alternate the two sides on the same texts; the
ratio alone / gathered is an upper bound on batching's throughput gain for the model's share
of the work (HTTP, JSON and search work do not shrink with batching). Each side also runs
with fixed runs of the batch size (how the embedder cut length-sorted texts before
``plan_batches``), the baseline for the padding it saves."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import onnxruntime  # noqa: F401  (before anything imports usearch)

from load_test import _short_text, load_corpus


def requests(seed: int, count: int, words: list[str], queries: list[str],
             embed_texts: int) -> list[list[str]]:
    """The texts of ``count`` requests of load_test.py's default mix (half /embed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            out.append([_short_text(rng, words) for _ in range(rng.randint(1, embed_texts))])
        else:
            out.append([rng.choice(queries) + f" {rng.random():.6f}"])  # a cache miss
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400, help="requests per round")
    ap.add_argument("--gather", type=int, default=8, help="requests per gathered call")
    ap.add_argument("--embed-texts", type=int, default=8)
    args = ap.parse_args()

    from semsearch.config import Settings
    from semsearch.wiring import make_embedder

    _, queries = load_corpus(None, 0)
    words = sorted({w.strip(".,;:?!()\"'") for q in queries for w in q.split()} - {""})
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), embedder_threads=1)
        embedder = make_embedder(settings)
        embedder.embed(["warm up"])
        tokenizer = embedder.tokenizer
        from semsearch.adapters.embedders import onnx_local

        plans = {"planned": onnx_local.plan_batches, "fixed": _fixed_runs}
        cpu: dict[str, list[float]] = {f"{side} {plan}": [] for side in ("alone", "gathered")
                                       for plan in plans}
        texts_total = tokens_total = 0
        for r in range(args.rounds):
            reqs = requests(r, args.requests, words, queries, args.embed_texts)
            texts = [t for req in reqs for t in req]
            texts_total += len(texts)
            tokens_total += sum(len(e) for e in tokenizer.encode_for_model(texts))
            calls = {"alone": reqs,
                     "gathered": [[t for req in reqs[i:i + args.gather] for t in req]
                                  for i in range(0, len(reqs), args.gather)]}
            order = list(cpu) if r % 2 == 0 else list(cpu)[::-1]
            for key in order:
                side, plan = key.split()
                onnx_local.plan_batches = plans[plan]  # type: ignore[assignment]
                started = time.process_time()
                for call in calls[side]:
                    embedder.embed(call)
                cpu[key].append((time.process_time() - started) * 1000 / len(texts))
            onnx_local.plan_batches = plans["planned"]
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{key} {v[-1]:.3f}" for key, v in cpu.items()) + " ms CPU per text",
                file=sys.stderr)

    med = {key: statistics.median(v) for key, v in cpu.items()}
    print(f"{args.rounds} rounds x {args.requests} requests of load_test.py's mix "
          f"({texts_total / (args.rounds * args.requests):.2f} texts and "
          f"{tokens_total / texts_total:.1f} tokens per text on average); model on one "
          f"thread, batch size {settings.embed_batch_size}; medians:\n")
    print("| calls | fixed runs ms/text | plan_batches ms/text | fixed / planned |")
    print("| --- | ---: | ---: | ---: |")
    for side, label in (("alone", "one per request (no batching)"),
                        ("gathered", f"{args.gather} requests per call (ideal batching)")):
        fixed, planned = med[f"{side} fixed"], med[f"{side} planned"]
        print(f"| {label} | {fixed:.3f} | {planned:.3f} | {fixed / planned:.2f} |")
    print(f"\nceiling of batching's gain on the model's share: "
          f"{med['alone planned'] / med['gathered planned']:.2f}x with plan_batches, "
          f"{med['alone fixed'] / med['gathered fixed']:.2f}x with fixed runs; "
          f"today against fixed runs without batching: "
          f"{med['alone fixed'] / med['gathered planned']:.2f}x")
    return 0


def _fixed_runs(lengths: Sequence[int], batch_size: int, call_tokens: int = 0) -> list[int]:
    """Cut ends of runs of ``batch_size`` (the embedder's batches before plan_batches)."""
    return [*range(batch_size, len(lengths), batch_size), len(lengths)] if lengths else []


if __name__ == "__main__":
    sys.exit(main())
