"""The OpenAI-compatible embedder against a real loopback HTTP server serving the local model's
vectors: correctness and order, batching, ``dimensions``, and every retry/fail-fast path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.adapters.embedders.openai_compat import OpenAICompatibleEmbedder
from semsearch.core.types import InputType
from semsearch.errors import BackendError, InputError, NotFoundError
from tests.fakes.openai_server import FakeOpenAIServer

MODEL = "fake-minilm"
KEY = "sk-test-123"
TEXTS = [
    "The cat sat on the mat.",
    "Quantum computers use qubits instead of classical bits.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The football match ended in a dramatic penalty shoot-out.",
    "Rust's borrow checker prevents data races at compile time.",
    "Mount Everest is the highest mountain above sea level.",
    "Vaccines train the immune system to recognise pathogens.",
    "The novel follows a family across three generations in Dublin.",
    "Solar panels are most efficient when they face the sun directly.",
    "A database index speeds up lookups at the cost of slower writes.",
    "Honey never spoils if it is stored in a sealed container.",
    "The orchestra rehearsed Beethoven's ninth symphony all week.",
    "Electric cars need fewer moving parts than petrol cars.",
    "Ancient Rome's aqueducts carried water over long distances.",
    "Sleep deprivation impairs memory and concentration.",
    "The telescope captured images of a distant spiral galaxy.",
    "Interest-only mortgages carry a higher long-term cost.",
    "Bees communicate the location of flowers through a waggle dance.",
]


@pytest.fixture(scope="module")
def local(models_dir: Path) -> LocalOnnxEmbedder:
    # batch_size=1: int8 activations are quantized per batch, so a text's vector shifts
    # (cosine ~0.99) with its batch mates; one text per run makes vectors batch-independent
    # and comparable however the client splits its batches.
    embedder = LocalOnnxEmbedder(models_dir, precision="int8", threads=2, batch_size=1)
    embedder.embed(["warm up"])
    return embedder


@pytest.fixture(scope="module")
def reference(local: LocalOnnxEmbedder) -> np.ndarray:
    return local.embed(TEXTS)


@pytest.fixture
def server(local: LocalOnnxEmbedder) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(local, models=(MODEL, "text-embedding-3-small"), api_key=KEY) as srv:
        yield srv


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(server: FakeOpenAIServer, local: LocalOnnxEmbedder,
         sleeps: list[float]) -> Iterator[Any]:
    made: list[OpenAICompatibleEmbedder] = []

    def factory(**overrides: Any) -> OpenAICompatibleEmbedder:
        opts: dict[str, Any] = {
            "base_url": server.url, "model": MODEL, "api_key": KEY,
            "tokenizer": local.tokenizer, "dimension": 384, "timeout": 5.0,
            "backoff_base": 0.01, "sleep": sleeps.append}
        opts.update(overrides)
        made.append(OpenAICompatibleEmbedder(**opts))
        return made[-1]

    yield factory
    for embedder in made:
        embedder.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_vectors_match_local_model_in_order_across_concurrent_batches(
        make: Any, server: FakeOpenAIServer, local: LocalOnnxEmbedder,
        reference: np.ndarray) -> None:
    server.shuffle = True  # data[] comes back reversed: the client must order by index
    server.script(("slow", 0.3))  # one early batch finishes last
    client = make(batch_size=3, concurrency=4)
    vectors = client.embed(TEXTS, InputType.PASSAGE)
    assert vectors.shape == (20, 384) and vectors.dtype == np.float32
    assert cosines(vectors, reference).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sent = server.embedding_requests
    assert sorted(len(r.inputs) for r in sent) == [2] + [3] * 6
    assert all(r.body["encoding_format"] == "float" and "dimensions" not in r.body for r in sent)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in sent)
    assert server.max_inflight <= 4
    tokens = sum(local.tokenizer.count_tokens(t) for t in TEXTS)
    snap = client.meter.snapshot()
    assert (snap.calls, snap.items, snap.tokens, snap.retries, snap.errors) == (7, 20, tokens, 0, 0)
    ident = client.identity
    assert (ident.provider, ident.model, ident.dimension, ident.normalized, ident.metric,
            ident.max_tokens) == ("openai-compatible", MODEL, 384, True, "cosine", 8191)
    assert ident.revision == f"127.0.0.1:{server.port}/v1"
    assert client.tokenizer is local.tokenizer
    assert client.embed([], InputType.QUERY).shape == (0, 384)


def test_concurrency_is_bounded(make: Any, server: FakeOpenAIServer) -> None:
    server.script(*[("slow", 0.2)] * 4)
    make(batch_size=2, concurrency=2).embed(TEXTS[:8], InputType.PASSAGE)
    assert len(server.embedding_requests) == 4
    assert server.max_inflight == 2


def test_batches_by_count(make: Any, server: FakeOpenAIServer) -> None:
    make(batch_size=4, concurrency=1).embed(TEXTS[:10], InputType.PASSAGE)
    assert [r.inputs for r in server.embedding_requests] == [TEXTS[0:4], TEXTS[4:8], TEXTS[8:10]]


def test_batches_by_token_budget(make: Any, server: FakeOpenAIServer,
                                 local: LocalOnnxEmbedder) -> None:
    counts = [local.tokenizer.count_tokens(t) for t in TEXTS]
    budget = 40
    expected: list[list[str]] = [[]]
    used = 0
    for text, n in zip(TEXTS, counts, strict=True):
        if expected[-1] and used + n > budget:
            expected.append([])
            used = 0
        expected[-1].append(text)
        used += n
    make(batch_size=64, max_batch_tokens=budget, max_input_tokens=32,
         concurrency=1).embed(TEXTS, InputType.PASSAGE)
    batches = [r.inputs for r in server.embedding_requests]
    assert batches == expected and len(batches) > 3
    assert all(sum(local.tokenizer.count_tokens(t) for t in b) <= budget for b in batches)


def test_dimensions_sent_and_honoured(make: Any, server: FakeOpenAIServer,
                                      reference: np.ndarray) -> None:
    client = make(dimensions=64, dimension=None)
    assert client.identity.dimension == 64
    vectors = client.embed(TEXTS[:5], InputType.QUERY)
    assert vectors.shape == (5, 64)
    assert [r.body["dimensions"] for r in server.embedding_requests] == [64]
    assert cosines(vectors, reference[:5, :64]).min() > 0.999


def test_dimension_from_known_table_or_probed_once(make: Any, server: FakeOpenAIServer) -> None:
    assert make(model="text-embedding-3-small", dimension=None).identity.dimension == 1536
    assert server.requests == []
    client = make(dimension=None)
    assert client.identity.dimension == 384
    assert client.identity.dimension == 384
    assert [r.inputs for r in server.requests] == [["dimension probe"]]


def test_429_waits_exactly_retry_after(make: Any, server: FakeOpenAIServer,
                                       sleeps: list[float], reference: np.ndarray) -> None:
    server.script("429", ("429", 0.2))
    client = make()
    vectors = client.embed(TEXTS[:3], InputType.PASSAGE)
    assert sleeps == [1.0, 0.2]
    assert len(server.embedding_requests) == 3
    assert cosines(vectors, reference[:3]).min() > 0.999
    snap = client.meter.snapshot()
    assert (snap.calls, snap.retries, snap.errors) == (1, 2, 2)


@pytest.mark.parametrize("fault", ["500", "503", "drop", "malformed"])
def test_transient_faults_are_retried(make: Any, server: FakeOpenAIServer, sleeps: list[float],
                                      reference: np.ndarray, fault: str) -> None:
    server.script(fault)
    client = make(backoff_base=0.05)
    vectors = client.embed(TEXTS[:3], InputType.PASSAGE)
    assert cosines(vectors, reference[:3]).min() > 0.999
    assert len(server.embedding_requests) == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.05
    assert client.meter.retries == 1


def test_backoff_is_exponential_with_full_jitter_and_capped(
        make: Any, server: FakeOpenAIServer, sleeps: list[float]) -> None:
    server.script(*["500"] * 5)
    make(backoff_base=1.0, backoff_max=3.0, max_retries=5).embed(["x"], InputType.QUERY)
    assert len(sleeps) == 5
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [1, 2, 3, 3, 3], strict=True))


def test_retries_exhausted_names_url_status_and_message(
        make: Any, server: FakeOpenAIServer, sleeps: list[float]) -> None:
    server.script(*["503"] * 3)
    client = make(max_retries=2)
    with pytest.raises(BackendError) as info:
        client.embed(TEXTS[:2], InputType.PASSAGE)
    message = str(info.value)
    assert "\n" not in message and "3 attempts" in message and "HTTP 503" in message
    assert f"{server.url}/embeddings" in message and "overloaded" in message
    assert len(server.embedding_requests) == 3 and len(sleeps) == 2
    snap = client.meter.snapshot()
    assert (snap.calls, snap.retries, snap.errors) == (0, 2, 3)


@pytest.mark.parametrize("key", ["sk-wrong", None])
def test_bad_api_key_fails_fast(make: Any, server: FakeOpenAIServer, sleeps: list[float],
                                key: str | None) -> None:
    client = make(api_key=key)
    with pytest.raises(BackendError, match="SEMSEARCH_EMBEDDER_API_KEY") as info:
        client.embed(TEXTS[:2], InputType.PASSAGE)
    assert "401" in str(info.value) and "Incorrect API key" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []
    assert client.meter.errors == 1


def test_azure_style_key_header_and_extra_headers(make: Any, server: FakeOpenAIServer) -> None:
    make(api_key_header="api-key", extra_headers={"X-Trace": "t1"}).embed(["hi"], InputType.QUERY)
    (sent,) = server.requests
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.headers["x-trace"] == "t1"


def test_unknown_model_is_a_clear_error(make: Any, server: FakeOpenAIServer) -> None:
    with pytest.raises(NotFoundError) as info:
        make(model="no-such-model").embed(["hi"], InputType.QUERY)
    assert isinstance(info.value, BackendError)
    assert "no-such-model" in str(info.value) and "does not exist" in str(info.value)
    assert len(server.requests) == 1


def test_server_rejection_is_input_error_without_retry(
        make: Any, server: FakeOpenAIServer) -> None:
    server.max_input_tokens = 4
    with pytest.raises(InputError, match="maximum context length is 4") as info:
        make().embed([TEXTS[1]], InputType.QUERY)
    assert isinstance(info.value, BackendError) and len(server.requests) == 1


def test_wrong_dimension_fails_fast(make: Any, server: FakeOpenAIServer,
                                    sleeps: list[float]) -> None:
    server.script("wrongdim")
    with pytest.raises(BackendError, match="dimensions") as info:
        make().embed(TEXTS[:2], InputType.PASSAGE)
    assert "192-dimensional" in str(info.value) and "expected 384" in str(info.value)
    with pytest.raises(BackendError, match=r"384-dimensional.*expected 512"):
        make(dimension=512).embed(TEXTS[:2], InputType.PASSAGE)
    assert len(server.requests) == 2 and sleeps == []


def test_slow_response_times_out_then_fails(make: Any, server: FakeOpenAIServer,
                                            sleeps: list[float]) -> None:
    server.script(("slow", 1.0), ("slow", 1.0))
    client = make(timeout=0.3, max_retries=1)
    with pytest.raises(BackendError, match=r"timed out after 0\.3s") as info:
        client.embed(["hi"], InputType.QUERY)
    assert "timeout" in str(info.value) and "2 attempts" in str(info.value)
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_over_long_input_rejected_or_truncated(make: Any, server: FakeOpenAIServer,
                                               local: LocalOnnxEmbedder) -> None:
    long_text = " ".join(TEXTS)
    total = local.tokenizer.count_tokens(long_text)
    with pytest.raises(InputError, match=rf"text #1 has {total} tokens .* at most 16"):
        make(max_input_tokens=16).embed(["short", long_text], InputType.PASSAGE)
    with pytest.raises(InputError, match="text #2 is empty"):
        make().embed(["a", "b", "  "], InputType.PASSAGE)
    assert server.requests == []

    client = make(max_input_tokens=16, truncate=True)
    vectors = client.embed(["short", long_text], InputType.PASSAGE)
    cut = server.embedding_requests[0].inputs[1]
    assert long_text.startswith(cut) and local.tokenizer.count_tokens(cut) == 16
    assert cosines(vectors[1:], local.embed([cut])).min() > 0.999
    assert client.meter.truncated == 1


def test_tokens_estimated_when_usage_missing(make: Any, server: FakeOpenAIServer,
                                             local: LocalOnnxEmbedder) -> None:
    server.send_usage = False
    client = make()
    client.embed(TEXTS[:4], InputType.PASSAGE)
    assert client.meter.tokens == sum(local.tokenizer.count_tokens(t) for t in TEXTS[:4])


def test_models_endpoint(server: FakeOpenAIServer) -> None:
    import httpx

    got = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in got.json()["data"]] == [MODEL, "text-embedding-3-small"]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from semsearch.adapters.embedders.openai_compat import _retry_after

    assert _retry_after("2") == 2.0 and _retry_after("-3") == 0.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 30
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
