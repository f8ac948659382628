"""Write the real MiniLM vectors the vector-index contract tests search in.

An ANN index is only worth testing on vectors shaped like the ones it will serve: real
sentence embeddings cluster and have a skewed spectrum, which is what makes a graph index
lose recall, while random Gaussian vectors are nearly orthogonal and flatter the graph. So
the contract suite (tests/contract/test_vector_index.py) measures recall@10 of every ANN
backend against exact search on the first 5,000 SciFact passages (title + abstract, cut at
the model's 256-token window) and the 300 SciFact test claims, embedded once here by
semsearch's own local model and committed as tests/fixtures/scifact_minilm_vectors.npz
(float16, about 4 MB). Run by hand, never in CI:

    python bench/make_contract_fixture.py ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings
from semsearch.core.types import InputType

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "scifact_minilm_vectors.npz"


def _jsonl(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scifact", type=Path, help="a BEIR SciFact folder")
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where the built model is kept (default: semsearch's cache)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    corpus = _jsonl(args.scifact / "corpus.jsonl")[: args.passages]
    test_ids = {line.split("\t")[0] for line in
                (args.scifact / "qrels" / "test.tsv").read_text().splitlines()[1:] if line}
    queries = [q for q in _jsonl(args.scifact / "queries.jsonl") if q["_id"] in test_ids]
    passages = [f"{d.get('title', '')}\n{d['text']}".strip() for d in corpus]

    embedder = LocalOnnxEmbedder(args.models_dir or Settings().models_dir,
                                 precision=args.precision, batch_size=32)
    started = time.perf_counter()
    p_vecs = embedder.embed(passages, InputType.PASSAGE)
    q_vecs = embedder.embed([q["text"] for q in queries], InputType.QUERY)
    seconds = time.perf_counter() - started

    args.out.parent.mkdir(parents=True, exist_ok=True)
    ident = embedder.identity
    np.savez_compressed(
        args.out,
        passages=p_vecs.astype(np.float16), queries=q_vecs.astype(np.float16),
        passage_ids=np.array([d["_id"] for d in corpus]),
        query_ids=np.array([q["_id"] for q in queries]),
        model=np.array(f"{ident.model} {ident.revision}"))
    print(f"{len(passages)} passages, {len(queries)} queries embedded in {seconds:.0f}s by "
          f"{ident.model} ({ident.revision}) -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
