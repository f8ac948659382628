"""The Cohere embedder against a real loopback server speaking Cohere's ``/v2/embed`` (it
answers 400 to any request that deviates from the format): the request shape, batches of at
most 96, the query/passage mapping, retries and fail-fast, tokens and cost from
``meta.billed_units``, the stamped identity, and ``semsearch index`` / ``search`` end to end.

Most tests serve the fake embedder's vectors (fast, no model); those about meaning serve the
real local model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.embedders.cohere import CohereEmbedder
from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import InputType, Mode
from semsearch.errors import BackendError, IdentityMismatchError, InputError, NotFoundError
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import make_embedder, open_engine
from tests.fakes.cohere_server import FakeCohereServer, billed_tokens

MODEL = "embed-english-light-v3.0"  # 384-d, as the local model and the fake embedder
KEY = "co-test-123"
TEXTS = [
    "The cat sat on the mat.",
    "Quantum computers use qubits instead of classical bits.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Rust's borrow checker prevents data races at compile time.",
    "Mount Everest is the highest mountain above sea level.",
    "Bees communicate the location of flowers through a waggle dance.",
]


@pytest.fixture(scope="module")
def fake() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def server(fake: FakeEmbedder) -> Iterator[FakeCohereServer]:
    with FakeCohereServer(fake, models=(MODEL, "embed-v4.0"), api_key=KEY) as srv:
        yield srv


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(server: FakeCohereServer, fake: FakeEmbedder, sleeps: list[float]) -> Iterator[Any]:
    made: list[CohereEmbedder] = []

    def factory(**overrides: Any) -> CohereEmbedder:
        opts: dict[str, Any] = {
            "base_url": server.url, "model": MODEL, "api_key": KEY,
            "tokenizer": fake.tokenizer, "timeout": 5.0, "backoff_base": 0.01,
            "sleep": sleeps.append}
        opts.update(overrides)
        made.append(CohereEmbedder(**opts))
        return made[-1]

    yield factory
    for embedder in made:
        embedder.close()


def many(n: int) -> list[str]:
    return [f"note {i}: {TEXTS[i % len(TEXTS)]}" for i in range(n)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- the wire format -------------------------------------------------------------------------

def test_request_shape_and_identity(make: Any, server: FakeCohereServer,
                                    fake: FakeEmbedder) -> None:
    client = make()
    vectors = client.embed(TEXTS, InputType.PASSAGE)
    assert vectors.shape == (8, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, fake.embed(TEXTS), atol=1e-6)
    (sent,) = server.requests
    assert sent.method == "POST" and sent.path == "/v2/embed"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {"model": MODEL, "texts": TEXTS, "input_type": "search_document",
                         "embedding_types": ["float"], "truncate": "NONE"}
    ident = client.identity
    assert (ident.provider, ident.model, ident.dimension, ident.normalized, ident.metric,
            ident.max_tokens) == ("cohere", MODEL, 384, True, "cosine", 512)
    assert ident.revision == f"127.0.0.1:{server.port}"
    assert len(server.requests) == 1  # a known model's size needs no probe


def test_input_type_maps_query_and_passage(make: Any, server: FakeCohereServer) -> None:
    client = make()
    client.embed(["what is a qubit?"], InputType.QUERY)
    client.embed(["A qubit is a two-state quantum system."], InputType.PASSAGE)
    assert [r.body["input_type"] for r in server.requests] == ["search_query",
                                                               "search_document"]


def test_the_fake_refuses_what_cohere_refuses(server: FakeCohereServer) -> None:
    """The server is strict, so the tests above prove the client's format, not its luck."""
    import httpx

    url, auth = f"{server.url}/v2/embed", {"Authorization": f"Bearer {KEY}"}
    good = {"model": MODEL, "texts": ["hi"], "input_type": "search_query",
            "embedding_types": ["float"]}
    assert httpx.post(url, json=good, headers=auth).status_code == 200
    for bad in ({**good, "input_type": "query"}, {k: v for k, v in good.items()
                                                  if k != "input_type"},
                {**good, "embedding_types": ["int8"]}, {**good, "input": ["hi"]},
                {**good, "texts": ["x"] * 97}, {**good, "truncate": "MIDDLE"}):
        got = httpx.post(url, json=bad, headers=auth)
        assert got.status_code == 400 and got.json()["message"].startswith("invalid request")
    assert httpx.post(url, json=good).status_code == 401
    assert httpx.post(url, json={**good, "model": "nope"}, headers=auth).status_code == 404


