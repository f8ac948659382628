"""The engine on an OpenAI-compatible API (a real HTTP server on loopback speaking the
wire format, backed by the real local model): index, search, meter, price, and refuse to
mix vector spaces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import Mode
from semsearch.errors import BackendError, IdentityMismatchError, NotFoundError
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.services.stats import collection_stats
from semsearch.wiring import open_engine
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[FakeOpenAIServer]:
    local = LocalOnnxEmbedder(models_dir, threads=2, batch_size=1)
    with FakeOpenAIServer(local, models=("fake-minilm",), api_key="sk-test") as srv:
        yield srv


def _api_settings(server: FakeOpenAIServer, **kw: object) -> Settings:
    base: dict[str, object] = dict(embedder="openai-compatible", embedder_model="fake-minilm",
                                   embedder_base_url=server.url, embedder_api_key="sk-test",
                                   embedder_dimensions=384, embedder_price_per_mtok=0.02)
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_index_and_search_through_the_api(settings: Settings, server: FakeOpenAIServer) -> None:
    engine = open_engine(_api_settings(server))
    try:
        report = index_documents(engine, "api", iter_documents(sample_dir()))
        hits = search(engine, "api", SearchRequest("keeping vegetables fresh",
                                                   mode=Mode.DENSE, k=1)).hits
        (row,) = [r.to_dict() for r in collection_stats(engine, "api")]
    finally:
        engine.close()
    assert report.embedded == report.chunks and report.model_calls >= 1
    assert report.tokens > 1000 and report.cost == pytest.approx(report.tokens * 0.02 / 1e6)
    assert hits[0].doc_id == "storing-vegetables.md"
    assert row["tokens"] == report.tokens and row["provider_latency_ms"]["p50"] > 0
    sent = server.embedding_requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "fake-minilm" and sent.body["dimensions"] == 384


def test_a_collection_keeps_its_vector_space(settings: Settings,
                                             server: FakeOpenAIServer) -> None:
    local = open_engine(Settings())
    try:
        index_documents(local, "loc", iter_documents(sample_dir()))
    finally:
        local.close()
    api = open_engine(_api_settings(server))
    try:
        with pytest.raises(IdentityMismatchError, match=r"local.*openai-compatible"):
            search(api, "loc", SearchRequest("vegetables"))
        index_documents(api, "api2", list(iter_documents(sample_dir()))[:2])
    finally:
        api.close()
    smaller = open_engine(_api_settings(server, embedder_dimensions=128))
    try:
        with pytest.raises(IdentityMismatchError, match=r"384.*128"):
            search(smaller, "api2", SearchRequest("vegetables"))
    finally:
        smaller.close()


def test_wrong_key_fails_fast_and_stores_nothing(settings: Settings,
                                                 server: FakeOpenAIServer) -> None:
    engine = open_engine(_api_settings(server, embedder_api_key="sk-wrong"))
    try:
        before = len(server.embedding_requests)
        with pytest.raises(BackendError, match="SEMSEARCH_EMBEDDER_API_KEY"):
            index_documents(engine, "denied", iter_documents(sample_dir()))
        assert len(server.embedding_requests) - before == 1  # no retries on 401
        # Nothing was written, so the collection the run created is gone again.
        with pytest.raises(NotFoundError):
            engine.store.get_collection("denied")
        assert engine.store.list_runs("denied")[0]["status"] == "failed"
    finally:
        engine.close()


def test_sync_skips_rows_the_provider_refuses_and_keeps_the_rest(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    """A batch the API refuses is retried row by row: the refused row is recorded with the
    provider's reason, its neighbours are indexed, and the run succeeds. (The server's limit
    is lower than the client was told, as when a provider counts tokens its own way.)"""
    import sqlite3

    from semsearch.services.sync import sync
    from semsearch.services.sync_config import SourceSpec
    from semsearch.wiring import make_source

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        c.executemany("INSERT INTO notes VALUES (?, ?)",
                      [(i, f"Short note number {i} about tea.") for i in range(1, 6)])
        c.execute("INSERT INTO notes VALUES (6, ?)", (" ".join(["word"] * 120),))
    spec = SourceSpec(collection="notes", source=f"sqlite:///{db}", table="notes",
                      text=("body",)).validate()
    local = LocalOnnxEmbedder(models_dir, threads=2, batch_size=1)
    with FakeOpenAIServer(local, models=("fake-minilm",), api_key="sk-test",
                          max_input_tokens=64) as strict:
        engine = open_engine(_api_settings(strict))
        source = make_source(spec, engine.settings)
        try:
            report = sync(engine, source, spec)
            ids = engine.store.all_doc_ids("notes")
            rejects = engine.store.rejects("notes")
        finally:
            source.close()
            engine.close()
    assert report.status == "ok" and (report.new, report.rejected) == (5, 1)
    assert ids == ["1", "2", "3", "4", "5"]
    assert list(rejects) == ["6"] and rejects["6"].startswith("the embedder refused it:")
    assert "64" in rejects["6"]
