"""The ``Embedder`` contract: shape, dtype and unit norm; the same vectors on every call, in
any order and in any batch; empty text refused before anything is sent or counted; a stable
identity that describes the vectors; a meter that counts calls and items.

A backend is a factory ``(request) -> Embedder`` (the request reaches session fixtures such as
the built model's folder or the loopback server). Parameters that run the real local ONNX
model are marked ``model``; the rest build no model. Add a backend by adding a
``pytest.param``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from semsearch.adapters.embedders.cohere import CohereEmbedder
from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.adapters.embedders.openai_compat import OpenAICompatibleEmbedder
from semsearch.config import Settings
from semsearch.core.types import InputType
from semsearch.errors import InputError
from semsearch.ports import Embedder, Vectors
from semsearch.wiring import make_embedder
from tests.fakes.bedrock_server import COHERE_EN, TITAN_V2, FakeBedrockServer, aws_environment
from tests.fakes.cohere_server import FakeCohereServer
from tests.fakes.openai_server import FakeOpenAIServer

TEXTS = [
    "The cat sat on the mat.",
    "Quantum computers use qubits instead of classical bits.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Vitamin D deficiency is associated with an increased risk of hip fractures in the "
    "elderly, according to a meta-analysis of randomized controlled trials.",
    "ok",
    "Rust's borrow checker prevents data races at compile time.",
    "naïve café résumé — 数据 🙂",
    "The telescope captured images of a distant spiral galaxy.",
    "Bees communicate the location of flowers through a waggle dance.",
    "x",
    "Sleep deprivation impairs memory and concentration. " * 12,
]

Make = Callable[[pytest.FixtureRequest], Embedder]


@dataclass(frozen=True)
class EmbedderBackend:
    make: Make
    min_cosine: float  # how close the same text's vectors must be, whatever its batch


def _fake(request: pytest.FixtureRequest) -> Embedder:
    # through the registry, as SEMSEARCH_EMBEDDER=fake builds it
    return make_embedder(Settings(embedder="fake", embedder_dimensions=384,
                                  chunk_max_tokens=256))


def _onnx(precision: str, batch_size: int) -> Make:
    def make(request: pytest.FixtureRequest) -> Embedder:
        models_dir: Path = request.getfixturevalue("models_dir")
        return LocalOnnxEmbedder(models_dir, precision=precision, threads=2,
                                 batch_size=batch_size)

    return make


def _openai(request: pytest.FixtureRequest) -> Embedder:
    server: FakeOpenAIServer = request.getfixturevalue("openai_server")
    return OpenAICompatibleEmbedder(
        base_url=server.url, model="fake-model", api_key="sk-contract",
        tokenizer=FakeEmbedder().tokenizer, dimension=384, batch_size=4, concurrency=3,
        timeout=10.0)


def _cohere(request: pytest.FixtureRequest) -> Embedder:
    server: FakeCohereServer = request.getfixturevalue("cohere_server")
    return CohereEmbedder(
        base_url=server.url, model="embed-english-light-v3.0", api_key="co-contract",
        tokenizer=FakeEmbedder().tokenizer, batch_size=4, concurrency=3, timeout=10.0)


def _bedrock(model: str, dimensions: int | None) -> Make:
    def make(request: pytest.FixtureRequest) -> Embedder:
        server: FakeBedrockServer = request.getfixturevalue("bedrock_server")
        # through the registry, as SEMSEARCH_EMBEDDER=bedrock builds it
        return make_embedder(Settings(embedder="bedrock", embedder_model=model,
                                      embedder_base_url=server.url, embedder_region=server.region,
                                      embedder_dimensions=dimensions))

    return make


INT8_BATCHES = pytest.mark.xfail(
    strict=True, reason="int8 activations are quantized per batch (dynamic quantization): a "
    "text's vector moves with its batch mates, cosine down to ~0.987 (batch_size=1 or fp32 "
    "are batch-independent)")

BACKENDS = [
    pytest.param(EmbedderBackend(_fake, 1 - 1e-6), id="fake"),
    pytest.param(EmbedderBackend(lambda r: FakeEmbedder(dimension=16), 1 - 1e-6),
                 id="fake-16d"),
    pytest.param(EmbedderBackend(_openai, 1 - 1e-6), id="openai-compatible"),
    pytest.param(EmbedderBackend(_cohere, 1 - 1e-6), id="cohere"),
    pytest.param(EmbedderBackend(_bedrock(TITAN_V2, 256), 1 - 1e-6), id="bedrock"),
    pytest.param(EmbedderBackend(_bedrock(COHERE_EN, None), 1 - 1e-6), id="bedrock-cohere"),
    pytest.param(EmbedderBackend(_onnx("int8", 1), 1 - 1e-3), id="onnx-int8-batch1",
                 marks=pytest.mark.model),
    pytest.param(EmbedderBackend(_onnx("int8", 8), 1 - 1e-3), id="onnx-int8",
                 marks=pytest.mark.model),
    pytest.param(EmbedderBackend(_onnx("fp32", 8), 1 - 1e-3), id="onnx-fp32",
                 marks=pytest.mark.model),
]


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A real HTTP server on loopback speaking OpenAI's format, serving the fake's vectors."""
    with FakeOpenAIServer(cast(Any, FakeEmbedder()), models=("fake-model",),
                          api_key="sk-contract", shuffle=True) as server:
        yield server