def test_batches_hold_at_most_96_texts(make: Any, server: FakeCohereServer) -> None:
    texts = many(200)
    vectors = make(concurrency=2).embed(texts, InputType.PASSAGE)
    assert vectors.shape == (200, 384)
    assert sorted(len(r.texts) for r in server.requests) == [8, 96, 96]
    in_order = sorted(server.requests, key=lambda r: texts.index(r.texts[0]))
    assert [t for r in in_order for t in r.texts] == texts
    with pytest.raises(InputError, match="96"):
        make(batch_size=97)
    make(batch_size=10, concurrency=1).embed(texts[:25], InputType.PASSAGE)
    assert [len(r.texts) for r in server.requests[3:]] == [10, 10, 5]


def test_vectors_are_the_local_models_in_order(models_dir: Path) -> None:
    local = LocalOnnxEmbedder(models_dir, precision="int8", threads=2, batch_size=1)
    with FakeCohereServer(local, models=(MODEL,), api_key=KEY) as srv, \
            CohereEmbedder(base_url=srv.url, model=MODEL, api_key=KEY,
                           tokenizer=local.tokenizer, batch_size=3, concurrency=3) as client:
        srv.script(("slow", 0.3))  # the first batch comes back last
        got = client.embed(TEXTS, InputType.PASSAGE)
        assert cosines(got, local.embed(TEXTS)).min() > 0.999
        a, b, c = client.embed(["The cat sat on the mat.", "A cat was sitting on the mat.",
                                "Interest rates rose again."], InputType.QUERY)
    assert float(a @ b) > float(a @ c)


def test_output_dimension_and_truncation_are_sent(make: Any, server: FakeCohereServer,
                                                  fake: FakeEmbedder) -> None:
    client = make(model="embed-v4.0", dimensions=256)
    assert client.identity.dimension == 256 and client.identity.max_tokens == 128000
    assert client.embed(TEXTS[:2], InputType.QUERY).shape == (2, 256)
    assert server.requests[-1].body["output_dimension"] == 256
    long_text = " ".join(TEXTS)
    cut = make(max_input_tokens=16, truncate=True)
    cut.embed(["short", long_text], InputType.PASSAGE)
    body = server.requests[-1].body
    assert body["truncate"] == "END" and long_text.startswith(body["texts"][1])
    assert fake.tokenizer.count_tokens(body["texts"][1]) == 16 and cut.meter.truncated == 1


def test_default_base_url_and_known_models_need_no_request() -> None:
    settings = Settings(embedder="cohere", embedder_model="embed-english-v3.0",
                        embedder_api_key="k")
    embedder = make_embedder(settings)
    assert isinstance(embedder, CohereEmbedder)
    try:
        ident = embedder.identity  # known model: no probe, so nothing leaves the machine
        assert (ident.provider, ident.revision, ident.dimension, ident.max_tokens) == (
            "cohere", "api.cohere.com", 1024, 512)
        assert embedder._url == "https://api.cohere.com/v2/embed"
    finally:
        embedder.close()
    for base in ("https://api.cohere.com/v2", "https://proxy.example/cohere/v2/"):
        with CohereEmbedder(base_url=base, model="m", api_key=None,
                            tokenizer=FakeEmbedder().tokenizer, dimension=8) as other:
            assert other._url == base.rstrip("/") + "/embed"
            assert not other.identity.revision.endswith("/v2")
    with pytest.raises(InputError, match="SEMSEARCH_EMBEDDER_MODEL"):
        make_embedder(Settings(embedder="cohere"))
    with pytest.raises(InputError, match=r"https://api\.cohere\.com"):
        make_embedder(settings.model_copy(update={"embedder_base_url": "api.cohere.com"}))


def test_unknown_size_is_probed_once_with_a_query(make: Any, server: FakeCohereServer) -> None:
    server.models = (*server.models, "embed-custom")
    client = make(model="embed-custom")
    assert client.identity.dimension == 384 and client.identity.dimension == 384
    (probe,) = server.requests
    assert probe.texts == ["dimension probe"] and probe.body["input_type"] == "search_query"


# -- retries and fail-fast -------------------------------------------------------------------

def test_429_waits_exactly_retry_after(make: Any, server: FakeCohereServer,
                                       sleeps: list[float]) -> None:
    server.script("429", ("429", 0.25))
    client = make()
    vectors = client.embed(TEXTS[:3], InputType.PASSAGE)
    assert vectors.shape == (3, 384) and sleeps == [1.0, 0.25]
    assert len(server.requests) == 3
    snap = client.meter.snapshot()
    assert (snap.calls, snap.retries, snap.errors) == (1, 2, 2)


