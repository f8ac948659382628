"""How closely the local all-MiniLM-L6-v2 (fp32 and int8) agrees with sentence-transformers.

Compares against the fp32 sentence-transformers vectors in tests/fixtures/minilm_reference.npz
(bench/make_reference_vectors.py), per text shape: abstracts and short sentences. Prints the
mean, 1st percentile and minimum cosine, and for abstracts the top-10 overlap of retrieval
with the SciFact claims as queries. Builds the models in SEMSEARCH_MODEL_CACHE_DIR (or the
default per-user cache).

    python bench/model_agreement.py ../shared/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"


def _texts(path: Path, ids: np.ndarray, doc: bool = False) -> list[str]:
    rows = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            rows[d["_id"]] = f"{d['title']}\n{d['text']}" if doc else d["text"]
    return [rows[str(i)] for i in ids]


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    ref = np.load(FIXTURE)
    sets = {
        "abstracts (SciFact, 300)": (_texts(data / "scifact" / "corpus.jsonl",
                                            ref["doc_ids"], doc=True), ref["doc_vecs"]),
        "claims (SciFact, 300)": (_texts(data / "scifact" / "queries.jsonl", ref["query_ids"]),
                                  ref["query_vecs"]),
        "questions (Cranfield, 225)": (_texts(data / "cranfield" / "queries.jsonl",
                                              ref["cranfield_query_ids"]),
                                       ref["cranfield_query_vecs"]),
        "everyday (30)": ([str(t) for t in ref["everyday_texts"]], ref["everyday_vecs"]),
    }
    models_dir = Settings().models_dir
    print(f"models in {models_dir}")
    for precision in ("fp32", "int8"):
        emb = LocalOnnxEmbedder(models_dir, precision=precision)
        got = {}
        for name, (texts, want) in sets.items():
            vecs = emb.embed(texts)
            got[name] = vecs
            cos = (vecs * want).sum(axis=1)
            print(f"{precision}  {name:28s} mean {cos.mean():.5f}  p1 "
                  f"{np.percentile(cos, 1):.5f}  min {cos.min():.5f}")
        docs, queries = got["abstracts (SciFact, 300)"], got["claims (SciFact, 300)"]
        top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
        ref_top = np.argsort(-(ref["query_vecs"] @ ref["doc_vecs"].T), axis=1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top,
                                                                     strict=True)])
        print(f"{precision}  top-10 overlap (300 claims over 300 abstracts) {overlap:.4f}")


if __name__ == "__main__":
    main()