@pytest.fixture(scope="module")
def cohere_server() -> Iterator[FakeCohereServer]:
    """A real HTTP server on loopback speaking Cohere's format, serving the fake's vectors."""
    with FakeCohereServer(FakeEmbedder(), models=("embed-english-light-v3.0",),
                          api_key="co-contract") as server:
        yield server


@pytest.fixture(scope="module")
def bedrock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeBedrockServer]:
    """A real HTTP server on loopback speaking Bedrock's runtime API, checking SigV4; boto3
    finds static test credentials in the environment and nothing of the machine's AWS."""
    with pytest.MonkeyPatch.context() as mp, FakeBedrockServer(region="eu-west-3") as server:
        for name, value in aws_environment(tmp_path_factory.mktemp("aws")).items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        yield server


@dataclass
class Under:
    embedder: Embedder
    backend: EmbedderBackend
    request: pytest.FixtureRequest

    def another(self) -> Embedder:
        """A second instance built the same way."""
        return self.backend.make(self.request)


@pytest.fixture(scope="module", params=BACKENDS)
def under(request: pytest.FixtureRequest) -> Iterator[Under]:
    backend: EmbedderBackend = request.param
    embedder = backend.make(request)
    yield Under(embedder, backend, request)
    close = getattr(embedder, "close", None)
    if close is not None:
        close()


def cosines(a: Vectors, b: Vectors) -> np.ndarray:
    out: np.ndarray = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1)
                                               * np.linalg.norm(b, axis=1))
    return out


def assert_same(a: Vectors, b: Vectors, min_cosine: float) -> None:
    assert a.shape == b.shape
    assert cosines(a, b).min() >= min_cosine, cosines(a, b).min()


@pytest.fixture(scope="module")
def reference(under: Under) -> Vectors:
    vectors = under.embedder.embed(TEXTS, InputType.PASSAGE)
    return vectors


def test_shape_dtype_and_unit_norm(under: Under, reference: Vectors) -> None:
    dim = under.embedder.identity.dimension
    assert reference.shape == (len(TEXTS), dim)
    assert reference.dtype == np.float32
    assert np.isfinite(reference).all()
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    queries = under.embedder.embed(TEXTS[:3], InputType.QUERY)
    assert queries.shape == (3, dim) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_the_same_text_gets_the_same_vector_on_every_call(under: Under,
                                                          reference: Vectors) -> None:
    assert_same(under.embedder.embed(TEXTS, InputType.PASSAGE), reference, 1 - 1e-6)
    other = under.another()
    try:
        assert_same(other.embed(TEXTS, InputType.PASSAGE), reference, 1 - 1e-6)
    finally:
        getattr(other, "close", lambda: None)()


