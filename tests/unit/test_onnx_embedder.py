"""The default embedder agrees with the fp32 sentence-transformers reference.

The reference vectors were computed by sentence-transformers + torch on real SciFact text
(bench/make_reference_vectors.py); this test needs neither."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.core.types import InputType
from semsearch.errors import InputError
from tests.conftest import DATA

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.npz"


def _texts() -> tuple[list[str], list[str], np.lib.npyio.NpzFile]:
    ref = np.load(FIXTURE)
    corpus = {}
    with (DATA / "scifact" / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = f"{d['title']}\n{d['text']}"
    queries = {}
    with (DATA / "scifact" / "queries.jsonl").open() as fh:
        for line in fh:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    return ([corpus[i] for i in ref["doc_ids"]], [queries[i] for i in ref["query_ids"]], ref)


def _overlap_at_10(docs_a: np.ndarray, q_a: np.ndarray, docs_b: np.ndarray,
                   q_b: np.ndarray) -> float:
    top_a = np.argsort(-(q_a @ docs_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(q_b @ docs_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_a, top_b, strict=True)]))


@pytest.mark.parametrize("precision,min_mean,min_each,min_overlap",
                         [("int8", 0.99, 0.98, 0.9), ("fp32", 0.999, 0.998, 0.97)])
def test_matches_fp32_sentence_transformers(models_dir: Path, precision: str, min_mean: float,
                                            min_each: float, min_overlap: float) -> None:
    docs, queries, ref = _texts()
    emb = LocalOnnxEmbedder(models_dir, precision=precision, threads=2)
    d = emb.embed(docs, InputType.PASSAGE)
    q = emb.embed(queries, InputType.QUERY)
    cos_d = (d * ref["doc_vecs"]).sum(axis=1)
    cos_q = (q * ref["query_vecs"]).sum(axis=1)
    assert cos_d.mean() >= min_mean and cos_q.mean() >= min_mean, (cos_d.mean(), cos_q.mean())
    assert cos_d.min() >= min_each and cos_q.min() >= min_each, (cos_d.min(), cos_q.min())
    overlap = _overlap_at_10(d, q, ref["doc_vecs"], ref["query_vecs"])
    assert overlap >= min_overlap, overlap
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


def test_loads_lazily_and_once(models_dir: Path) -> None:
    emb = LocalOnnxEmbedder(models_dir, threads=1)
    assert emb._session is None  # constructing must not load the model
    emb.embed(["one"], InputType.QUERY)
    first = emb._session
    emb.embed(["two"], InputType.QUERY)
    assert emb._session is first


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.99999), ("int8", 0.97)])
def test_order_and_batch_composition(models_dir: Path, precision: str, min_cos: float) -> None:
    emb = LocalOnnxEmbedder(models_dir, precision=precision, threads=2)
    texts = ["short", "a much longer sentence about vitamin D and bone fractures in adults",
             "medium length text here"]
    together = emb.embed(texts, InputType.PASSAGE)
    for i, t in enumerate(texts):
        alone = emb.embed([t], InputType.PASSAGE)[0]
        # int8 activations are scaled per batch (dynamic quantization), so a batch's company
        # nudges a vector slightly; the cache then keeps the first vector computed.
        assert float(alone @ together[i]) > min_cos


def test_long_text_is_truncated_to_the_window(embedder: LocalOnnxEmbedder) -> None:
    long = "word " * 5000
    vec = embedder.embed([long], InputType.PASSAGE)
    assert vec.shape == (1, 384) and np.isfinite(vec).all()


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_text_is_refused(embedder: LocalOnnxEmbedder, bad: str) -> None:
    with pytest.raises(InputError, match="empty"):
        embedder.embed(["fine", bad], InputType.PASSAGE)


def test_identity_names_weights_and_precision(models_dir: Path) -> None:
    a = LocalOnnxEmbedder(models_dir, precision="int8").identity
    b = LocalOnnxEmbedder(models_dir, precision="fp32").identity
    assert a.dimension == 384 and a.model.endswith("all-MiniLM-L6-v2")
    assert a != b and a.key() != b.key()
    with pytest.raises(InputError, match="precision"):
        LocalOnnxEmbedder(models_dir, precision="fp8")