@pytest.mark.parametrize("fault", ["500", "503", "drop", "malformed"])
def test_transient_faults_are_retried(make: Any, server: FakeCohereServer, sleeps: list[float],
                                      fault: str) -> None:
    server.script(fault)
    client = make(backoff_base=0.05)
    assert client.embed(TEXTS[:3], InputType.PASSAGE).shape == (3, 384)
    assert len(server.requests) == 2 and len(sleeps) == 1 and 0 <= sleeps[0] <= 0.05
    assert client.meter.retries == 1


def test_retries_exhausted_names_url_status_and_message(
        make: Any, server: FakeCohereServer, sleeps: list[float]) -> None:
    server.script(*["503"] * 3)
    client = make(max_retries=2)
    with pytest.raises(BackendError) as info:
        client.embed(TEXTS[:2], InputType.PASSAGE)
    message = str(info.value)
    assert "\n" not in message and "3 attempts" in message and "HTTP 503" in message
    assert f"{server.url}/v2/embed" in message and "service unavailable" in message
    assert len(server.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("how", ["wrong key", "no key", "scripted 401"])
def test_bad_api_key_fails_fast(make: Any, server: FakeCohereServer, sleeps: list[float],
                                how: str) -> None:
    client = make(api_key={"wrong key": "co-wrong", "no key": None}.get(how, KEY))
    if how == "scripted 401":
        server.script("401")
    with pytest.raises(BackendError, match="SEMSEARCH_EMBEDDER_API_KEY") as info:
        client.embed(TEXTS[:2], InputType.PASSAGE)
    assert not isinstance(info.value, InputError)
    assert "401" in str(info.value) and "invalid api token" in str(info.value)
    assert len(server.requests) == 1 and sleeps == [] and client.meter.errors == 1


@pytest.mark.parametrize("how", ["unknown-model-404", "unknown-model-400", "unlisted"])
def test_unknown_model_fails_fast_and_is_not_an_input_error(
        make: Any, server: FakeCohereServer, sleeps: list[float], how: str) -> None:
    """Not an InputError: the writer would otherwise refuse every document one by one."""
    if how == "unlisted":
        client = make(model="embed-nope", dimension=384)
    else:
        server.script(how)
        client = make()
    with pytest.raises(NotFoundError) as info:
        client.embed(TEXTS[:2], InputType.PASSAGE)
    assert isinstance(info.value, BackendError) and not isinstance(info.value, InputError)
    assert "check the model name" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []


def test_over_long_input_is_refused_by_the_client_or_the_server(
        make: Any, server: FakeCohereServer, fake: FakeEmbedder) -> None:
    long_text = " ".join(TEXTS)
    n = fake.tokenizer.count_tokens(long_text)
    with pytest.raises(InputError, match=rf"text #1 has {n} tokens .* at most 16"):
        make(max_input_tokens=16).embed(["short", long_text], InputType.PASSAGE)
    with pytest.raises(InputError, match="text #2 is empty"):
        make().embed(["a", "b", "  "], InputType.PASSAGE)
    assert server.requests == []
    # Cohere counts with its own tokenizer: it may refuse what the client let through.
    server.max_input_tokens = 8
    with pytest.raises(InputError, match="too many tokens") as info:
        make().embed([long_text], InputType.PASSAGE)
    assert isinstance(info.value, BackendError) and len(server.requests) == 1


def test_wrong_vector_size_fails_fast(make: Any, server: FakeCohereServer,
                                      sleeps: list[float]) -> None:
    server.script("wrongdim")
    with pytest.raises(BackendError, match=r"192-dimensional.*expected 384"):
        make().embed(TEXTS[:2], InputType.PASSAGE)
    assert len(server.requests) == 1 and sleeps == []


# -- tokens and cost -------------------------------------------------------------------------

def test_tokens_come_from_billed_units_else_the_estimate(make: Any, server: FakeCohereServer,
                                                         fake: FakeEmbedder) -> None:
    client = make()
    client.embed(TEXTS, InputType.PASSAGE)
    billed = sum(billed_tokens(t) for t in TEXTS)
    estimate = sum(fake.tokenizer.count_tokens(t) for t in TEXTS)
    assert billed != estimate  # so the assertion below tells them apart
    assert client.meter.tokens == billed == server.billed
    server.send_billed_units = False
    quiet = make()
    quiet.embed(TEXTS, InputType.PASSAGE)
    assert quiet.meter.tokens == estimate


def test_engine_meters_cost_and_stamps_the_identity(settings: Settings, models_dir: Path,
                                                    server: FakeCohereServer) -> None:
    """Cost is billed tokens x SEMSEARCH_EMBEDDER_PRICE_PER_MTOK. A collection built with
    Cohere refuses the local model configured explicitly, and the other way round."""
    cohere = Settings(embedder="cohere", embedder_model=MODEL, embedder_base_url=server.url,
                      embedder_api_key=KEY, embedder_price_per_mtok=0.1)
    engine = open_engine(cohere)
    try:
        report = index_documents(engine, "co", iter_documents(sample_dir()))
        billed = server.billed
        hits = search(engine, "co", SearchRequest("sourdough starter", mode=Mode.DENSE,
                                                  k=1)).hits
        stamped = engine.store.get_collection("co").identity
    finally:
        engine.close()
    assert report.tokens == billed > 0 and report.model_calls >= 1
    assert report.cost == pytest.approx(billed * 0.1 / 1e6)
    assert hits[0].doc_id == "sourdough-starter.md"
    assert (stamped.provider, stamped.model, stamped.dimension) == ("cohere", MODEL, 384)
    kinds = [r.body["input_type"] for r in server.requests]
    assert kinds[-1] == "search_query" and set(kinds[:-1]) == {"search_document"}

    local = open_engine(Settings(embedder="local"))
    try:
        with pytest.raises(IdentityMismatchError, match=r"cohere.*local"):
            search(local, "co", SearchRequest("sourdough"))
        index_documents(local, "loc", list(iter_documents(sample_dir()))[:2])
    finally:
        local.close()
    before = len(server.requests)
    engine = open_engine(cohere)
    try:
        with pytest.raises(IdentityMismatchError, match=r"local.*cohere"):
            search(engine, "loc", SearchRequest("sourdough"))
    finally:
        engine.close()
    assert len(server.requests) == before  # refused before anything was embedded


# -- the CLI, end to end ---------------------------------------------------------------------

def test_cli_index_and_search_through_cohere(settings: Settings, models_dir: Path) -> None:
    local = LocalOnnxEmbedder(models_dir, precision="int8", threads=2, batch_size=1)
    with FakeCohereServer(local, models=(MODEL,), api_key=KEY) as srv:
        env = {**os.environ, "SEMSEARCH_HOME": str(settings.home), "SEMSEARCH_NO_PROGRESS": "1",
               "SEMSEARCH_EMBEDDER": "cohere", "SEMSEARCH_EMBEDDER_MODEL": MODEL,
               "SEMSEARCH_EMBEDDER_BASE_URL": srv.url, "SEMSEARCH_EMBEDDER_API_KEY": KEY,
               "SEMSEARCH_EMBEDDER_PRICE_PER_MTOK": "0.1"}

        def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "semsearch", *args],
                                  capture_output=True, text=True, env={**env, **extra},
                                  timeout=300)

        indexed = run("index", str(sample_dir()), "-c", "docs", "--json")
        assert indexed.returncode == 0, indexed.stderr
        report = json.loads(indexed.stdout)
        assert report["documents"] == 12 and report["embedded"] == report["chunks"]
        assert report["tokens"] == srv.billed
        assert report["cost"] == pytest.approx(srv.billed * 0.1 / 1e6)
        assert {r.body["input_type"] for r in srv.requests} == {"search_document"}

        found = run("search", "keeping vegetables fresh", "-c", "docs", "--mode", "dense",
                    "--json", "--k", "1")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["hits"][0]["doc_id"] == "storing-vegetables.md"
        assert srv.requests[-1].body["input_type"] == "search_query"

        cols = json.loads(run("collections", "--json").stdout)["collections"]
        assert cols[0]["identity"]["provider"] == "cohere"

        denied = run("search", "vegetables", "-c", "docs", SEMSEARCH_EMBEDDER_API_KEY="co-bad")
        assert denied.returncode != 0 and "Traceback" not in denied.stderr
        assert "SEMSEARCH_EMBEDDER_API_KEY" in denied.stderr
        unset = run("search", "vegetables", "-c", "docs", SEMSEARCH_EMBEDDER_MODEL="")
        assert unset.returncode != 0 and "Traceback" not in unset.stderr
        assert "SEMSEARCH_EMBEDDER_MODEL" in unset.stderr