def test_vectors_do_not_depend_on_order(under: Under, reference: Vectors) -> None:
    reordered = [TEXTS[i] for i in np.random.default_rng(0).permutation(len(TEXTS))]
    got = under.embedder.embed(reordered, InputType.PASSAGE)
    want = np.stack([reference[TEXTS.index(t)] for t in reordered])
    assert_same(got, want, under.backend.min_cosine)


def test_vectors_do_not_depend_on_the_batch(under: Under, reference: Vectors,
                                            request: pytest.FixtureRequest) -> None:
    if "onnx-int8]" in request.node.name:
        request.applymarker(INT8_BATCHES)
    alone = np.stack([under.embedder.embed([t], InputType.PASSAGE)[0] for t in TEXTS])
    assert_same(alone, reference, under.backend.min_cosine)
    twice = under.embedder.embed([TEXTS[1], TEXTS[1], TEXTS[4]], InputType.PASSAGE)
    assert_same(twice[:2], np.stack([reference[1]] * 2), under.backend.min_cosine)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
@pytest.mark.parametrize("where", [0, 2])
def test_empty_text_is_refused_and_nothing_is_counted(under: Under, bad: str,
                                                      where: int) -> None:
    texts = TEXTS[:3]
    texts = [*texts[:where], bad, *texts[where:]]
    before = under.embedder.meter.snapshot()
    with pytest.raises(InputError, match=f"#{where}"):
        under.embedder.embed(texts, InputType.PASSAGE)
    after = under.embedder.meter.snapshot()
    assert (after.calls, after.items, after.tokens) == (before.calls, before.items,
                                                         before.tokens)


def test_an_empty_list_is_an_empty_matrix(under: Under) -> None:
    before = under.embedder.meter.snapshot()
    out = under.embedder.embed([], InputType.QUERY)
    assert out.shape == (0, under.embedder.identity.dimension) and out.dtype == np.float32
    assert under.embedder.meter.snapshot().minus(before).calls == 0


def test_identity_is_stable_and_describes_the_vectors(under: Under, reference: Vectors) -> None:
    ident = under.embedder.identity
    assert ident == under.embedder.identity
    assert ident.provider and ident.model and ident.revision
    assert ident.dimension == reference.shape[1]
    assert ident.normalized and ident.metric == "cosine"
    assert ident.max_tokens > 0
    other = under.another()
    try:
        assert other.identity == ident
        assert other.identity.key() == ident.key()
    finally:
        getattr(other, "close", lambda: None)()


def test_the_meter_counts_calls_and_items(under: Under) -> None:
    meter = under.embedder.meter
    for texts in (TEXTS, TEXTS[:1], TEXTS[:5]):
        before = meter.snapshot()
        under.embedder.embed(texts, InputType.PASSAGE)
        delta = meter.snapshot().minus(before)
        assert delta.items == len(texts)
        assert 1 <= delta.calls <= len(texts)
        assert delta.tokens >= len(texts)
        assert delta.errors == 0


def test_similar_texts_are_closer_than_unrelated_ones(under: Under) -> None:
    a, b, c = under.embedder.embed(["The cat sat on the mat.", "The cat sat on a mat.",
                                    "Interest rates rose again this quarter."],
                                   InputType.PASSAGE)
    assert float(a @ b) > float(a @ c)


def test_the_tokenizer_covers_the_text(under: Under) -> None:
    tok = under.embedder.tokenizer
    for text in TEXTS:
        spans = tok.token_spans(text)
        assert tok.count_tokens(text) == len(spans) >= 1
        assert all(0 <= s < e <= len(text) for s, e in spans)
        assert [s for s, _ in spans] == sorted(s for s, _ in spans)


def test_concurrent_calls_get_the_same_vectors(under: Under) -> None:
    parts = [TEXTS[i::3] for i in range(3)]
    serial = [under.embedder.embed(part, InputType.PASSAGE) for part in parts]
    results: dict[int, Vectors] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = under.embedder.embed(parts[i % 3], InputType.PASSAGE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, got in results.items():
        assert_same(got, serial[i % 3], 1 - 1e-6)
